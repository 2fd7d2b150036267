"""The run folder: the contract between training and everything after it.

=====================  ==========================================================
file                   what
=====================  ==========================================================
config.yaml            everything needed to rebuild the model and redo the run:
                       ``version`` (2; absent in runs made before the validation
                       part), ``method`` (absent in runs made before there were
                       several: the default method), ``train`` (the method's
                       training config), ``model`` (registry name and config) and
                       the sections a method adds (what it copied into the folder)
model.safetensors      final weights
best.safetensors       weights of the best validation epoch (when validation ran)
checkpoint.safetensors the resume point, written after every epoch: weights
                       (``model.*``), the optimiser's state (``optimizer.*``),
                       torch's random state and, in its metadata, the trainer's
                       state (epoch, best validation AP, the logged epochs)
threshold.json         the decision threshold every predictor, export and service of
                       the run uses (raw-score units: ``value``) with its ``source``;
                       written when training ends if the method's rule needs no
                       test split (validation, or a quantile of good images), and by
                       ``defectkit threshold --policy``. Without it the run decides at
                       metrics.json's decision threshold (or the method's fallback)
train_log.csv          one row per epoch: the method's losses, validation AP, seconds
metrics.json           test metrics (ap, auroc, threshold, fp, fn, fp_at_fn0, ...,
                       decision_threshold and threshold_source; pixel_auroc,
                       pixel_ap, aupro when test masks exist)
predictions.csv        image, label, score, decision on the evaluated split
pr_curve.svg           precision-recall curve of the evaluated split
roc_curve.svg          ROC curve of the evaluated split
.defectkit.lock        held while a training writes the folder
=====================  ==========================================================

Scores: a method with a logit reports probabilities (its logits beside them, and the
``*_logit`` keys of metrics.json); the others report their anomaly scores, and their
thresholds are in the same units.

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
PR_CURVE = "pr_curve.svg"
ROC_CURVE = "roc_curve.svg"
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


def _yaml_classes():
    """(Loader, Dumper) reading numbers as YAML 1.2 does: ``1e-3`` is a number (YAML 1.1 reads a
    string), ``33_33`` a string (1.1: the integer 3333), ``0123`` a string (1.1: octal). The
    dumper quotes any string either reading would take for a number."""
    import re

    import yaml

    number_tags = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    integer = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
    real = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+\.[0-9]*)([eE][-+]?[0-9]+)?$|^[-+]?[0-9]+[eE][-+]?[0-9]+$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] not in number_tags] for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(number_tags[0], integer, list("-+0123456789"))
    Loader.add_implicit_resolver(number_tags[1], real, list("-+0123456789."))

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
    Dumper.add_implicit_resolver(number_tags[1], real, list("-+0123456789."))
    return Loader, Dumper


def dump_yaml(data: Any) -> str:
    import yaml

    return yaml.dump(data, Dumper=_yaml_classes()[1], sort_keys=False)


def write_yaml(path: Path, data: Any) -> None:
    atomic_write(path, dump_yaml(data).encode())


def read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.load(Path(path).read_text(), Loader=_yaml_classes()[0])
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


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
