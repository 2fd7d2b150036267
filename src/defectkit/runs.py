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
                       the run uses (raw-score units: ``value``) with its ``source``
                       and the ``weights`` (file name and sha256) it was set for;
                       written when training ends if the method's rule needs no
                       test split (validation, or a quantile of good images), and by
                       ``defectkit threshold --policy``. Without it the run decides at
                       metrics.json's decision threshold; with neither, or with one
                       made for other weights, predictors refuse to load
train_log.csv          one row per epoch: the method's losses, validation AP, seconds
metrics.json           test metrics (ap, auroc, threshold, fp, fn, fp_at_fn0, ...,
                       decision_threshold and threshold_source, the weights it
                       evaluated (name and sha256); pixel_auroc, pixel_ap, aupro
                       when test masks exist)
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
import math
from pathlib import Path
from typing import Any, Iterable

from .errors import DataError
from .files import atomic_write, check_finite, load_weights, read_metadata, save_weights, sha256  # noqa: F401 (the run folder's API)

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


class StaleRecord(DataError):
    """A threshold or evaluation recorded for weights that have changed since."""


def weights_record(run_dir: Path, weights: str = MODEL) -> dict[str, str]:
    """What a threshold or an evaluation records of the weights it was made with: their file
    name and sha256, so a record is never applied to other weights."""
    return {"weights": weights, "weights_sha256": sha256(Path(run_dir) / weights)}


def _json_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _finite_field(path: Path, data: dict, key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{path}: field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _made_with(path: Path, data: dict, run_dir: Path, weights: str) -> bool:
    """Whether record ``data`` (read from ``path``) was made with ``weights`` of the run: False
    when it names another weights file; :class:`StaleRecord` when the file has changed since.
    Records written before weights were recorded are of model.safetensors."""
    recorded = data.get("weights", MODEL)
    if not isinstance(recorded, str):
        raise DataError(f"{path}: field 'weights' must be a file name, got {recorded!r}")
    if recorded != weights:
        return False
    digest = data.get("weights_sha256")
    if digest is not None and digest != sha256(Path(run_dir) / weights):
        redo = f"defectkit threshold {run_dir} --policy {data['policy']}" if path.name == THRESHOLD and data.get("policy") else f"defectkit eval {run_dir}" + (" --best" if weights == BEST else "")
        raise StaleRecord(f"{path}: was made for earlier weights than the current {weights} (trained further since); run `{redo}` again")
    return True


def stored_threshold(run_dir: Path, weights: str = MODEL) -> dict | None:
    """threshold.json of the run when it was set for ``weights`` (None when there is none, or it
    is for another weights file); a malformed one is a :class:`DataError`, a stale one a
    :class:`StaleRecord`."""
    path = Path(run_dir) / THRESHOLD
    if not path.is_file():
        return None
    data = _json_object(path)
    if not _made_with(path, data, run_dir, weights):
        return None
    _finite_field(path, data, "value")
    if not isinstance(data.get("source"), str):
        raise DataError(f"{path}: field 'source' must be a text, got {data.get('source')!r}")
    return data


def evaluation(run_dir: Path, weights: str = MODEL) -> dict:
    """metrics.json of the run when it evaluated ``weights`` as they are now; missing, malformed,
    of other or of earlier weights is refused (predictions.csv then holds other scores)."""
    path = Path(run_dir) / METRICS
    again = f"defectkit eval {run_dir}" + (" --best" if weights == BEST else "")
    if not path.is_file():
        raise DataError(f"{path}: missing; run `{again}` first")
    data = _json_object(path)
    if not _made_with(path, data, run_dir, weights):
        evaluated = data.get("weights")
        raise DataError(f"{path}: the run was evaluated with {evaluated}, not {weights}: use --weights {evaluated}, or run `{again}`")
    return data


def decision_threshold(run_dir: Path, weights: str = MODEL, key: str = "decision_threshold") -> dict:
    """The decision threshold (raw units) every predictor of ``weights`` uses, with where it
    comes from: ``{"value", "source", "file"}``. threshold.json when it was set for these
    weights, else metrics.json's ``key`` when the run was evaluated with them; anything else
    (missing, malformed, for other or earlier weights) is refused, naming the file: a guessed
    threshold would pass defective parts."""
    run_dir = Path(run_dir)
    stored = stored_threshold(run_dir, weights)
    if stored is not None:
        return {**stored, "value": float(stored["value"]), "file": THRESHOLD}
    path = run_dir / METRICS
    if not path.is_file():
        raise DataError(f"{run_dir}: no decision threshold for {weights} ({THRESHOLD} and {METRICS} are missing); run `defectkit eval {run_dir}`" + (" --best" if weights == BEST else "") + " or set one with `defectkit threshold`")
    data = evaluation(run_dir, weights)
    source = data.get("threshold_source")
    return {"value": _finite_field(path, data, key), "source": source if isinstance(source, str) else "evaluation", "file": METRICS}


def _non_finite(data: Any, where: str = "") -> list[str]:
    if isinstance(data, float):
        return [] if math.isfinite(data) else [where or "value"]
    if isinstance(data, dict):
        return [bad for k, v in data.items() for bad in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, (list, tuple)):
        return [bad for i, v in enumerate(data) for bad in _non_finite(v, f"{where}[{i}]")]
    return []


def write_json(path: Path, data: Any) -> None:
    """Atomically; a NaN or infinity is refused (a run's numbers are finite or not written)."""
    bad = _non_finite(data)
    if bad:
        raise DataError(f"{path}: refusing to write non-finite value(s) in {', '.join(bad[:5])}")
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from None
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
    try:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it as CSV ({exc})") from None


def require_run(run_dir: Path, *files: str) -> Path:
    run_dir = Path(run_dir)
    for name in files:
        if not name or Path(name).name != name or name in (".", ".."):
            raise DataError(f"{name!r}: not a file name; name a file inside the run folder (e.g. {BEST})")
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found")
    missing = [f for f in (CONFIG, *files) if not (run_dir / f).is_file()]
    if missing:
        raise DataError(f"{run_dir}: run folder is missing {', '.join(missing)}")
    return run_dir
