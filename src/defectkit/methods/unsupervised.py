"""What EAR and RIAD share: config, training on good images only, scoring, the decision threshold.

Both reconstruct an image from a partly hidden copy with a U-Net trained by ``L2 + MSGMS +
SSIM`` (METHODS.md sections 2-3) and flag what they cannot reconstruct. They differ only in
how the input is hidden and the reconstruction assembled; a :class:`Reconstruction`
subclass supplies that (``ear.py``, ``riad.py``) and everything else is written once here.

* **Data.** Only the good images of the training split are used; defective training images
  are ignored (one log line says how many). When there is no validation split with defects,
  a seeded ``holdout`` share of the good training images (default 10%, at least one image
  when there are two or more) is kept out of training to set the decision threshold.
* **Training.** Adam (learning rate 1e-4, weight decay 1e-5, batch 4, 300 epochs: the public
  RIAD re-implementation's settings). Each epoch's order and random masks come from a
  generator seeded by ``(seed, epoch)``, and the checkpoint written atomically after every
  epoch holds the weights and Adam's moments, so a resumed run ends with exactly the weights
  of an uninterrupted one.
* **Score.** The method's anomaly map at the input size, smoothed by a mean filter; the image
  score is its maximum. The filter is 21 x 21 at the papers' 256-pixel images and scales with
  the shorter input side: ``round(21 * side / 256)``, made odd, at least 1 (``mean_filter``
  sets it directly).
* **Threshold.** Best F1 on the validation split when it has defective images; otherwise the
  ``threshold_quantile`` (default 0.99, linear interpolation) of the good calibration images'
  scores: the held-out good images, or the training good images themselves when
  ``holdout`` is 0 (their scores run low, since the net has learned them). Fixed at the end
  of training in ``threshold.json``; ``metrics.json`` repeats it with its source.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import runs
from ..data.preprocess import Preprocessing
from ..data.sample import Sample
from ..errors import ConfigError, DataError
from .registry import Scorer
from .segdec import read_parts

THRESHOLD_FILE = runs.THRESHOLD
LOG_FIELDS = ["epoch", "loss", "loss_l2", "loss_msgms", "loss_ssim", "seconds"]
PAPER_SIDE, PAPER_FILTER = 256, 21


def as_tuple(value, kind, name):
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list, got {value!r}")
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of {kind.__name__} values, got {value!r}") from None
    if kind is bool and not all(isinstance(v, bool) for v in value):
        raise ConfigError(f"{name} must be a list of true/false flags, got {value!r}")
    return out


@dataclass
class UnsupervisedConfig:
    """Fields EAR and RIAD share; saved in the run folder's config.yaml."""

    method: str = ""
    # data
    dataset: str = "synthetic"
    data_root: str | None = None
    split: str | None = None
    fold: int | None = None
    # model: the reconstruction U-Net
    preset: str = "paper"
    model_overrides: dict = field(default_factory=dict)
    # preprocessing
    input_size: tuple[int, int] = (256, 256)  # (width, height)
    channels: int = 1
    # optimisation
    epochs: int = 300
    batch_size: int = 4
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 8
    # scoring and decision
    mean_filter: int = 0  # 0: 21 at a 256-pixel shorter side, scaled with it
    threshold_quantile: float = 0.99
    holdout: float = 0.1

    def __post_init__(self):
        for f in dataclasses.fields(self):  # YAML 1.1 reads 1e-4 as a string, and a typo should say which field
            value = getattr(self, f.name)
            if f.type == "float" and not isinstance(value, bool):
                try:
                    setattr(self, f.name, float(value))
                except (TypeError, ValueError):
                    raise ConfigError(f"{f.name} must be a number, got {value!r}") from None
            elif f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
        self.input_size = as_tuple(self.input_size, int, "input_size")
        if len(self.input_size) != 2:
            raise ConfigError(f"input_size must be (width, height), got {self.input_size}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size and eval_batch_size must be at least 1")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ConfigError("learning_rate must be positive and weight_decay at least 0")
        if self.mean_filter < 0:
            raise ConfigError(f"mean_filter must be 0 (automatic) or a positive size, got {self.mean_filter}")
        if not 0 < self.threshold_quantile <= 1:
            raise ConfigError(f"threshold_quantile must lie in (0, 1], got {self.threshold_quantile}")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"holdout must be a share in [0, 1), got {self.holdout}")
        self.preprocessing()  # validates size and channels

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(input_size=self.input_size, channels=self.channels, dilate=0, weighted_segmentation=False)

    @property
    def filter_size(self) -> int:
        """Mean-filter size in use: ``mean_filter``, or 21 scaled from a 256-pixel shorter side."""
        if self.mean_filter:
            return self.mean_filter
        size = max(1, round(PAPER_FILTER * min(self.input_size) / PAPER_SIDE))
        return size if size % 2 else size + 1

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__.removesuffix('Config').upper()} training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**data)


def read_run_config(run_dir: Path, config_cls: type) -> tuple[Any, dict]:
    """(training config, the whole config.yaml) of a reconstruction run."""
    path = Path(run_dir) / runs.CONFIG
    saved = runs.read_yaml(path)
    if not isinstance(saved, dict) or "train" not in saved or "model" not in saved:
        raise DataError(f"{path}: not a defectkit run config (needs 'train' and 'model')")
    return config_cls.from_dict(saved["train"]), saved


class Reconstruction(abc.ABC):
    """How a method hides the input and assembles its reconstruction (EAR, RIAD)."""

    def __init__(self, config, device):
        self.config, self.device = config, device

    @abc.abstractmethod
    def unet_overrides(self) -> dict:
        """U-Net config fields the method fixes (its inference skips)."""

    def setup(self, out: Path, saved: dict | None) -> dict:
        """Load what the method needs besides the U-Net; return extra config.yaml sections.
        ``saved`` is the run's config.yaml when the run exists already."""
        return {}

    def prepare_training(self, images: np.ndarray) -> None:
        """Precompute per-image state for the training images (EAR: their masks)."""

    @abc.abstractmethod
    def train_reconstruction(self, unet, x, indices: np.ndarray, rng: np.random.Generator):
        """The training reconstruction of batch ``x`` (training images ``indices``)."""

    @abc.abstractmethod
    def anomaly_map(self, unet, x):
        """Unsmoothed anomaly map ``N x 1 x H x W`` of images ``x`` (U-Net in eval mode)."""


class ReconstructionScorer(Scorer):
    """Raw score = max of the smoothed anomaly map; map at the input size."""

    def __init__(self, method: Reconstruction, unet, config, device):
        super().__init__(config, device)
        self.recon, self.unet, self.method = method, unet.eval(), config.method

    def maps(self, x):
        from .reconstruction import mean_filter

        return mean_filter(self.recon.anomaly_map(self.unet, x), self.config.filter_size)

    def score_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            maps = self.maps(torch.from_numpy(images).to(self.device))[:, 0]
            return maps.flatten(1).amax(1).double().cpu().numpy(), maps.float().cpu().numpy()


def split_training(parts: dict[str, list[Sample]], config) -> tuple[list[Sample], list[Sample], int]:
    """(good images to train on, held-out good images for the threshold, defective images ignored)."""
    train = parts.get("train", [])
    good = [s for s in train if not s.is_defective]
    ignored = len(train) - len(good)
    validation = parts.get("validation") or []
    if any(s.is_defective for s in validation) or config.holdout == 0 or len(good) < 2:
        return good, [], ignored
    count = min(max(1, round(config.holdout * len(good))), len(good) - 1)
    held = set(np.random.default_rng([config.seed, 1]).choice(len(good), count, replace=False).tolist())
    return [s for i, s in enumerate(good) if i not in held], [s for i, s in enumerate(good) if i in held], ignored


def decision_threshold(scorer: ReconstructionScorer, parts: dict[str, list[Sample]], test_metrics: dict | None = None) -> dict:
    """The module docstring's rule: best F1 on a validation split with defects, else a quantile of good images."""
    from ..evaluate.metrics import best_f1_threshold

    config = scorer.config
    validation = parts.get("validation") or []
    if any(s.is_defective for s in validation):
        scores = scorer.raw_scores(validation)
        return {"value": best_f1_threshold([s.is_defective for s in validation], scores)["threshold"], "source": "validation (best F1)", "images": len(validation)}
    train_good, held_out, _ = split_training(parts, config)
    images, where = (held_out, "held-out training good images") if held_out else (train_good, "training good images (none held out)")
    if not images:
        raise DataError(f"dataset {config.dataset}: no good training image to set the decision threshold with")
    q = config.threshold_quantile
    value = float(np.quantile(scorer.raw_scores(images), q))
    return {"value": value, "source": f"quantile {q:g} of {len(images)} {where}", "quantile": q, "images": len(images)}


def _save_checkpoint(path: Path, unet, optimizer, state: dict) -> None:
    """Weights and Adam's moments in one atomically written file, so they always match."""
    tensors = {f"model.{k}": v for k, v in unet.state_dict().items()}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            tensors[f"optimizer.{index}.{name}"] = value
    runs.save_weights(path, tensors, {"state": json.dumps(state)})


def _load_checkpoint(path: Path, unet, optimizer) -> dict:
    import torch
    from safetensors.torch import load_file

    state = json.loads(runs.read_metadata(path).get("state", "{}"))
    if "epoch" not in state:
        raise DataError(f"{path}: holds no training state; cannot resume")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise DataError(f"cannot read checkpoint {path}: {exc}") from None
    model_part = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    expected = unet.state_dict()
    if set(model_part) != set(expected) or any(model_part[k].shape != v.shape for k, v in expected.items()):
        raise DataError(f"checkpoint {path} does not match the run's U-Net config")
    unet.load_state_dict(model_part)
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    saved = optimizer.state_dict()
    saved["state"] = optim_state
    optimizer.load_state_dict(saved)
    return state


def build_unet(config, recon: Reconstruction):
    from ..models import create_model

    return create_model("unet", config.preset, in_channels=config.channels, **{**config.model_overrides, **recon.unet_overrides()})


def write_threshold(out: Path, scorer: ReconstructionScorer, parts: dict) -> dict:
    threshold = decision_threshold(scorer, parts)
    runs.write_json(out / THRESHOLD_FILE, threshold)
    return threshold


def fit(
    config,
    out: str | Path,
    method_cls: type[Reconstruction],
    resume: bool = False,
    on_step: Callable[[int, int, int, dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train into run folder ``out`` on good images only; with ``resume`` continue after its last finished epoch."""
    import torch
    import torch.nn.functional as F

    from . import accel
    from .reconstruction import msgms_loss, ssim_loss

    out = Path(out)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{config.method.upper()} trains in one process; data-parallel training (torchrun) is for the supervised network")
    saved = None
    if resume:
        runs.require_run(out, runs.CHECKPOINT)
        config, saved = read_run_config(out, type(config))
    elif (out / runs.CONFIG).exists():
        raise ConfigError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")

    # fp32 on every device: the anomaly map is a fine difference between input and
    # reconstruction, which bf16's 8-bit mantissa would bury (accel.py for the GPU settings)
    acc = accel.resolve(config.device, "fp32")
    device = acc.device
    parts = read_parts(config)
    train, held_out, ignored = split_training(parts, config)
    name = config.method.upper()
    if ignored:
        log(f"ignoring {ignored} defective training image(s): {name} trains on good images only")
    if not train:
        raise DataError(f"dataset {config.dataset}: the training split has no good image to train {name} on")
    if held_out:
        log(f"holding out {len(held_out)} of {len(train) + len(held_out)} good training images to set the decision threshold")

    recon = method_cls(config, device)
    torch.manual_seed(config.seed)
    unet = acc.prepare(build_unet(config, recon))
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
    extra = recon.setup(out, saved)
    if resume:
        state = _load_checkpoint(out / runs.CHECKPOINT, unet, optimizer)
        if state["epoch"] + 1 >= config.epochs and (out / runs.MODEL).is_file():
            log(f"{out}: training already finished ({config.epochs} epochs)")
            if not (out / THRESHOLD_FILE).is_file():
                write_threshold(out, ReconstructionScorer(recon, unet, config, device), parts)
            return out
    else:
        state = {"epoch": -1}
        runs.write_yaml(out / runs.CONFIG, {"method": config.method, "train": config.to_dict(), "model": {"name": "unet", "config": unet.config.to_dict()}, **extra})
        runs.write_csv(out / runs.TRAIN_LOG, LOG_FIELDS, [])

    pre = config.preprocessing()
    images = np.stack([pre.image(s) for s in train])
    recon.prepare_training(images)
    log_rows = [row for row in runs.read_csv(out / runs.TRAIN_LOG) if int(row["epoch"]) <= state["epoch"]]
    n = len(images)
    for epoch in range(state["epoch"] + 1, config.epochs):
        started = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(n)
        totals = dict.fromkeys(("loss", "loss_l2", "loss_msgms", "loss_ssim"), 0.0)
        unet.train()
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            x = acc.tensor(images[idx])
            rec = recon.train_reconstruction(unet, x, idx, rng)
            losses = {"loss_l2": F.mse_loss(rec, x), "loss_msgms": msgms_loss(rec, x), "loss_ssim": ssim_loss(rec, x)}
            loss = losses["loss_l2"] + losses["loss_msgms"] + losses["loss_ssim"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals["loss"] += loss.item() * len(idx)
            for key, value in losses.items():
                totals[key] += value.item() * len(idx)
            done = min(start + config.batch_size, n)
            if on_step:
                on_step(epoch, done, n, {k: v / done for k, v in totals.items()})
        log_rows.append({"epoch": epoch, **{k: v / n for k, v in totals.items()}, "seconds": round(time.perf_counter() - started, 3)})
        state["epoch"] = epoch
        _save_checkpoint(out / runs.CHECKPOINT, unet, optimizer, state)
        runs.write_csv(out / runs.TRAIN_LOG, LOG_FIELDS, ([row[k] for k in LOG_FIELDS] for row in log_rows))
        if not math.isfinite(totals["loss"]):
            raise DataError(f"training diverged at epoch {epoch} (loss is {totals['loss']}); lower the learning rate")
    runs.save_weights(out / runs.MODEL, unet.state_dict())
    threshold = write_threshold(out, ReconstructionScorer(recon, unet, config, device), parts)
    log(f"decision threshold {threshold['value']:.5g} from {threshold['source']}")
    return out


def load_scorer(run_dir: str | Path, config_cls: type, method_cls: type[Reconstruction], device: str = "cpu", weights: str = runs.MODEL) -> ReconstructionScorer:
    from ..models.registry import model_from_config
    from .segdec import resolve_device

    run_dir = runs.require_run(Path(run_dir), weights)
    config, saved = read_run_config(run_dir, config_cls)
    dev = resolve_device(device)
    unet = model_from_config("unet", saved["model"]["config"])
    runs.load_weights(unet, run_dir / weights)
    recon = method_cls(config, dev)
    recon.setup(run_dir, saved)
    return ReconstructionScorer(recon, unet.to(dev), config, dev)


def run_threshold(run_dir: Path) -> float:
    """Reached only without threshold.json (the registry reads it first for every method)."""
    raise DataError(f"{Path(run_dir) / THRESHOLD_FILE}: missing (the run has not finished training); finish it with defectkit train --resume")
