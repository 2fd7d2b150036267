"""The contract every registered method and preset keeps, on tiny inputs: it trains one epoch
into a run folder, evaluates, loads, predicts as the evaluation scored, exports to ONNX with
the same scores, answers one request of the service and writes its report. Registering a
method or a preset is what gets it tested here."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

import defectkit
from defectkit.data.synthetic import generate
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.infer.export import export_onnx
from defectkit.methods.registry import get_method, method_names
from defectkit.methods.trainer import fit
from defectkit.models import model_config

CASES = [(name, preset) for name in method_names() for preset in get_method(name).presets()]


def quiet(_):
    pass


def tiny_config(name: str, preset: str, data):
    """One epoch at the smallest input the preset's network takes."""
    method = get_method(name)
    _, channels, height, width = model_config(method.model_name, preset).example_shape()
    return method.Config(dataset="synthetic", data_root=str(data), preset=preset, input_size=(width, height), channels=channels,
                         epochs=1, batch_size=4, eval_batch_size=4, validate_every=1, validation_share=0.34)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # validation part: one good and one defective image (so validation and its threshold run too)
    return generate(tmp_path_factory.mktemp("contract") / "synthetic", n_train_good=4, n_train_defective=3, n_test_good=1, n_test_defective=1,
                    size=(48, 96), seed=6)


@pytest.mark.parametrize("name, preset", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_method_contract(name, preset, data, tmp_path):
    with warnings.catch_warnings():  # starlette's note about httpx2: the client works all the same
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from defectkit.infer.onnx_predictor import OnnxPredictor
    from defectkit.report import write_report
    from defectkit.serve import create_app

    run = fit(tiny_config(name, preset, data), tmp_path / "run", log=quiet)
    for file in ("config.yaml", "model.safetensors", "checkpoint.safetensors", "train_log.csv"):
        assert (run / file).is_file(), file
    assert len(list(csv.DictReader(open(run / "train_log.csv")))) == 1

    metrics = evaluate_run(run)
    assert metrics["method"] == name and metrics["n_images"] == 2 and metrics["n_defective"] == 1
    assert metrics["threshold_source"] == "validation (best F1)"
    assert all(np.isfinite(metrics[k]) for k in ("ap", "auroc", "decision_threshold", "pixel_auroc", "aupro"))
    # the threshold record says what the validation part found, as scikit-learn computes it
    from sklearn.metrics import average_precision_score

    from defectkit.data.partition import read_parts

    validation = read_parts(tiny_config(name, preset, data), None, of_run=True)["validation"]
    labels = [s.is_defective for s in validation]
    raw = get_method(name).load(run).raw_scores(validation)
    record = json.loads((run / "threshold.json").read_text())
    found = record["validation"]
    assert found["ap"] == pytest.approx(average_precision_score(labels, raw))
    assert found["tp"] + found["fn"] == sum(labels) and found["fp"] + found["tn"] == len(labels) - sum(labels)
    assert found["tp"] + found["fp"] == int(np.sum(raw >= record["value"]))

    predictor = defectkit.load(run)
    rows = {r["image"]: r for r in csv.DictReader(open(run / "predictions.csv"))}
    files = sorted((data / "test").rglob("*.png"))
    predictions = predictor.predict_batch([str(f) for f in files])
    for path, p in zip(files, predictions):
        row = rows[str(path)]
        assert p.score == pytest.approx(float(row["score"]), rel=1e-5, abs=1e-6)  # predicts as evaluation scored
        assert p.decision == bool(int(row["decision"])) and p.heatmap.shape == (96, 48) and np.isfinite(p.heatmap).all()
        assert (p.logit is not None) == predictor.raw_is_logit

    model = export_onnx(run, log=quiet)  # refuses to write unless onnxruntime agrees within 1e-4
    onnx = OnnxPredictor(model)
    assert (onnx.threshold_raw, onnx.raw_is_logit, onnx.channels) == (predictor.threshold_raw, predictor.raw_is_logit, predictor.channels)
    for a, b in zip(onnx.predict_batch([str(f) for f in files]), predictions):
        assert abs(a.score - b.score) < 1e-4 and a.decision == b.decision
        assert np.abs(a.heatmap - b.heatmap).max() < 1e-3 * max(1.0, float(np.abs(b.heatmap).max()))

    with TestClient(create_app(run)) as client:
        answer = client.post("/predict", files=[("files", (files[0].name, files[0].read_bytes(), "image/png"))])
        assert answer.status_code == 200, answer.text
        result = answer.json()["results"][0]
        assert result["score"] == pytest.approx(predictions[0].score, rel=1e-5, abs=1e-6)
        assert client.get("/model").json()["method"] == name

    page = write_report(run, gallery_size=1, log=quiet).read_text(encoding="utf-8")
    assert f"{name} on synthetic" in page and page.count("data:image/jpeg;base64,") >= 2
