"""Run tracking in the tools teams already use: ``defectkit train --log mlflow`` / ``--log tensorboard``.

The run folder stays the truth; a tracker mirrors it: the config as parameters, each epoch's
row of ``train_log.csv`` as metrics at step = epoch number, the test metrics at the end, and
(MLflow) the run folder's files, the report and the model among them, as artifacts. Trackers
start with the first finished epoch, so a command refused before training leaves no run
behind; a resumed run folder continues the MLflow run that it started (found by its tag
``defectkit.run_dir``) and appends to its TensorBoard folder. Nothing here is imported by the
rest of defectkit: both packages are optional extras (``pip install defectkit[mlflow]`` /
``[tensorboard]``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError

TRACKERS = ("mlflow", "tensorboard")
RUN_DIR_TAG = "defectkit.run_dir"
ARTIFACTS = ("config.yaml", "train_log.csv", "metrics.json", "threshold.json", "predictions.csv", "pr_curve.svg", "roc_curve.svg",
             "report.html", "model.safetensors", "best.safetensors")


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """``config.yaml``'s nested mapping as MLflow-style flat parameters (``train.lr``)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = "null" if value is None else str(value)
    return out


def numeric(row: dict) -> dict[str, float]:
    """The finite numbers of a log row or metrics.json (the epoch, text and empty cells left out)."""
    out = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:300]


class Tracker(Protocol):
    """What a tracker offers the train command (one per ``--log`` value): the interface that
    :class:`MlflowTracker` and :class:`TensorboardTracker` implement."""

    name: str

    def start(self, run_dir: Path, config: dict, resumed: bool) -> None: ...

    def log_epoch(self, row: dict) -> None: ...

    def finish(self, run_dir: Path, metrics: dict | None, status: str) -> None: ...


class MlflowTracker:
    name = "mlflow"

    def __init__(self, uri: str | None = None, experiment: str = "defectkit"):
        try:
            import mlflow
        except ImportError:
            raise ConfigError("--log mlflow needs MLflow: pip install 'defectkit[mlflow]' (mlflow-skinny)") from None
        self.mlflow = mlflow
        self.uri = uri or Path("mlruns").resolve().as_uri()  # a local file store beside the command by default
        if self.uri.startswith("file:") or "://" not in self.uri:
            # MLflow 3 keeps its file store in "maintenance mode" and refuses it unless asked;
            # it is what works without a server or a database driver (mlflow-skinny has none)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server that is down is said in seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow.tracking import MlflowClient

        try:  # before training: a wrong URI or a server that is down is refused now, not after the run
            MlflowClient(self.uri).search_experiments(max_results=1)
        except Exception as exc:  # MLflow's and requests' own errors
            raise ConfigError(f"--mlflow-uri {self.uri}: MLflow cannot use it ({_first_line(exc)})") from None
        self.experiment = experiment
        self.run = None

    def start(self, run_dir, config, resumed):
        from mlflow.tracking import MlflowClient

        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.uri)
        experiment = mlflow.set_experiment(self.experiment)
        where = str(run_dir.resolve())
        earlier = MlflowClient(self.uri).search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{where}'",
                                                     order_by=["attributes.start_time DESC"], max_results=1) if resumed else []
        self.run = mlflow.start_run(run_id=earlier[0].info.run_id) if earlier else mlflow.start_run(run_name=run_dir.name, tags={RUN_DIR_TAG: where})
        params = flat_params(config)
        logged = self.run.data.params if earlier else {}
        new = {k: v[:6000] for k, v in params.items() if k not in logged}  # MLflow keeps a parameter's first value for good
        if new:
            mlflow.log_params(new)
        changed = {f"resumed_with.{k}": v[:5000] for k, v in params.items() if k in logged and logged[k] != v[:6000]}
        if changed:
            mlflow.set_tags(changed)

    def log_epoch(self, row):
        values = numeric(row)
        if values:
            self.mlflow.log_metrics(values, step=int(row["epoch"]) + 1)

    def finish(self, run_dir, metrics, status):
        if self.run is None:
            return
        mlflow = self.mlflow
        try:
            if metrics:
                mlflow.log_metrics({f"test_{k}": v for k, v in numeric(metrics).items()})
            for name in ARTIFACTS:
                if (run_dir / name).is_file():
                    mlflow.log_artifact(str(run_dir / name))
        finally:
            mlflow.end_run(status=status)
            self.run = None


class TensorboardTracker:
    name = "tensorboard"

    def __init__(self, log_dir: Path | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--log tensorboard needs TensorBoard: pip install 'defectkit[tensorboard]'") from None
        self.writer_cls, self.log_dir, self.writer = SummaryWriter, log_dir, None

    def start(self, run_dir, config, resumed):
        import yaml

        log_dir = self.log_dir or run_dir / "tensorboard"
        self.writer = self.writer_cls(log_dir=str(log_dir))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", global_step=0)

    def log_epoch(self, row):
        step = int(row["epoch"]) + 1
        for key, value in numeric(row).items():
            self.writer.add_scalar(f"train/{key}", value, global_step=step)
        self.writer.flush()

    def finish(self, run_dir, metrics, status):
        if self.writer is None:
            return
        try:
            for key, value in numeric(metrics or {}).items():
                self.writer.add_scalar(f"test/{key}", value)
            self.writer.add_text("status", f"{status}; run folder {run_dir.resolve()}")
        finally:
            self.writer.close()
            self.writer = None


def make_trackers(names: list[str], mlflow_uri: str | None = None, mlflow_experiment: str = "defectkit", tensorboard_dir: Path | None = None) -> list[Tracker]:
    """The trackers ``--log`` names (each at most once); the optional packages are imported here,
    so a missing one is refused before training starts."""
    wanted = []
    for value in names:
        for name in (v.strip() for v in value.split(",")):
            if name not in TRACKERS:
                raise ConfigError(f"--log {name!r}: unknown tracker; available: {', '.join(TRACKERS)}")
            if name not in wanted:
                wanted.append(name)
    if mlflow_uri is not None and "mlflow" not in wanted:
        raise ConfigError("--mlflow-uri applies to --log mlflow only")
    if tensorboard_dir is not None and "tensorboard" not in wanted:
        raise ConfigError("--tensorboard-dir applies to --log tensorboard only")
    return [MlflowTracker(mlflow_uri, mlflow_experiment) if name == "mlflow" else TensorboardTracker(tensorboard_dir) for name in wanted]


class Tracking:
    """The trainer's ``on_epoch`` for a list of trackers: starts them at the first epoch it
    sees, then forwards each row; :meth:`finish` ends them (with the test metrics). A tracker
    that fails (a server gone away, a full disk) is dropped with one warning: the training and
    its run folder go on without it."""

    def __init__(self, trackers: list[Tracker], run_dir: Path, resumed: bool, log=print):
        self.trackers, self.run_dir, self.resumed, self.started, self.log = list(trackers), Path(run_dir), resumed, False, log

    def _each(self, call) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # the tracker's own errors must not stop the training
                self.trackers.remove(tracker)
                self.log(f"warning: {tracker.name}: {_first_line(exc)}; no longer tracking there (the run folder has everything)")

    def _start(self) -> None:
        from . import runs

        config: dict[str, Any] = runs.read_yaml(self.run_dir / runs.CONFIG)
        self._each(lambda t: t.start(self.run_dir, config, self.resumed))
        self.started = True

    def __call__(self, row: dict) -> None:
        if not self.started:
            self._start()
        self._each(lambda t: t.log_epoch(row))

    def finish(self, metrics: dict | None = None, status: str = "FINISHED") -> None:
        if not self.started:
            if status != "FINISHED" or not (self.run_dir / "config.yaml").is_file():
                return
            self._start()  # a run that had finished already: its final metrics and files still reach the tracker
        self._each(lambda t: t.finish(self.run_dir, metrics, status))
