"""The run folder: the contract between training and everything after it.

=====================  ==========================================================
file                   what
=====================  ==========================================================
config.yaml            everything needed to rebuild the model and redo the run
model.safetensors      final weights
best.safetensors       weights of the best validation epoch (when validation ran)
checkpoint.safetensors weights after the last finished epoch, with the training state
                       (epoch, best validation AP) in its metadata: the resume point
train_log.csv          one row per epoch: losses, validation AP, seconds
metrics.json           test metrics (ap, auroc, threshold, fp, fn, fp_at_fn0, ...)
predictions.csv        image, label, score, decision on the evaluated split
pr_curve.png           precision-recall curve of the evaluated split
roc_curve.png          ROC curve of the evaluated split
=====================  ==========================================================

Every file is written atomically (temp file in the same folder, then ``os.replace``), so a
killed run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError

CONFIG = "config.yaml"
MODEL = "model.safetensors"
BEST = "best.safetensors"
CHECKPOINT = "checkpoint.safetensors"
TRAIN_LOG = "train_log.csv"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
PR_CURVE = "pr_curve.png"
ROC_CURVE = "roc_curve.png"


def atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def save_weights(path: Path, state_dict: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, save(tensors, metadata=metadata))


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None


def load_weights(model, path: Path) -> None:
    """Load safetensors weights (never pickle), with a clear error when they do not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise DataError(
            f"{path}: weights do not match the model config "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise DataError(
                f"{path}: weights do not match the model config: {key} has shape {tuple(tensor.shape)}, "
                f"the config builds {tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors)


def require_run(run_dir: Path, *files: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found")
    missing = [f for f in (CONFIG, *files) if not (run_dir / f).is_file()]
    if missing:
        raise DataError(f"{run_dir}: run folder is missing {', '.join(missing)}")
    return run_dir
