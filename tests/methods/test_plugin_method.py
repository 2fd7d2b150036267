"""A method defined and registered here only (mean absolute difference from the mean good image)
runs through train, eval, predict, export, serve and report: no other file knows it exists, so
nothing outside ``methods/`` may name a particular method. Also checked directly: no module
outside ``methods/`` spells a built-in method's name in its code."""

from __future__ import annotations

import ast
import csv
import json
import warnings
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest
import torch

import defectkit
from defectkit import runs
from defectkit.config import Int, Size, option
from defectkit.data.synthetic import generate
from defectkit.methods import registry
from defectkit.methods.base import Method, MethodConfig

SOURCE = Path(defectkit.__file__).parent


class MeanDiffConfig(MethodConfig):
    method: Literal["meandiff"] = option("meandiff", "The method.", cli=False)
    input_size: Size = option((32, 32), "Network input size.")
    epochs: Int = option(1, "Passes over the good images.", resumable=True)
    batch_size: Int = option(4, "Images per step.")


class MeanImage(torch.nn.Module):
    """The running sum of the good training images and their count (buffers: saved, exported)."""

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.register_buffer("total", torch.zeros(channels, height, width))
        self.register_buffer("count", torch.zeros(()))

    def mean(self):
        return self.total / self.count.clamp(min=1)


class MeanDiff(Method):
    name = "meandiff"
    summary = "mean absolute difference from the mean good image (a test's toy)"
    Config = MeanDiffConfig
    model_name = "mean-image"
    log_fields: ClassVar[tuple[str, ...]] = ("loss",)

    @classmethod
    def presets(cls):
        return ["default"]

    def build_model(self):
        width, height = self.config.input_size
        return MeanImage(self.config.channels, height, width)

    def model_section(self):
        width, height = self.config.input_size
        return {"name": self.model_name, "config": {"channels": self.config.channels, "height": height, "width": width}}

    def model_from_section(self, section):
        return MeanImage(**section["config"])

    def training_step(self, indices, tensors, epoch):
        (x,) = tensors
        if epoch == 0:  # one pass makes the mean; later epochs only measure
            self.model.total += x.sum(0)
            self.model.count += len(x)
        return None, {"loss": (x - self.model.mean()).abs().mean(dim=(1, 2, 3)).sum().item()}

    def forward(self, x):
        heat = (x - self.model.mean()).abs().mean(1, keepdim=True)
        return heat.flatten(1).mean(1), heat


@pytest.fixture
def meandiff(monkeypatch):
    monkeypatch.setitem(registry.REGISTERED, MeanDiff.name, MeanDiff)
    return MeanDiff


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("plugin") / "synthetic", n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3, size=(32, 32), seed=7)


def test_a_registered_method_goes_through_every_command(meandiff, data, tmp_path, run_cli):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from defectkit.serve import create_app

    run = tmp_path / "run"
    code, out, err = run_cli("train", "--method", "meandiff", "--dataset", "synthetic", "--data-root", data, "--epochs", "2", "--out", run)
    assert code == 0, err
    assert "test metrics (6 images, 3 defective)" in out and "ignoring 2 defective training image(s)" in out
    state = MeanImage(1, 32, 32)
    runs.load_weights(state, run / runs.MODEL)
    assert state.count.item() == 5  # the good training images less the validation part's one
    assert [r["epoch"] for r in runs.read_csv(run / runs.TRAIN_LOG)] == ["0", "1"]
    metrics = json.loads((run / runs.METRICS).read_text())
    assert metrics["method"] == "meandiff" and metrics["threshold_source"] == "validation (best F1)"

    code, _, err = run_cli("predict", run, data / "test", "--out", tmp_path / "pred", "--no-overlays")
    assert code == 0, err
    predicted = {r["image"]: float(r["score"]) for r in csv.DictReader(open(tmp_path / "pred" / "predictions.csv"))}
    evaluated = {r["image"]: float(r["score"]) for r in csv.DictReader(open(run / runs.PREDICTIONS))}
    assert predicted.keys() == evaluated.keys() and all(abs(predicted[k] - evaluated[k]) < 1e-6 for k in predicted)
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(next((data / "test" / "defective").glob("*.png"))).convert("L"))
    x = torch.from_numpy(np.asarray(image, np.float32) / 255)[None, None]
    expected = (x - state.mean()).abs().mean().item()  # the method's definition, computed here
    assert defectkit.load(run).predict(image).score == pytest.approx(expected, rel=1e-5)

    code, _, err = run_cli("export", run)
    assert code == 0, err
    onnx = defectkit.load(run / "model.onnx")
    assert onnx.predict(image).score == pytest.approx(expected, rel=1e-4) and not onnx.raw_is_logit

    with TestClient(create_app(run)) as client:
        answer = client.post("/predict", files=[("files", ("a.png", (next((data / "test" / "good").glob("*.png"))).read_bytes(), "image/png"))])
        assert answer.status_code == 200 and answer.json()["method"] == "meandiff"

    code, out, err = run_cli("report", run)
    assert code == 0, err
    assert "meandiff on synthetic" in (run / "report.html").read_text()
    code, out, _ = run_cli("methods")
    assert code == 0 and "meandiff" in out

    code, out, err = run_cli("train", "--resume", run, "--epochs", "3", "--no-eval")
    assert code == 0, err
    resumed = MeanImage(1, 32, 32)
    runs.load_weights(resumed, run / runs.MODEL)
    assert resumed.count.item() == 5  # resumed from the checkpoint, not refitted


def _names_in_code(path: Path) -> set[str]:
    """String constants in a module's code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value.lower() for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def test_no_code_outside_methods_names_a_method():
    builtin = set(registry.BUILTIN)
    offenders = {}
    for path in SOURCE.rglob("*.py"):
        part = path.relative_to(SOURCE).parts[0]
        if part in ("methods", "models"):  # the methods themselves, and the networks (named as models)
            continue
        found = builtin & _names_in_code(path)
        if found:
            offenders[str(path.relative_to(SOURCE))] = sorted(found)
    assert not offenders
