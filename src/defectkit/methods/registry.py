"""The methods behind one interface: the supervised two-stage net, EAR and RIAD.

A method is a module with four verbs; training, evaluation, the predictor and the CLI reach
it only through this registry, so adding one is one entry here:

* ``CONFIG_CLASS``: its training config (a dataclass with ``from_dict``/``to_dict``);
* ``SCORER``: its :class:`Scorer` class (what its raw scores mean);
* ``fit(config, out, resume=False, on_step=None, log=print)``: train into a run folder;
* ``load_scorer(run_dir, device, weights)``: a :class:`Scorer` built from the run folder;
* ``decision_threshold(scorer, parts, test_metrics)``: the decision threshold and where it
  came from (``{"value": raw score, "source": text, ...}``);
* ``run_threshold(run_dir)``: the threshold a predictor of a finished run uses;
* ``read_run_config(run_dir)``: (training config, rest) from the run's config.yaml.

A run folder's ``config.yaml`` names its method at the top (``method: ear``); folders written
before there was more than one method have none and are the supervised net's.

Modules are imported on first use, so importing the registry (the CLI does, for ``--help``)
costs nothing.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .. import runs
from ..errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    module: str
    summary: str
    supervised: bool

    def impl(self):
        return importlib.import_module(self.module)

    @property
    def config_cls(self) -> type:
        return self.impl().CONFIG_CLASS

    def fit(self, config, out: str | Path, resume: bool = False, on_step: Callable | None = None, log: Callable[[str], None] = print) -> Path:
        return self.impl().fit(config, out, resume=resume, on_step=on_step, log=log)

    def load_scorer(self, run_dir: str | Path, device: str = "cpu", weights: str = runs.MODEL) -> "Scorer":
        return self.impl().load_scorer(run_dir, device=device, weights=weights)

    def decision_threshold(self, scorer: "Scorer", parts: dict, test_metrics: dict) -> dict:
        return self.impl().decision_threshold(scorer, parts, test_metrics)

    def read_run_config(self, run_dir: str | Path):
        return self.impl().read_run_config(Path(run_dir))[0]

    @property
    def raw_is_logit(self) -> bool:
        return self.impl().SCORER.raw_is_logit

    def run_threshold(self, run_dir: str | Path) -> float:
        """The decision threshold (raw-score units) a predictor of this run uses: threshold.json
        when the run has one (any method), else the method's own rule."""
        stored = runs.stored_threshold(Path(run_dir))
        return float(stored["value"] if stored else self.impl().run_threshold(Path(run_dir)))


METHODS: dict[str, Method] = {
    "segdec": Method("segdec", "defectkit.methods.segdec", "supervised two-stage segmentation + decision network (Božič et al.)", True),
    "ear": Method("ear", "defectkit.methods.ear", "Excision And Recovery: attention-masked U-Net reconstruction, good images only (Park et al.)", False),
    "riad": Method("riad", "defectkit.methods.riad", "Reconstruction by inpainting with random multi-masks, good images only (Zavrtanik et al.)", False),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None


def method_name_of_run(run_dir: str | Path) -> str:
    """The method recorded in a run folder's config.yaml (none recorded: segdec)."""
    path = Path(run_dir) / runs.CONFIG
    saved = runs.read_yaml(path)
    if not isinstance(saved, dict):
        raise DataError(f"{path}: not a defectkit run config (expected a mapping)")
    name = saved.get("method")
    if name is None and isinstance(saved.get("train"), dict):
        name = saved["train"].get("method")
    name = name or "segdec"
    if name not in METHODS:
        raise DataError(f"{path}: unknown method {name!r}; this defectkit knows {', '.join(METHODS)}")
    return name


def method_of_run(run_dir: str | Path) -> Method:
    return METHODS[method_name_of_run(run_dir)]


def load_scorer(run_dir: str | Path, device: str = "cpu", weights: str = runs.MODEL) -> "Scorer":
    """The scorer of any run folder, whatever its method."""
    run_dir = runs.require_run(Path(run_dir), weights)
    return method_of_run(run_dir).load_scorer(run_dir, device=device, weights=weights)


def to_score(raw, raw_is_logit: bool):
    """User-facing score: the probability (float64 sigmoid) of a logit, else the raw score."""
    if raw_is_logit:
        return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(raw, dtype=np.float64)))
    return np.asarray(raw, dtype=np.float64)


class Scorer(abc.ABC):
    """A trained method ready to score images.

    ``score_batch`` takes preprocessed images (float32 ``N x C x H x W`` at the input size)
    and returns raw image scores (float64, higher = more likely defective) and anomaly maps
    (float32 ``N x h x w`` at the method's own resolution; callers resize them).
    ``raw_is_logit``: the supervised net's raw score is a logit and its user-facing score
    the probability; the reconstruction methods' raw score is the score itself.
    ``heatmap_scale`` is the map value drawn at the top of the colour scale.
    """

    method: str
    config: Any
    raw_is_logit: bool = False
    heatmap_scale: float = 1.0

    def __init__(self, config, device):
        self.config, self.device = config, device
        self.pre = config.preprocessing()

    @abc.abstractmethod
    def score_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw scores, maps) of one batch."""

    def to_score(self, raw):
        """User-facing score from raw scores (scalar or array)."""
        return to_score(raw, self.raw_is_logit)

    def iter_samples(self, samples: list, batch_size: int | None = None) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
        """(samples, raw scores, maps) batch by batch: maps never pile up for a whole split."""
        batch_size = batch_size or getattr(self.config, "eval_batch_size", 4)
        for start in range(0, len(samples), batch_size):
            part = samples[start : start + batch_size]
            raw, maps = self.score_batch(np.stack([self.pre.image(s) for s in part]))
            yield part, raw, maps

    def raw_scores(self, samples: list, batch_size: int | None = None) -> np.ndarray:
        scores = [raw for _, raw, _ in self.iter_samples(samples, batch_size)]
        return np.concatenate(scores) if scores else np.empty(0, np.float64)
