"""``torchrun --nproc_per_node 2 -m defectkit predict``: two gloo ranks score an archive into
one predictions.csv that matches the one-process run, overlays included; an unreadable image
and a refused output behave as in one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from defectkit.data.synthetic import generate
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.methods.registry import get_method
from defectkit.methods.trainer import fit


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict-ddp")
    data = generate(root / "synthetic", n_train_good=4, n_train_defective=2, n_test_good=4, n_test_defective=3, size=(64, 128), seed=5)
    config = get_method("segdec").Config(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(64, 128), epochs=1, batch_size=4)
    run = fit(config, root / "run", log=lambda m: None)
    evaluate_run(run, log=lambda m: None)  # the decision threshold
    images = root / "images"
    images.mkdir()
    for i, png in enumerate(sorted((data / "test").rglob("*.png"))):  # 7 images in two folders: shards of 4 and 3
        (images / png.parent.name).mkdir(exist_ok=True)
        (images / png.parent.name / png.name).write_bytes(png.read_bytes())
    (images / "broken.png").write_bytes(b"not a png")  # a row with its error, exit 2
    return run, images


def torchrun(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "defectkit", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_ranks_write_the_one_process_predictions(run_and_images, tmp_path, run_cli):
    run, images = run_and_images
    code, _, err = run_cli("predict", run, images, "--out", tmp_path / "one", "--batch-size", "2")
    assert code == 2 and "broken.png" in err
    result = torchrun("predict", run, images, "--out", tmp_path / "two", "--batch-size", "2")
    assert result.returncode != 0, result.stdout + result.stderr  # the unreadable image, as in one process
    assert result.stderr.count("broken.png: ") == 1, result.stderr  # printed once, by rank 0
    assert result.stdout.count("7 images, ") == 1 and "and 7 overlays" in result.stdout  # the totals of both ranks, once

    one, two = rows(tmp_path / "one" / "predictions.csv"), rows(tmp_path / "two" / "predictions.csv")
    assert [r["image"] for r in two] == [str(p) for p in sorted(images.rglob("*.png"))]  # every image once, in the inputs' order
    assert sorted(r["image"] for r in one) == sorted(r["image"] for r in two)
    by_image = {r["image"]: r for r in one}
    for row in two:
        ref = by_image[row["image"]]
        assert (row["decision"], row["overlay"], row["error"]) == (ref["decision"], ref["overlay"], ref["error"])
        if ref["score"]:
            assert float(row["score"]) == pytest.approx(float(ref["score"]), abs=1e-6)
            assert float(row["logit"]) == pytest.approx(float(ref["logit"]), abs=1e-5)
    assert not list((tmp_path / "two").glob("predictions.rank*.csv"))  # merged, parts removed
    overlays = lambda folder: sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert overlays(tmp_path / "two") == overlays(tmp_path / "one") and len(overlays(tmp_path / "one")) == 7


def test_ranks_refuse_together_and_write_nothing(run_and_images, tmp_path):
    run, images = run_and_images
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("earlier")
    result = torchrun("predict", run, images, "--out", out)
    assert result.returncode != 0
    assert result.stderr.count("error: ") == 1 and "predictions.csv: already exists" in result.stderr, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"] and (out / "predictions.csv").read_text() == "earlier"
