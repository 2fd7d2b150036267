"""The run folder: the contract between training and everything after it.

=====================  ==========================================================
file                   what
=====================  ==========================================================
config.yaml            everything needed to rebuild the model and redo the run:
                       ``method`` (segdec, ear, riad; absent in runs made before
                       there were several: segdec), ``train`` (the method's
                       training config), ``model`` (registry name and config)
                       and, for EAR, ``attention`` (the attention net's config)
model.safetensors      final weights
best.safetensors       segdec: weights of the best validation epoch (when validation ran)
checkpoint.safetensors weights after the last finished epoch, with the training state
                       (epoch, best validation AP) in its metadata: the resume point;
                       EAR/RIAD keep Adam's moments in it too (``model.*`` and
                       ``optimizer.*`` tensors)
attention.safetensors  EAR: the attention weights the run excises with (a copy)
threshold.json         the decision threshold every predictor, export and service of
                       the run uses (raw-score units: ``value``) with its ``source``.
                       EAR/RIAD write it when training ends (validation best F1 or a
                       good-image quantile); ``defectkit threshold --policy`` writes it
                       for any method. A segdec run without it decides at
                       metrics.json's ``decision_threshold_logit`` (logit 0 before eval)
train_log.csv          one row per epoch: losses, validation AP (segdec), seconds
metrics.json           test metrics (ap, auroc, threshold, fp, fn, fp_at_fn0, ...,
                       decision_threshold and threshold_source; pixel_auroc,
                       pixel_ap, aupro when test masks exist)
predictions.csv        image, label, score, decision on the evaluated split
pr_curve.png           precision-recall curve of the evaluated split
roc_curve.png          ROC curve of the evaluated split
=====================  ==========================================================

Scores: segdec's are probabilities (its logits beside them, and the ``*_logit`` keys of
metrics.json); EAR's and RIAD's are anomaly scores (max of the smoothed anomaly map), and
their thresholds are in the same units.

Every file is written atomically (temp file in the same folder, then ``os.replace``), so a
killed run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError
from .files import atomic_write, load_weights, read_metadata, save_weights  # noqa: F401 (the run folder's API)

CONFIG = "config.yaml"
MODEL = "model.safetensors"
BEST = "best.safetensors"
CHECKPOINT = "checkpoint.safetensors"
TRAIN_LOG = "train_log.csv"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
PR_CURVE = "pr_curve.png"
ROC_CURVE = "roc_curve.png"
ATTENTION = "attention.safetensors"
THRESHOLD = "threshold.json"


def stored_threshold(run_dir: Path) -> dict | None:
    """threshold.json of the run, when it has one."""
    path = Path(run_dir) / THRESHOLD
    return read_json(path) if path.is_file() else None


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def write_yaml(path: Path, data: Any) -> None:
    import yaml

    atomic_write(path, yaml.safe_dump(data, sort_keys=False).encode())


def read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc})") from None


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue().encode())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def require_run(run_dir: Path, *files: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found")
    missing = [f for f in (CONFIG, *files) if not (run_dir / f).is_file()]
    if missing:
        raise DataError(f"{run_dir}: run folder is missing {', '.join(missing)}")
    return run_dir
