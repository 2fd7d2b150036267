"""ONNX export: one graph from uint8 pixels to score and heatmap, and a torch-free predictor
that answers like the run's own (scores within 1e-4), for every method."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import defectkit
from defectkit.cli import main
from defectkit.data.synthetic import generate
from defectkit.errors import ConfigError, DataError
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.infer.export import export_onnx, sidecar_path
from defectkit.infer.onnx_predictor import OnnxPredictor
from defectkit.methods.registry import get_method
from defectkit.methods.trainer import fit

SETTINGS = {
    "segdec": dict(preset="tiny", input_size=(64, 128), dilate=3, epochs=1, batch_size=4, validate_every=0),
    "ear": dict(preset="tiny", input_size=(32, 64), epochs=1, batch_size=4),
    "riad": dict(preset="tiny", input_size=(32, 64), epochs=1, batch_size=4),
}


def quiet(_):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    return generate(root, n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3, size=(64, 128), seed=2)


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    """One exported run: the parity of every method and preset is the contract test's
    (tests/methods/test_contract.py); these are the export's own checks."""
    method = get_method("segdec")
    run = tmp_path_factory.mktemp("segdec") / "run"
    fit(method.Config(dataset="synthetic", data_root=str(data), **SETTINGS["segdec"]), run, log=quiet)
    evaluate_run(run)
    assert main(["export", str(run)]) == 0  # the CLI, with its parity check on
    return run, run / "model.onnx"


def images(rng, channels=1):
    """Smooth uint8 images of three sizes (one of them the training size)."""
    import cv2

    out = []
    for h, w in ((128, 64), (200, 75), (64, 32), (200, 75)):
        small = rng.integers(0, 256, (6, 4) if channels == 1 else (6, 4, 3)).astype(np.float32)
        out.append(np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8))
    return out


def test_onnx_predictor_answers_like_the_run(exported):
    run, model = exported
    torch_predictor, onnx_predictor = defectkit.load(run), defectkit.load(model)
    assert isinstance(onnx_predictor, OnnxPredictor)
    batch = images(np.random.default_rng(0))
    expected, got = torch_predictor.predict_batch(batch), onnx_predictor.predict_batch(batch)
    for image, e, g in zip(batch, expected, got):
        assert abs(e.score - g.score) < 1e-4
        assert e.decision == g.decision or abs(e.score - e.threshold) < 1e-4
        assert g.heatmap.shape == image.shape == e.heatmap.shape
        np.testing.assert_allclose(g.heatmap, e.heatmap, atol=1e-4)
        assert (g.logit is None) == (e.logit is None) and g.threshold == pytest.approx(e.threshold)
    # one image alone scores as it does inside a batch of mixed sizes
    assert onnx_predictor.predict(batch[1]).score == pytest.approx(got[1].score, abs=1e-6)


def test_sidecar_holds_threshold_and_input_spec(exported):
    run, model = exported
    meta = json.loads(sidecar_path(model).read_text())
    torch_predictor = defectkit.load(run)
    assert meta["threshold"]["raw"] == pytest.approx(torch_predictor.threshold_raw)
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["channels"] == 1
    assert meta["input"]["network_size"] == list(torch_predictor.pre.input_size)
    assert meta["max_score_difference_to_torch"] < 1e-4
    assert meta["raw_is_logit"] is True and meta["method"] == "segdec"


def test_sidecars_of_the_first_format_still_load(exported, tmp_path):
    _, model = exported
    copy = tmp_path / "old.onnx"
    copy.write_bytes(model.read_bytes())
    meta = json.loads(sidecar_path(model).read_text())
    del meta["raw_is_logit"]  # format 1 said it in words only
    sidecar_path(copy).write_text(json.dumps({**meta, "format_version": 1}))
    old = OnnxPredictor(copy)
    assert old.raw_is_logit and old.predict(np.zeros((40, 30), np.uint8)).logit is not None


def test_onnx_graph_takes_any_batch_and_size(exported):
    import onnxruntime as ort

    _, model = exported
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for shape in ((1, 1, 37, 90), (5, 1, 300, 41)):
        score, raw, heatmap = session.run(None, {"image": np.zeros(shape, np.uint8)})
        assert score.shape == raw.shape == (shape[0],) and heatmap.shape == (shape[0], *shape[2:])
        assert np.isfinite(score).all() and np.isfinite(heatmap).all()


def test_onnx_predictor_does_not_import_torch(exported):
    _, model = exported
    code = f"import sys, numpy as np, defectkit; p = defectkit.load({str(model)!r}); p.predict(np.zeros((50, 40), np.uint8)); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_bad_inputs_get_clear_errors(tmp_path, exported):
    _, model = exported
    with pytest.raises(DataError, match="no such ONNX model"):
        OnnxPredictor(tmp_path / "missing.onnx")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(model.read_bytes())
    with pytest.raises(DataError, match="missing; it holds the threshold"):
        OnnxPredictor(copy)
    sidecar_path(copy).write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        OnnxPredictor(copy)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    meta = json.loads(sidecar_path(model).read_text())
    sidecar_path(broken).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="describes another model"):  # a sidecar left from another export
        OnnxPredictor(broken)
    meta["model_sha256"] = hashlib.sha256(b"not a model").hexdigest()
    sidecar_path(broken).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="onnxruntime cannot load it"):
        OnnxPredictor(broken)


def test_random_mask_ear_is_refused(data, tmp_path):
    from defectkit.methods.ear import EarConfig

    run = tmp_path / "run"
    fit(EarConfig(dataset="synthetic", data_root=str(data), mask_rule="random", **SETTINGS["ear"]), run, log=quiet)
    with pytest.raises(ConfigError, match="cannot be exported"):
        export_onnx(run, log=quiet)


def test_cli_predict_with_the_onnx_model(exported, data, tmp_path, run_cli):
    import csv

    run, model = exported
    folder = data / "test"
    code, out, _ = run_cli("predict", model, folder, "--out", tmp_path / "onnx")
    assert code == 0 and "images/s" in out
    code, _, _ = run_cli("predict", run, folder, "--out", tmp_path / "torch")
    assert code == 0
    rows = {name: list(csv.DictReader(open(tmp_path / name / "predictions.csv"))) for name in ("onnx", "torch")}
    assert len(rows["onnx"]) == len(rows["torch"]) > 0
    for a, b in zip(rows["onnx"], rows["torch"]):
        assert a["image"] == b["image"] and abs(float(a["score"]) - float(b["score"])) < 1e-4
    overlays = sorted(p.relative_to(tmp_path / "onnx").as_posix() for p in (tmp_path / "onnx").rglob("*_overlay.png"))
    assert overlays == sorted(r["overlay"] for r in rows["onnx"]) and len(overlays) == len(rows["onnx"])  # mirrors the input folders


def test_cli_export_rejects_unknown_format(exported, run_cli):
    run, _ = exported
    code, _, err = run_cli("export", run, "--format", "tflite")
    assert code != 0 and "unknown export format 'tflite'" in err


def test_onnx_predictor_refuses_a_nan_score(exported, data, monkeypatch):
    _, model = exported
    predictor = OnnxPredictor(model)
    real = predictor.session.run

    class NanSession:
        def run(self, names, feeds):
            score, raw, heatmap = real(names, feeds)
            return np.full_like(score, np.nan), np.full_like(raw, np.nan), heatmap

    monkeypatch.setattr(predictor, "session", NanSession())
    image = next((data / "test" / "good").glob("*.png"))
    with pytest.raises(DataError, match=f"{image.name}: the model gave a non-finite score"):
        predictor.predict(image)
