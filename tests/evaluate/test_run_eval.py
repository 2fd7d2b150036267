"""Evaluating run folders through the method registry: pixel metrics for every method, old folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import defectkit
from defectkit import runs
from defectkit.data.sample import Sample
from defectkit.data.synthetic import generate
from defectkit.errors import ConfigError, DataError
from defectkit.evaluate import metrics as M
from defectkit.evaluate.run_eval import PIXEL_BUDGET, evaluate_run, mask_at, pixel_size, resize_to
from defectkit.methods.registry import get_method, method_name_of_run, method_names



def test_pixel_size_halves_until_the_split_fits_the_budget():
    assert pixel_size(10, (256, 704)) == (256, 704)
    n = PIXEL_BUDGET // (512 * 1408) + 1  # one image too many for the full size
    assert pixel_size(n, (512, 1408)) == (256, 704)
    assert pixel_size(4 * n, (512, 1408)) == (128, 352)
    assert pixel_size(10**9, (64, 64)) == (8, 8)  # never below 8 pixels a side


def test_resize_and_masks_at_the_evaluation_size(tmp_path):
    from PIL import Image

    assert resize_to(np.ones((4, 6), np.float32), (6, 4)).shape == (4, 6)
    shrunk = resize_to(np.arange(16, dtype=np.float32).reshape(4, 4), (2, 2))
    np.testing.assert_allclose(shrunk, [[2.5, 4.5], [10.5, 12.5]])  # area average when shrinking
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 0:8] = 255  # a two-pixel line survives halving
    mask[6, 0:8] = 255  # a one-pixel line covers half of each 2x2 cell: kept too
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "i.png")
    half = mask_at(Sample("i", tmp_path / "i.png", True, "test", mask_path=tmp_path / "m.png"), (4, 4))
    assert half.dtype == bool and half[1].all() and half[3].all() and not half[0].any() and not half[2].any()
    assert not mask_at(Sample("g", tmp_path / "i.png", False, "test"), (4, 4)).any()


def test_registry_names_and_errors(tmp_path):
    assert method_names() == ["segdec", "ear", "riad", "patchcore"]
    assert [get_method(n).needs_defects for n in method_names()] == [True, False, False, False]
    assert get_method("riad").Config.__name__ == "RiadConfig"
    with pytest.raises(ConfigError, match="unknown method 'padim'; available: segdec, ear, riad, patchcore"):
        get_method("padim")
    runs.write_yaml(tmp_path / runs.CONFIG, {"train": {}, "model": {}})
    assert method_name_of_run(tmp_path) == "segdec"  # folders from before there were several methods
    runs.write_yaml(tmp_path / runs.CONFIG, {"train": {"method": "riad"}, "model": {}})
    assert method_name_of_run(tmp_path) == "riad"
    runs.write_yaml(tmp_path / runs.CONFIG, {"method": "padim", "train": {}, "model": {}})
    with pytest.raises(DataError, match="unknown method 'padim'"):
        method_name_of_run(tmp_path)
    (tmp_path / runs.CONFIG).write_text("- a list\n")
    with pytest.raises(DataError, match="not a defectkit run config"):
        method_name_of_run(tmp_path)


def test_a_supervised_run_without_a_method_field_evaluates_with_pixel_metrics(tmp_path):
    from defectkit.data.partition import read_parts
    from defectkit.methods.registry import load_method
    from defectkit.methods.segdec import SegDecTrainConfig
    from defectkit.methods.trainer import fit

    root = generate(tmp_path / "data", n_train_good=4, n_train_defective=4, n_test_good=3, n_test_defective=3, size=(64, 128), seed=3)
    config = SegDecTrainConfig(dataset="synthetic", data_root=str(root), preset="tiny", input_size=(64, 128), dilate=3, epochs=1,
                               learning_rate=0.1, batch_size=4, validate_every=0, validation_share=0)
    run = tmp_path / "run"
    fit(config, run, log=lambda _: None)
    saved = runs.read_yaml(run / runs.CONFIG)
    del saved["method"], saved["train"]["method"]  # as written before the registry
    runs.write_yaml(run / runs.CONFIG, saved)
    result = evaluate_run(run)
    assert result["method"] == "segdec" and result["pixel_size"] == [64, 128] and result["pixel_images"] == 6
    # the same numbers as scoring the test split directly
    method = load_method(run)
    model, cfg = method.model, method.config
    test = read_parts(cfg)["test"]
    with torch.inference_mode():
        logits, seg = model(torch.from_numpy(np.stack([cfg.preprocessing().image(s) for s in test])))
    assert result["ap"] == M.average_precision([s.is_defective for s in test], logits.double().numpy())
    maps = [resize_to(m, (64, 128)) for m in torch.sigmoid(seg[:, 0]).numpy()]
    expected = M.pixel_metrics([mask_at(s, (64, 128)) for s in test], maps)
    for key in ("pixel_auroc", "pixel_ap", "aupro"):
        assert result[key] == pytest.approx(expected[key]), key
    assert "threshold_logit" in result and result["threshold_source"].startswith("test (best F1")
    predictor = defectkit.load(run)
    assert predictor.threshold_logit == result["decision_threshold_logit"]
    with open(run / runs.PREDICTIONS) as f:
        rows = f.read().splitlines()
    assert rows[0] == "image,name,label,score,logit,decision" and len(rows) == 7
    assert json.loads((run / runs.METRICS).read_text())["method"] == "segdec"
