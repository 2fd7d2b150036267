from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import defectkit
from defectkit import runs
from defectkit.data.synthetic import generate
from defectkit.errors import ConfigError, DataError
from defectkit.methods.segdec import SegDecTrainConfig as TrainConfig
from defectkit.methods.segdec import batch_loss, loss_weights, paper_config
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.methods.trainer import fit
from defectkit.models import create_model


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    return generate(root, n_train_good=8, n_train_defective=4, n_test_good=4, n_test_defective=4, size=(64, 128), seed=1)


def tiny_config(data_root, **overrides) -> TrainConfig:
    settings = dict(dataset="synthetic", data_root=str(data_root), preset="tiny", input_size=(64, 128), channels=1, dilate=3,
                    epochs=3, learning_rate=0.1, delta=1.0, batch_size=3, weight_p=2.0, weight_max=3.0, validate_every=0, validation_share=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def quiet(_):
    pass


def test_named_configs_hold_the_papers_settings():
    ksdd = paper_config("ksdd")
    assert (ksdd.input_size, ksdd.channels, ksdd.dilate, ksdd.epochs, ksdd.learning_rate, ksdd.delta, ksdd.batch_size, ksdd.weight_p, ksdd.weight_max) == ((512, 1408), 1, 7, 50, 1.0, 0.01, 1, 2.0, 1.0)
    dagm = paper_config("dagm")
    assert (dagm.input_size, dagm.dilate, dagm.epochs, dagm.learning_rate, dagm.delta, dagm.weight_p, dagm.weight_max) == ((512, 512), 7, 70, 0.05, 1.0, 1.0, 10.0)
    ksdd2 = paper_config("ksdd2")
    assert (ksdd2.input_size, ksdd2.channels, ksdd2.dilate, ksdd2.learning_rate, ksdd2.weight_max) == ((232, 640), 3, 15, 0.01, 3.0)
    assert [paper_config("severstal", split=f"{p}_{p}").epochs for p in (300, 750, 1500, 3000)] == [90, 80, 60, 40]
    steel = paper_config("severstal")
    assert (steel.input_size, steel.dilate, steel.batch_size, steel.learning_rate, steel.delta) == ((1600, 256), 1, 10, 0.1, 0.1)
    assert all(getattr(ksdd, f) for f in ("dynamic_balancing", "gradient_adjustment", "weighted_segmentation", "frequency_sampling"))
    # Weak splits (N = 0) take the reference scripts' weak settings; explicit options still win.
    weak = paper_config("ksdd", split="33_0")
    assert (weak.learning_rate, weak.delta, weak.dynamic_balancing, weak.gradient_adjustment) == (0.01, 1.0, False, True)
    assert paper_config("ksdd", split="33_0", learning_rate=0.5).learning_rate == 0.5
    assert paper_config("ksdd", split="33_5").learning_rate == 1.0
    assert [paper_config(n, split=k).dynamic_balancing for n, k in (("dagm", "0"), ("ksdd2", "0"), ("severstal", "300_0"), ("dagm", "15"))] == [False, False, False, True]
    with pytest.raises(ConfigError, match="unknown config 'mvtec'"):
        paper_config("mvtec")
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})


def test_dynamic_balancing_weights_per_epoch():
    assert [loss_weights(n, 4, 0.5, True) for n in range(4)] == [(1.0, 0.0), (0.75, 0.125), (0.5, 0.25), (0.25, 0.375)]
    assert loss_weights(3, 4, 0.5, False) == (1.0, 0.5)


def test_batch_loss_against_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    logit = torch.randn(3, generator=g, dtype=torch.float64)
    seg = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    targets = torch.rand(3, 2, 2, generator=g, dtype=torch.float64)
    weights = 1 + torch.rand(3, 2, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    has_seg = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)  # the third: image label only
    loss, seg_l, cls_l = batch_loss(logit, seg, targets, weights, labels, has_seg, 0.7, 0.3)

    def bce(z, y):
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = 0.0
    for i in range(3):
        s = 0.0
        if has_seg[i]:
            s = sum(float(weights[i, r, c]) * bce(float(seg[i, 0, r, c]), float(targets[i, r, c])) for r in range(2) for c in range(2)) / 4
        assert seg_l[i].item() == pytest.approx(s)
        c_loss = bce(float(logit[i]), float(labels[i]))
        assert cls_l[i].item() == pytest.approx(c_loss)
        expected += 0.7 * s + 0.3 * c_loss
    assert loss.item() == pytest.approx(expected)


def test_batched_gradient_equals_the_sum_of_per_image_gradients():
    torch.manual_seed(0)
    model = create_model("segdec", "tiny").double()
    x = torch.rand(3, 1, 128, 64, dtype=torch.float64)
    targets = torch.rand(3, 16, 8, dtype=torch.float64)
    weights = torch.ones(3, 16, 8, dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    has_seg = torch.ones(3, dtype=torch.float64)
    logit, seg = model(x)
    batch_loss(logit, seg, targets, weights, labels, has_seg, 0.5, 0.5)[0].backward()
    batched = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for i in range(3):  # the reference: backward per image, gradients accumulate
        logit, seg = model(x[i : i + 1])
        batch_loss(logit, seg, targets[i : i + 1], weights[i : i + 1], labels[i : i + 1], has_seg[i : i + 1], 0.5, 0.5)[0].backward()
    for a, p in zip(batched, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_run_folder_errors(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=1)
    fit(config, tmp_path / "run", log=quiet)
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(config, tmp_path / "run", log=quiet)
    with pytest.raises(DataError, match="run folder not found"):
        fit(config, tmp_path / "nope", resume=True, log=quiet)
    saved = runs.read_yaml(tmp_path / "run" / runs.CONFIG)
    assert saved["model"]["config"]["input_size"] == [64, 128]  # the size it was trained at
    saved["model"]["config"]["volume_channels"] = 48
    runs.write_yaml(tmp_path / "run" / runs.CONFIG, saved)
    with pytest.raises(DataError, match="do not match the model config"):
        defectkit.load(tmp_path / "run")
    (tmp_path / "run" / runs.MODEL).unlink()
    with pytest.raises(DataError, match="run folder is missing model.safetensors"):
        defectkit.load(tmp_path / "run")


def test_training_needs_defective_images(tmp_path):
    root = generate(tmp_path / "good_only", n_train_good=4, n_train_defective=0, n_test_good=2, n_test_defective=2, size=(64, 128))
    with pytest.raises(DataError, match="no defective image"):
        fit(tiny_config(root), tmp_path / "run", log=quiet)


def test_cli_train_eval_predict(tiny_data, tmp_path, run_cli):
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--dataset", "synthetic", "--data-root", tiny_data, "--config", "demo", "--preset", "tiny",
                             "--input-size", "64x128", "--epochs", "2", "--batch-size", "4", "--out", run)
    assert code == 0, err
    assert "test metrics (8 images, 4 defective)" in out
    for name in ("config.yaml", "model.safetensors", "checkpoint.safetensors", "metrics.json", "predictions.csv", "pr_curve.svg", "roc_curve.svg", "train_log.csv"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"ap", "auroc", "threshold", "fp", "fn", "fp_at_fn0", "n_images", "n_defective", "decision_threshold"} <= set(metrics)
    assert metrics["n_images"] == 8 and metrics["n_defective"] == 4
    with open(run / "train_log.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    code, out, _ = run_cli("eval", run)
    assert code == 0 and json.loads((run / "metrics.json").read_text())["ap"] == pytest.approx(metrics["ap"])
    code, out, err = run_cli("predict", run, tiny_data / "test", "--out", tmp_path / "pred")
    assert code == 0, err
    with open(tmp_path / "pred" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and len(list((tmp_path / "pred").rglob("*_overlay.png"))) == 8
    assert all(int(r["decision"]) == (float(r["logit"]) >= metrics["decision_threshold_logit"]) for r in rows)
    # a folder with a corrupt file and odd batch sizes: the rest is scored in order, the file gets a
    # row with its error and no decision, and the command exits 2 naming it (no part unchecked silently)
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_data / "test", mixed)
    (mixed / "aaa_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, out, err = run_cli("predict", run, mixed, "--out", tmp_path / "pred2", "--batch-size", "3", "--no-overlays")
    assert code == 2 and err.count("\n") == 1 and "aaa_corrupt.png" in err and "no decision" in err and "8 images" in out
    with open(tmp_path / "pred2" / "predictions.csv") as f:
        again = list(csv.DictReader(f))
    failed = [r for r in again if r["error"]]
    assert [Path(r["image"]).name for r in failed] == ["aaa_corrupt.png"] and failed[0]["decision"] == "" and failed[0]["score"] == ""
    again = [r for r in again if not r["error"]]
    assert [Path(r["image"]).name for r in again] == [Path(r["image"]).name for r in rows] and not list((tmp_path / "pred2").glob("*.png"))
    # batches of 3 instead of 8: the same scores up to float rounding
    np.testing.assert_allclose([float(r["score"]) for r in again], [float(r["score"]) for r in rows], rtol=0, atol=1e-6)
    code, _, err = run_cli("train", "--dataset", "synthetic", "--data-root", tiny_data, "--out", run)
    assert code == 2 and "already holds a run" in err


def test_predictor_accepts_path_array_and_pil(tiny_data, tmp_path):
    fit(tiny_config(tiny_data, epochs=1, validation_share=0.0), tmp_path / "run", log=quiet)
    with pytest.raises(DataError, match="no decision threshold"):  # no validation, not evaluated: no threshold to decide at
        defectkit.load(tmp_path / "run")
    evaluate_run(tmp_path / "run", log=quiet)
    predictor = defectkit.load(tmp_path / "run")
    path = next((tiny_data / "test" / "defective").glob("*.png"))
    array = np.asarray(Image.open(path).convert("L"))
    from_path = predictor.predict(path)
    from_array = predictor.predict(array)
    from_pil = predictor.predict(Image.open(path))
    from_float = predictor.predict(array / 255.0)
    assert from_path.heatmap.shape == array.shape and from_path.heatmap.dtype == np.float32
    for other in (from_array, from_pil, from_float):
        assert other.score == pytest.approx(from_path.score, abs=1e-6)
    assert 0 <= from_path.score <= 1 and from_path.decision == (from_path.logit >= predictor.threshold_logit)
    with pytest.raises(DataError, match="expected HxW or HxWx3"):
        predictor.predict(np.zeros((2, 3, 4, 5), np.uint8))


def test_demo_at_a_tiny_size(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("DEFECTKIT_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli("demo", "--out", tmp_path / "demo", "--epochs", "1", "--size", "128")
    assert code == 0, err
    assert "test metrics (100 images, 50 defective)" in out
    assert (tmp_path / "demo" / "metrics.json").is_file()
    assert (tmp_path / "demo" / "report.html").is_file() and "report.html" in out


def test_cli_train_from_a_yaml_file_and_resume(tiny_data, tmp_path, run_cli):
    options = tmp_path / "options.yaml"
    options.write_text(
        f"dataset: synthetic\ndata_root: {tiny_data}\npreset: tiny\ninput_size: [64, 128]\nepochs: 2\n"
        "learning_rate: 0.02\nbatch_size: 4\nfrequency_sampling: false\n"
    )
    run = tmp_path / "run"
    code, _, err = run_cli("train", options, "--epochs", "1", "--no-eval", "--out", run)  # the CLI overrides the file
    assert code == 0, err
    saved = runs.read_yaml(run / "config.yaml")["train"]
    assert (saved["epochs"], saved["learning_rate"], saved["frequency_sampling"], saved["preset"]) == (1, 0.02, False, "tiny")
    code, out, err = run_cli("train", "--resume", run, "--no-eval")
    assert code == 0 and "already finished" in out
    options.write_text("epochz: 3\n")
    code, _, err = run_cli("train", options, "--out", tmp_path / "bad")
    assert code == 2 and "unknown training option(s) epochz" in err


def test_each_epoch_uses_every_positive_and_as_many_negatives(tiny_data, tmp_path):
    totals = {}
    fit(tiny_config(tiny_data, epochs=2), tmp_path / "run", on_step=lambda e, done, total, _: totals.setdefault(e, total), log=quiet)
    assert totals == {0: 8, 1: 8}  # 4 defective + 4 of the 8 good training images per epoch


def test_validation_keeps_the_best_model_and_sets_the_threshold(tmp_path):
    import shutil

    root = generate(tmp_path / "data", n_train_good=8, n_train_defective=4, n_test_good=4, n_test_defective=4, size=(64, 128), seed=2)
    # a validation split of other images (copies of the test images would be refused as a leak),
    # with its own masks/ (masks shared by stem with the test images would be ambiguous)
    other = generate(root.parent / "other", n_train_good=0, n_train_defective=0, n_test_good=4, n_test_defective=4, size=(64, 128), seed=102)
    shutil.copytree(other / "test", root / "validation")
    shutil.copytree(other / "masks", root / "validation" / "masks")
    (root / "synthetic.json").unlink()  # now a plain folder dataset
    config = tiny_config(root, dataset="folder", epochs=2, validate_every=1)
    fit(config, tmp_path / "run", log=quiet)
    with open(tmp_path / "run" / runs.TRAIN_LOG) as f:
        assert all(row["val_ap"] for row in csv.DictReader(f))
    assert (tmp_path / "run" / runs.BEST).is_file()
    from defectkit.evaluate.run_eval import evaluate_run

    metrics = evaluate_run(tmp_path / "run")
    assert metrics["threshold_source"].startswith("validation")
