"""``defectkit train --log mlflow|tensorboard``: the run mirrored into a temporary local MLflow
store and TensorBoard folder, read back with each tool's own reader and compared with the run
folder (config.yaml, train_log.csv, metrics.json, the files)."""

from __future__ import annotations

import csv

import pytest

from defectkit import runs
from defectkit.data.synthetic import generate
from defectkit.tracking import flat_params

TRAIN = ["train", "--preset", "tiny", "--input-size", "64x128", "--epochs", "2", "--batch-size", "4", "--validate-every", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("tracking") / "synthetic", n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3,
                    size=(64, 128), seed=4)


def train_log(run):
    with open(run / runs.TRAIN_LOG, newline="") as handle:
        return list(csv.DictReader(handle))


def test_mlflow_gets_params_epochs_metrics_and_files(data, tmp_path, run_cli, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store, ./mlruns, lands here
    run = tmp_path / "run"
    code, out, err = run_cli(*TRAIN, "--dataset", "synthetic", "--data-root", data, "--out", run, "--log", "mlflow")
    assert code == 0, err
    store = (tmp_path / "mlruns").as_uri()
    assert f"mlflow: {store}" in out
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("defectkit")
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert tracked.data.tags["defectkit.run_dir"] == str(run.resolve())
    assert tracked.data.params == flat_params(runs.read_yaml(run / runs.CONFIG))  # the whole config.yaml, flattened
    assert tracked.data.params["train.epochs"] == "2" and tracked.data.params["method"] == "segdec"

    rows = train_log(run)
    history = client.get_metric_history(tracked.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(int(r["epoch"]) + 1, pytest.approx(float(r["loss"]))) for r in rows]
    assert [m.value for m in client.get_metric_history(tracked.info.run_id, "val_ap")] == [pytest.approx(float(r["val_ap"])) for r in rows]
    metrics = runs.read_json(run / runs.METRICS)
    assert tracked.data.metrics["test_ap"] == pytest.approx(metrics["ap"]) and tracked.data.metrics["test_auroc"] == pytest.approx(metrics["auroc"])
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"report.html", "model.safetensors", "config.yaml", "metrics.json", "train_log.csv"} <= artifacts
    copy = client.download_artifacts(tracked.info.run_id, "model.safetensors", str(tmp_path / "downloaded"))
    assert open(copy, "rb").read() == (run / runs.MODEL).read_bytes()

    # resuming for a third epoch continues the same MLflow run; the changed epochs is a tag
    code, _, err = run_cli("train", "--resume", run, "--epochs", "3", "--log", "mlflow")
    assert code == 0, err
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == tracked.info.run_id and again.info.status == "FINISHED"
    assert again.data.params["train.epochs"] == "2" and again.data.tags["resumed_with.train.epochs"] == "3"
    assert [m.step for m in client.get_metric_history(again.info.run_id, "loss")] == [1, 2, 3]


def test_tensorboard_gets_the_epochs_and_test_metrics(data, tmp_path, run_cli):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    code, _, err = run_cli(*TRAIN, "--dataset", "synthetic", "--data-root", data, "--out", run, "--log", "tensorboard")
    assert code == 0, err
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = train_log(run)
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(int(r["epoch"]) + 1, pytest.approx(float(r["loss"]))) for r in rows]
    assert events.Scalars("test/ap")[0].value == pytest.approx(runs.read_json(run / runs.METRICS)["ap"])
    assert "config/text_summary" in events.Tags()["tensors"]


def test_tracking_options_are_checked_before_training(data, tmp_path, run_cli):
    run = tmp_path / "run"
    for args, message in ((["--log", "wandb"], "--log 'wandb': unknown tracker; available: mlflow, tensorboard"),
                          (["--mlflow-uri", "file:/tmp/x"], "--mlflow-uri applies to --log mlflow only")):
        code, _, err = run_cli(*TRAIN, "--dataset", "synthetic", "--data-root", data, "--out", run, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
        assert not run.exists()  # refused before the run folder was made


def test_a_failed_training_leaves_a_failed_mlflow_run(data, tmp_path, run_cli, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from defectkit.methods import trainer

    calls = {"n": 0}
    original = trainer.Trainer.run_epoch

    def second_epoch_diverges(self, *args, **kwargs):
        row = original(self, *args, **kwargs)
        calls["n"] += 1
        return {**row, "loss": float("nan")} if calls["n"] == 2 else row

    monkeypatch.setattr(trainer.Trainer, "run_epoch", second_epoch_diverges)
    store = (tmp_path / "store").as_uri()
    code, _, err = run_cli(*TRAIN, "--dataset", "synthetic", "--data-root", data, "--out", tmp_path / "run", "--log", "mlflow", "--mlflow-uri", store)
    assert code == 2 and "training diverged at epoch 2" in err
    client = MlflowClient(store)
    (tracked,) = client.search_runs([client.get_experiment_by_name("defectkit").experiment_id])
    assert tracked.info.status == "FAILED" and [m.step for m in client.get_metric_history(tracked.info.run_id, "loss")] == [1]


def test_an_mlflow_server_that_is_down_is_refused_before_training(data, tmp_path, run_cli):
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    code, _, err = run_cli(*TRAIN, "--dataset", "synthetic", "--data-root", data, "--out", run, "--log", "mlflow", "--mlflow-uri", "http://127.0.0.1:9")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--mlflow-uri http://127.0.0.1:9: MLflow cannot use it" in err
    assert not run.exists()


def test_a_failing_tracker_is_dropped_and_the_training_goes_on(data, tmp_path, run_cli):
    pytest.importorskip("tensorboard")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the event folder would go")
    run = tmp_path / "run"
    code, out, err = run_cli(*TRAIN, "--dataset", "synthetic", "--data-root", data, "--out", run, "--log", "tensorboard", "--tensorboard-dir", blocker)
    assert code == 0, err
    assert "warning: tensorboard:" in out and "no longer tracking there" in out and "tracked with none" in out
    assert (run / runs.MODEL).is_file() and (run / runs.METRICS).is_file() and blocker.read_text().startswith("a file")
