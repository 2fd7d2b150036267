"""Right or refused: the decision threshold belongs to the weights it was set for, nothing
decides on a NaN, and no command loses a file it did not create."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import defectkit
from defectkit import runs
from defectkit.data.synthetic import generate
from defectkit.errors import DataError
from defectkit.evaluate.run_eval import evaluate_run, set_threshold
from defectkit.methods.registry import get_method
from defectkit.methods.trainer import fit

TINY = dict(preset="tiny", input_size=(64, 128), batch_size=4)


def quiet(_):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("trust") / "data", n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3, size=(64, 128), seed=7)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A 2-epoch run with validation (so best.safetensors and threshold.json), evaluated."""
    run = tmp_path_factory.mktemp("trust") / "run"
    fit(get_method("segdec").Config(dataset="synthetic", data_root=str(data), epochs=2, validate_every=1, learning_rate=0.5, **TINY), run, log=quiet)
    evaluate_run(run, log=quiet)
    return run


@pytest.fixture
def run(trained, tmp_path):
    return Path(shutil.copytree(trained, tmp_path / "run"))


def test_every_record_names_the_weights_it_was_made_with(run):
    for name in (runs.THRESHOLD, runs.METRICS):
        record = runs.read_json(run / name)
        assert record["weights"] == runs.MODEL and record["weights_sha256"] == runs.sha256(run / runs.MODEL)


def test_eval_best_makes_the_threshold_of_best_and_predict_must_name_it(run, data):
    from safetensors.torch import load_file, save_file

    # best.safetensors distinct from the final weights, as after a real training
    tensors = load_file(str(run / runs.BEST))
    key = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[key] = tensors[key] * 0.5
    save_file(tensors, str(run / runs.BEST))
    (run / runs.THRESHOLD).unlink()
    best = evaluate_run(run, weights=runs.BEST, log=quiet)
    assert best["weights"] == runs.BEST
    with pytest.raises(DataError, match="evaluated with best.safetensors, not model.safetensors"):
        defectkit.load(run)
    predictor = defectkit.load(run, weights=runs.BEST)
    assert predictor.threshold_raw == pytest.approx(best["decision_threshold_logit"]) and predictor.threshold_source["file"] == runs.METRICS


def test_a_threshold_for_earlier_weights_is_refused_and_names_its_policy(run):
    set_threshold(run, "zero-fn", split="test", log=quiet)
    assert defectkit.load(run).threshold_source["policy"] == "zero-fn"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / runs.MODEL))  # what a resumed training does to the weights
    key = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(run / runs.MODEL))
    with pytest.raises(runs.StaleRecord, match=r"threshold.json: was made for earlier weights.*--policy zero-fn"):
        defectkit.load(run)
    lines = []
    evaluate_run(run, log=lines.append)  # eval still evaluates, and says the threshold is stale
    assert any("earlier weights" in line for line in lines)
    with pytest.raises(runs.StaleRecord):
        defectkit.load(run)  # until the policy is set again
    set_threshold(run, "zero-fn", split="test", log=quiet)
    assert defectkit.load(run).threshold_source["policy"] == "zero-fn"


def test_no_threshold_is_no_default(run):
    (run / runs.THRESHOLD).unlink()
    (run / runs.METRICS).unlink()
    with pytest.raises(DataError, match="no decision threshold for model.safetensors"):
        defectkit.load(run)


def test_a_model_that_scores_nan_decides_nothing(run, data, monkeypatch):
    predictor = defectkit.load(run)
    image = next((data / "test" / "good").glob("*.png"))
    monkeypatch.setattr(predictor.trained, "score_batch", lambda x: (np.full(len(x), np.nan), np.zeros((len(x), 8, 8), np.float32)))
    with pytest.raises(DataError, match=f"{image.name}: the model gave a non-finite score"):
        predictor.predict(image)


def test_eval_refuses_nan_scores_and_writes_nothing(run, monkeypatch):
    from defectkit.methods.base import Method

    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def nan_scores(self, samples, batch_size=None):
        for sample in samples:
            yield [sample], np.array([np.nan]), np.zeros((1, 16, 8), np.float32)

    monkeypatch.setattr(Method, "iter_samples", nan_scores)
    with pytest.raises(DataError, match="non-finite score"):
        evaluate_run(run, log=quiet)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_test_split_of_one_kind_has_no_metrics(run, data, tmp_path):
    one_kind = Path(shutil.copytree(data, tmp_path / "one"))
    shutil.rmtree(one_kind / "test" / "good")
    with pytest.raises(DataError, match="all defective; AP, AUROC and a threshold need good and defective images"):
        evaluate_run(run, data_root=one_kind, log=quiet)


def test_json_records_refuse_nan(tmp_path):
    with pytest.raises(DataError, match=r"non-finite value\(s\) in ap, curve\[1\]"):
        runs.write_json(tmp_path / "m.json", {"ap": float("nan"), "curve": [0.0, float("inf")]})
    assert not (tmp_path / "m.json").exists()


def test_predict_gives_every_image_its_own_overlay(run, data, tmp_path, run_cli):
    first = next((data / "test" / "defective").glob("*.png"))
    inputs = tmp_path / "in"
    for folder in ("cam1", "cam2"):  # the same name in two folders
        (inputs / folder).mkdir(parents=True)
        shutil.copy(first, inputs / folder / "part.png")
    cv2.imwrite(str(inputs / "cam1" / "part.jpg"), cv2.imread(str(first)))  # the same stem, another suffix
    code, out, err = run_cli("predict", run, inputs, inputs / "cam1" / "part.png", "--out", tmp_path / "out")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == 3  # the image given twice is scored once
    overlays = [tmp_path / "out" / r["overlay"] for r in rows]
    assert len(set(overlays)) == 3 and all(p.is_file() for p in overlays)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == sorted(r["overlay"] for r in rows)
    # run again: nothing of the first run is replaced unless asked
    before = (tmp_path / "out" / "predictions.csv").read_bytes()
    code, _, err = run_cli("predict", run, inputs, "--out", tmp_path / "out")
    assert code == 2 and "already exists" in err and (tmp_path / "out" / "predictions.csv").read_bytes() == before
    code, _, err = run_cli("predict", run, inputs, "--out", tmp_path / "out", "--overwrite")
    assert code == 0, err


def test_demo_never_deletes_a_folder(tmp_path, monkeypatch, run_cli):
    from defectkit.cli import _demo_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "config.yaml").write_text("method: segdec\n")
    assert _demo_folder(None, False) == Path("runs/demo-2")  # the default moves on to a free folder
    code, _, err = run_cli("demo", "--out", "runs/demo")
    assert code == 2 and "--overwrite" in err and (tmp_path / "runs" / "demo" / "config.yaml").is_file()
    (tmp_path / "runs" / "demo" / "mine.txt").write_text("keep")
    code, _, err = run_cli("demo", "--out", "runs/demo", "--overwrite")
    assert code == 2 and "mine.txt" in err and (tmp_path / "runs" / "demo" / "mine.txt").read_text() == "keep"
    (tmp_path / "runs" / "demo" / "mine.txt").unlink()
    assert _demo_folder(Path("runs/demo"), True) == Path("runs/demo") and not (tmp_path / "runs" / "demo").exists()


def test_export_leaves_nothing_behind_on_failure(run, tmp_path, run_cli):
    (tmp_path / "taken").mkdir()
    code, _, err = run_cli("export", run, "--out", tmp_path / "taken", "--no-check")
    assert code == 2 and "is a folder" in err
    assert list((tmp_path / "taken").iterdir()) == [] and not list(tmp_path.glob(".*.tmp"))


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    from defectkit import cli

    def allocate(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 25600000000 bytes.")

    monkeypatch.setattr(cli, "app", allocate)
    assert cli.main(["eval", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of memory") and "--input-size" in err


def test_predict_never_scores_its_own_output(run, data, tmp_path, run_cli):
    inputs = Path(shutil.copytree(data / "test", tmp_path / "in"))
    n = len(list(inputs.rglob("*.png")))
    for _ in range(2):  # the second time the first run's overlays lie inside the input folder
        code, _, err = run_cli("predict", run, inputs, "--out", inputs / "predicted", "--overwrite")
        assert code == 0, err
        assert len(list(csv.DictReader(open(inputs / "predicted" / "predictions.csv")))) == n


def test_pixel_metrics_without_a_defective_pixel_are_undefined_not_nan(run, data, tmp_path):
    blank = Path(shutil.copytree(data, tmp_path / "blank"))
    for mask in (blank / "masks").glob("*.png"):
        cv2.imwrite(str(mask), np.zeros_like(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)))
    metrics = evaluate_run(run, data_root=blank, log=quiet)
    assert "pixel_auroc" not in metrics and metrics["pixel_metrics"].startswith("undefined: no defective pixel")
    assert runs.read_json(run / runs.METRICS)["pixel_metrics"] == metrics["pixel_metrics"]


def test_a_run_is_never_evaluated_on_data_made_up_for_it(run, tmp_path, run_cli):
    # the synthetic reader generates a dataset where none is: never for a trained run's data
    for command in (["eval", run], ["threshold", run, "--split", "validation"]):
        code, _, err = run_cli(*command, "--data-root", tmp_path / "gone")
        assert code == 2 and "gone: data root not found" in err and not (tmp_path / "gone").exists(), (command, err)
    # the report is of the recorded predictions: it is written, saying the images are not there
    code, _, err = run_cli("report", run, "--out", tmp_path / "r.html", "--data-root", tmp_path / "gone")
    assert code == 0 and "data root not found" in (tmp_path / "r.html").read_text() and not (tmp_path / "gone").exists()
