"""What the console says is what the run does: the settings block, all-zero masks, mask files
among the images to predict, and whole-line progress when the output is not a terminal (the
lines a user reads, asserted)."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest

from defectkit import runs
from defectkit.data.synthetic import generate

TINY = ["--preset", "tiny", "--input-size", "64x128", "--epochs", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("console") / "synthetic", n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3,
                    size=(64, 128), seed=6)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_the_settings_block_says_where_each_value_came_from(data, tmp_path, run_cli):
    folder = tmp_path / "folder"
    shutil.copytree(data, folder)
    (folder / "synthetic.json").unlink()
    config = tmp_path / "mine.yaml"
    config.write_text("delta: 0.5\n")
    code, out, err = run_cli("train", config, "--dataset", "folder", "--data-root", folder, *TINY, "--no-eval", "--out", tmp_path / "run")
    assert code == 0, err
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("settings:"))
    assert lines[first] == "settings: named settings 'custom' (the default for --dataset folder; --config NAME picks others (defectkit train --help))"
    named, from_file, given, rest = lines[first + 1 : first + 5]
    assert named.startswith("  from named settings 'custom': ") and "learning_rate 0.05" in named and "dilate 3" in named and "delta" not in named
    assert from_file == f"  from {config}: delta 0.5"
    assert given.startswith("  from the command line: ") and "epochs 1" in given and "input_size 64x128" in given and "preset tiny" in given
    assert rest.startswith("  every other option: the method's default")
    saved = runs.read_yaml(tmp_path / "run" / runs.CONFIG)["train"]
    assert (saved["learning_rate"], saved["dilate"], saved["delta"], saved["epochs"]) == (0.05, 3, 0.5, 1)  # what the block said

    code, out, _ = run_cli("train", "--dataset", "folder", "--data-root", folder, "--config", "ksdd", *TINY, "--no-eval", "--out", tmp_path / "ksdd")
    assert code == 0 and "settings: named settings 'ksdd' (chosen with --config)" in out and "learning_rate 1.0" in out


def blank_one_mask(root):
    """An all-zero mask for the first defective training image; returns (image, mask) paths."""
    image = sorted((root / "train" / "defective").glob("*.png"))[0]
    mask = next(p for p in (root / "masks").rglob("*.png") if p.stem.startswith(image.stem))
    cv2.imwrite(str(mask), np.zeros_like(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)))
    return image, mask


def test_all_zero_masks_are_flagged_and_trained_as_image_labelled(data, tmp_path, run_cli):
    from defectkit.data.partition import read_parts
    from defectkit.methods.registry import get_method

    root = tmp_path / "data"
    shutil.copytree(data, root)
    (root / "synthetic.json").unlink()
    image, mask = blank_one_mask(root)
    code, out, _ = run_cli("datasets", "inspect", "--dataset", "folder", "--data-root", root)
    assert code == 1 and "empty_mask" in out and "1 empty_mask" in flat(out) and "all files ok" not in out

    code, out, err = run_cli("train", "--dataset", "folder", "--data-root", root, *TINY, "--no-eval", "--out", tmp_path / "run")
    assert code == 0, err
    assert f"warning: 1 defective training image(s) have an all-zero mask (first: {mask}); training them on their image label only" in flat(out)

    method = get_method("segdec")
    for choice, labelled in (("image-label", False), ("pixel", True)):
        config = method.Config(dataset="folder", data_root=str(root), preset="tiny", input_size=(64, 128), empty_masks=choice)
        samples = method(config, "cpu", training=True).training_samples(read_parts(config), lambda m: None)
        chosen = next(s for s in samples if s.image_path == image)
        assert chosen.is_defective and chosen.pixel_labelled is labelled
        assert all(s.pixel_labelled for s in samples if s.image_path != image)  # the others keep their masks


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    from defectkit.evaluate.run_eval import evaluate_run
    from defectkit.methods.registry import get_method
    from defectkit.methods.trainer import fit

    config = get_method("segdec").Config(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(64, 128), epochs=1, batch_size=4)
    out = fit(config, tmp_path_factory.mktemp("console-run") / "run", log=lambda m: None)
    evaluate_run(out, log=lambda m: None)
    return out


def test_predict_skips_files_that_look_like_masks_and_says_so(run, data, tmp_path, run_cli):
    parts = tmp_path / "parts"
    (parts / "ground_truth").mkdir(parents=True)
    pictures = sorted((data / "test" / "defective").glob("*.png"))[:3]
    for i, png in enumerate(pictures):
        cv2.imwrite(str(parts / f"part{i}.jpg"), cv2.imread(str(png)))
    two_valued = np.zeros((128, 64), np.uint8)
    two_valued[40:60, 20:30] = 255
    cv2.imwrite(str(parts / "part0.png"), two_valued)  # same stem as part0.jpg, two values: a mask
    cv2.imwrite(str(parts / "part1_label.png"), two_valued)  # named as part1's mask
    cv2.imwrite(str(parts / "ground_truth" / "part2.png"), two_valued)  # in a mask folder
    cv2.imwrite(str(parts / "part2.png"), cv2.imread(str(pictures[2])))  # same stem but a picture: scored
    code, out, err = run_cli("predict", run, parts, "--out", tmp_path / "scored", "--no-overlays")
    assert code == 0, err
    assert "skipping 3 file(s) that look like masks, not parts" in flat(out) and "--include-masks scores them too" in flat(out)
    with open(tmp_path / "scored" / "predictions.csv") as handle:
        scored = sorted(r["image"].rsplit("/", 1)[-1] for r in csv.DictReader(handle))
    assert scored == ["part0.jpg", "part1.jpg", "part2.jpg", "part2.png"]

    code, out, err = run_cli("predict", run, parts, "--out", tmp_path / "all", "--no-overlays", "--include-masks")
    with open(tmp_path / "all" / "predictions.csv") as handle:
        assert code == 0 and len(list(csv.DictReader(handle))) == 7 and "look like masks" not in out

    code, out, err = run_cli("predict", run, parts / "ground_truth", "--out", tmp_path / "named", "--no-overlays")
    assert code == 0 and "look like masks" not in out  # the folder given is what the user asked for; only folders below it count
    code, out, err = run_cli("predict", run, parts, parts / "part1_label.png", "--out", tmp_path / "given", "--no-overlays")
    assert code == 0, err  # a file named on the command line is always scored, and not counted as skipped
    assert "skipping 2 file(s) that look like masks" in flat(out)
    with open(tmp_path / "given" / "predictions.csv") as handle:
        assert "part1_label.png" in {r["image"].rsplit("/", 1)[-1] for r in csv.DictReader(handle)}


def test_progress_in_a_file_is_whole_lines(run, data, tmp_path, run_cli):
    code, out, err = run_cli("train", "--dataset", "synthetic", "--data-root", data, *TINY, "--epochs", "2", "--out", tmp_path / "run")
    assert code == 0, err
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    import re

    assert len(epochs) == 2 and all(re.fullmatch(rf"epoch {i + 1}/2: (\d+)/\1 images, \d+\.\d s  loss \d\.\d{{4}} .*", line) for i, line in enumerate(epochs)), epochs
    assert not any("epoch" in line and "━" in line for line in out.splitlines())  # no bar drawn into a file
    code, out, err = run_cli("eval", run)
    assert code == 0, err
    assert "scoring 6 images: 0 of 6" in out and "scoring 6 images: 6 of 6 done in " in out
