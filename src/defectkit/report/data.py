"""What a report shows, read from the run folder alone (the model is loaded only for the gallery)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import runs
from ..errors import DataError, DefectkitError

@dataclass
class RunData:
    """One evaluated run. ``raw`` is what decisions compare with ``threshold_raw``: the
    logits (its probabilities can round to 1.0 and tie), the anomaly scores otherwise."""

    run_dir: Path
    method: Any  # the run's Method class
    saved: dict  # config.yaml as written
    config: Any  # the method's training config
    metrics: dict
    rows: list[dict]  # predictions.csv
    labels: np.ndarray  # bool, True = defective
    scores: np.ndarray  # user-facing scores
    raw: np.ndarray
    raw_is_logit: bool
    threshold_raw: float
    threshold: float  # score units
    weights: str = runs.MODEL  # the weights file the run was evaluated with (and the gallery scores with)
    train_log: list[dict] = field(default_factory=list)
    parts: dict | None = None  # split -> samples, when the data could be read
    data_root: str | None = None
    data_error: str | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name

    def confusion(self) -> dict[str, Any]:
        """Counts at the production threshold (raw >= threshold_raw is a defect), with precision and recall."""
        flagged = self.raw >= self.threshold_raw
        tp = int(np.sum(flagged & self.labels))
        fp = int(np.sum(flagged & ~self.labels))
        fn = int(np.sum(~flagged & self.labels))
        tn = int(np.sum(~flagged & ~self.labels))
        return {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
        }

    def test_samples(self) -> dict[str, Any]:
        """Evaluated samples by name, to find masks and moved images; empty without data."""
        return {s.name: s for s in (self.parts or {}).get("test", [])}


def natural_key(path: Path) -> list:
    """fold2 before fold10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def run_folders(folder: str | Path) -> tuple[list[Path], bool]:
    """(run folders, is cross-validation): the folder itself when it holds config.yaml, else its
    sub-folders that do (one run per fold, as benchmarks/ksdd_protocol.py writes them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: run folder not found")
    if (folder / runs.CONFIG).is_file():
        return [folder], False
    folds = sorted((d for d in folder.iterdir() if d.is_dir() and (d / runs.CONFIG).is_file()), key=natural_key)
    if not folds:
        raise DataError(
            f"{folder}: not a run folder (no {runs.CONFIG}) and none of its sub-folders is one; "
            "pass a run folder, or a folder of per-fold run folders (fold0/, fold1/, ...)"
        )
    return folds, True


def load_run(run_dir: Path, data_root: str | Path | None = None) -> RunData:
    """Everything but images; the dataset is only listed (for the summary, masks and moved files)."""
    from ..evaluate.run_eval import read_predictions, read_test_split
    from ..methods.base import to_score
    from ..methods.registry import method_of_run

    run_dir = Path(run_dir)
    missing = [f for f in (runs.METRICS, runs.PREDICTIONS) if not (run_dir / f).is_file()]
    if missing:
        raise DataError(f"{run_dir}: the run has not been evaluated (no {', '.join(missing)}); run `defectkit eval {run_dir}` first")
    method = method_of_run(run_dir)
    rows, labels, scores, raw = read_predictions(run_dir)
    metrics = runs.read_json(run_dir / runs.METRICS)
    raw_is_logit = method.raw_is_logit
    if not isinstance(metrics, dict):
        raise DataError(f"{run_dir / runs.METRICS}: expected a JSON object; run `defectkit eval {run_dir}` again")
    weights = metrics.get("weights", runs.MODEL)
    threshold_raw = method.run_threshold(run_dir, weights)["value"]
    threshold = float(to_score(threshold_raw, raw_is_logit))
    config, saved = method.read_config(run_dir)
    log_path = run_dir / runs.TRAIN_LOG
    data = RunData(
        run_dir=run_dir,
        method=method,
        saved=saved,
        config=config,
        metrics=metrics,
        rows=rows,
        labels=labels,
        scores=scores,
        raw=raw,
        raw_is_logit=raw_is_logit,
        threshold_raw=threshold_raw,
        threshold=threshold,
        weights=weights,
        train_log=runs.read_csv(log_path) if log_path.is_file() else [],
        data_root=str(data_root) if data_root is not None else config.data_root,
    )
    if data.data_root is not None and not Path(data.data_root).exists():
        # checked here: some readers create what is missing (the synthetic one generates its data)
        data.data_error = f"{data.data_root}: data root not found"
        return data
    try:
        data.parts, _ = read_test_split(config, data_root)
    except DefectkitError as exc:
        data.data_error = str(exc)
    return data
