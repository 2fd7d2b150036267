"""The supervised two-stage network trained end-to-end (Božič, Tabernik, Skočaj 2020/2021).

Training follows the papers' reference code exactly where it matters: per-image losses with
the gradients summed over a batch and one plain SGD step per batch, the segmentation loss
only for pixel-labelled images, dynamic balancing ``(1 - n/N) L_seg + delta (n/N) L_cls``,
gradient-flow adjustment, distance-transform weights and frequency-of-use sampling.
The images of a batch go through the network as one tensor; since the loss is a sum of
per-image losses, that gives the same gradient as the reference's loop over images.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import runs
from ..data.preprocess import DOWNSAMPLE, Preprocessing
from ..data.sample import Sample
from ..errors import ConfigError, DataError
from . import accel
from .registry import Scorer


@dataclass
class TrainConfig:
    """Every field of a training run; saved in the run folder's config.yaml."""

    # data
    dataset: str = "synthetic"
    data_root: str | None = None
    split: str | None = None
    fold: int | None = None
    # model
    method: str = "segdec"
    preset: str = "paper"
    model_overrides: dict = field(default_factory=dict)
    # preprocessing
    input_size: tuple[int, int] = (512, 1408)  # (width, height)
    channels: int = 1
    dilate: int = 7
    weighted_segmentation: bool = True
    weight_p: float = 2.0
    weight_max: float = 1.0
    # optimisation
    epochs: int = 50
    learning_rate: float = 1.0
    delta: float = 0.01
    batch_size: int = 1
    dynamic_balancing: bool = True
    gradient_adjustment: bool = True
    frequency_sampling: bool = True
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"  # accel.py: bf16 autocast on a CUDA GPU that has it, else fp32
    validate_every: int = 5
    eval_batch_size: int = 4

    def __post_init__(self):
        self.input_size = tuple(int(v) for v in self.input_size)
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError("epochs and batch_size must be at least 1 and learning_rate positive")

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            input_size=self.input_size,
            channels=self.channels,
            dilate=self.dilate,
            weighted_segmentation=self.weighted_segmentation,
            weight_p=self.weight_p,
            weight_max=self.weight_max,
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**data)


# The per-dataset settings of the Computers in Industry 2021 scripts (METHODS.md, section 1).
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "dagm": dict(dataset="dagm", input_size=(512, 512), channels=1, dilate=7, epochs=70, learning_rate=0.05, delta=1.0, batch_size=1, weight_p=1.0, weight_max=10.0),
    "ksdd": dict(dataset="ksdd", input_size=(512, 1408), channels=1, dilate=7, epochs=50, learning_rate=1.0, delta=0.01, batch_size=1, weight_p=2.0, weight_max=1.0),
    "ksdd2": dict(dataset="ksdd2", input_size=(232, 640), channels=3, dilate=15, epochs=50, learning_rate=0.01, delta=1.0, batch_size=1, weight_p=2.0, weight_max=3.0),
    "severstal": dict(dataset="severstal", input_size=(1600, 256), channels=1, dilate=1, epochs=90, learning_rate=0.1, delta=0.1, batch_size=10, weight_p=2.0, weight_max=1.0),
    # Ours: a small network on the built-in synthetic data that trains in minutes on a CPU.
    "demo": dict(dataset="synthetic", preset="small", input_size=(128, 128), channels=1, dilate=3, epochs=20, learning_rate=0.05, delta=1.0, batch_size=4, weight_p=2.0, weight_max=3.0, validate_every=0),
}
SEVERSTAL_EPOCHS = {300: 90, 750: 80, 1500: 60, 3000: 40}  # by number of training positives
# Weakly supervised runs (split with N = 0 pixel-labelled positives): the reference scripts
# (EXPERIMENTS_COMIND.sh, the N_0 rows) switch dynamic balancing off everywhere and train
# KolektorSDD with lr 0.01 and delta 1 instead of lr 1 and delta 0.01.
WEAK_SETTINGS: dict[str, dict[str, Any]] = {
    "dagm": dict(dynamic_balancing=False),
    "ksdd": dict(dynamic_balancing=False, learning_rate=0.01, delta=1.0),
    "ksdd2": dict(dynamic_balancing=False),
    "severstal": dict(dynamic_balancing=False),
}


def is_weak_split(split: str | None) -> bool:
    """True for an official split key whose last number (N pixel-labelled positives) is 0."""
    try:
        return split is not None and int(str(split).split("_")[-1]) == 0
    except ValueError:
        return False


def paper_config(name: str, **overrides: Any) -> TrainConfig:
    """A named configuration (``ksdd``, ``dagm``, ``ksdd2``, ``severstal``, ``demo``) with overrides.

    A weak split (N = 0, e.g. ``--split 33_0``) gets the reference's weakly supervised settings."""
    if name not in PAPER_SETTINGS:
        raise ConfigError(f"unknown config '{name}'; available: {', '.join(PAPER_SETTINGS)}")
    settings = dict(PAPER_SETTINGS[name])
    if is_weak_split(overrides.get("split")):
        settings.update(WEAK_SETTINGS.get(name, {}))
    if name == "severstal" and overrides.get("split") and "epochs" not in overrides:
        positives = int(str(overrides["split"]).split("_")[0])
        settings["epochs"] = SEVERSTAL_EPOCHS.get(positives, settings["epochs"])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(settings)


def read_run_config(run_dir: Path) -> tuple[TrainConfig, dict]:
    """(training config, model section) of a run folder's config.yaml."""
    path = Path(run_dir) / runs.CONFIG
    saved = runs.read_yaml(path)
    if not isinstance(saved, dict) or "train" not in saved or "model" not in saved:
        raise DataError(f"{path}: not a defectkit run config (needs 'train' and 'model')")
    return TrainConfig.from_dict(saved["train"]), saved["model"]


def loss_weights(epoch: int, epochs: int, delta: float, dynamic: bool) -> tuple[float, float]:
    """(segmentation weight, classification weight) for 0-based ``epoch``."""
    if dynamic:
        return 1.0 - epoch / epochs, delta * epoch / epochs
    return 1.0, delta


def batch_loss(logit, seg, targets, weights, labels, has_seg, w_seg: float, w_cls: float):
    """(summed loss, per-image segmentation losses, per-image classification losses).

    Segmentation: mean over pixels of weight x BCE, only for pixel-labelled images.
    The batch loss is the sum of per-image losses, so its gradient is the sum of the
    per-image gradients: the reference's one SGD step per batch."""
    import torch.nn.functional as F

    seg_per_image = (F.binary_cross_entropy_with_logits(seg[:, 0], targets, reduction="none") * weights).mean(dim=(1, 2)) * has_seg
    cls_per_image = F.binary_cross_entropy_with_logits(logit, labels, reduction="none")
    return (w_seg * seg_per_image + w_cls * cls_per_image).sum(), seg_per_image, cls_per_image


def split_samples(samples: list[Sample], seed: int) -> dict[str, list[Sample]]:
    """Samples by split; data without split folders gets a seeded, stratified 70/30 train/test split."""
    parts: dict[str, list[Sample]] = {}
    for s in samples:
        parts.setdefault(s.split, []).append(s)
    if set(parts) == {"all"}:
        rng = np.random.default_rng(seed)
        parts = {"train": [], "test": []}
        for defective in (False, True):
            group = [s for s in samples if s.is_defective == defective]
            order = rng.permutation(len(group))
            cut = int(round(0.7 * len(group)))
            parts["train"] += [dataclasses.replace(group[i], split="train") for i in order[:cut]]
            parts["test"] += [dataclasses.replace(group[i], split="test") for i in order[cut:]]
    return parts


def read_parts(config, data_root=None) -> dict[str, list[Sample]]:
    """A training config's dataset by split, as every method trains and evaluates on it."""
    from ..data.datasets import read_dataset

    root = data_root if data_root is not None else config.data_root
    return split_samples(read_dataset(config.dataset, root, config.split, config.fold), config.seed)


class SampleCache:
    """Preprocessed images and targets, computed once (training visits them every epoch)."""

    def __init__(self, samples: list[Sample], pre: Preprocessing):
        self.samples, self.pre = samples, pre
        self._items: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def batch(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(indices) == 0:  # a distributed rank's empty share of a short last batch
            width, height = self.pre.input_size
            small = (0, height // DOWNSAMPLE, width // DOWNSAMPLE)
            return np.zeros((0, self.pre.channels, height, width), np.float32), np.zeros(small, np.float32), np.zeros(small, np.float32)
        for i in indices:
            if i not in self._items:
                self._items[i] = self.pre.load(self.samples[i])
        items = [self._items[i] for i in indices]
        return tuple(np.stack([item[k] for item in items]) for k in range(3))


def resolve_device(name: str):
    return accel.resolve(name, "fp32").device


def build_model(config: TrainConfig):
    from ..models import create_model

    # the model config records the size it was trained at (and checks the net accepts it)
    return create_model(config.method, config.preset, in_channels=config.channels, **{"input_size": tuple(config.input_size), **config.model_overrides})


def score_samples(model, samples: list[Sample], pre: Preprocessing, acc: accel.Accelerator, batch_size: int = 4) -> np.ndarray:
    """Image logits (float64).

    Logits, not probabilities: a confident network's sigmoid rounds to exactly 1.0 even in
    float64, which would tie images the network ranks apart. The ranking, and so AP and
    AUROC, is the same as that of the exact probabilities."""
    import torch

    model.eval()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            x = acc.tensor(np.stack([pre.image(s) for s in samples[start : start + batch_size]]))
            with acc.autocast():
                logit = model(x)[0]
            logits.append(logit.double().cpu().numpy())
    return np.concatenate(logits) if logits else np.empty(0, np.float64)


LOG_FIELDS = ["epoch", "loss", "loss_seg", "loss_cls", "weight_seg", "weight_cls", "train_accuracy", "val_ap", "seconds"]


def fit(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    on_step: Callable[[int, int, int, dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train into run folder ``out``; with ``resume`` continue after its last finished epoch.

    Under ``torchrun`` the processes train one model data-parallel (``distributed.py``);
    rank 0 writes the run folder and logs."""
    import torch

    from ..data.sampler import EpochSampler
    from ..evaluate.metrics import average_precision
    from . import distributed

    out = Path(out)
    ctx = distributed.context(config.device)
    if not ctx.main:
        on_step, log = None, (lambda _message: None)
    if resume:
        runs.require_run(out, runs.CHECKPOINT)
        config, _ = read_run_config(out)
        # the state travels inside the checkpoint, so weights and epoch can never disagree
        state = json.loads(runs.read_metadata(out / runs.CHECKPOINT).get("state", "{}"))
        if "epoch" not in state:
            raise DataError(f"{out / runs.CHECKPOINT}: holds no training state; cannot resume")
        if state["epoch"] + 1 >= config.epochs and (out / runs.MODEL).is_file():
            log(f"{out}: training already finished ({config.epochs} epochs)")
            return out
    else:
        if (out / runs.CONFIG).exists():
            raise ConfigError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
        state = {"epoch": -1, "best_val_ap": None, "best_epoch": None}
    distributed.barrier(ctx)  # every rank has checked the folder before rank 0 writes to it

    acc = accel.resolve(distributed.device(ctx, resolve_device(config.device)), config.precision)
    device = acc.device
    parts = read_parts(config)
    train = parts.get("train", [])
    validation = parts.get("validation", [])
    positives = [s for s in train if s.is_defective]
    if not train:
        raise DataError(f"dataset {config.dataset}: the training split is empty")
    if not positives:
        raise DataError(f"dataset {config.dataset}: the training split has no defective image; the supervised network needs some (use an unsupervised method instead)")
    dynamic = config.dynamic_balancing
    if dynamic and not any(s.pixel_labelled for s in positives):
        log("weak supervision (no pixel-labelled defects): dynamic balancing switched off, as in the papers")
        dynamic = False

    torch.manual_seed(config.seed)
    model = acc.prepare(build_model(config))
    if resume:
        runs.load_weights(model, out / runs.CHECKPOINT)
    elif ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        runs.write_yaml(out / runs.CONFIG, {"method": config.method, "train": config.to_dict(), "model": {"name": config.method, "config": model.config.to_dict()}})
        runs.write_csv(out / runs.TRAIN_LOG, LOG_FIELDS, [])
    distributed.barrier(ctx)
    model.gradient_adjustment = 0.0 if config.gradient_adjustment else 1.0
    net = distributed.wrap(model, ctx, device)  # what trains; ``model`` stays the plain network
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    pre = config.preprocessing()
    cache = SampleCache(train, pre)
    labels = np.array([s.is_defective for s in train])
    seg_flags = np.array([s.pixel_labelled for s in train], dtype=np.float32)
    sampler = EpochSampler(labels, seed=config.seed, frequency_of_use=config.frequency_sampling)
    log_rows = [row for row in runs.read_csv(out / runs.TRAIN_LOG) if int(row["epoch"]) <= state["epoch"]] if ctx.main else []

    for epoch in range(state["epoch"] + 1, config.epochs):
        started = time.perf_counter()
        w_seg, w_cls = loss_weights(epoch, config.epochs, config.delta, dynamic)
        order = sampler.epoch(epoch)
        totals = {"loss": 0.0, "loss_seg": 0.0, "loss_cls": 0.0, "correct": 0}
        model.train()

        def batches(order=order):
            for start in range(0, len(order), config.batch_size):
                idx = ctx.shard(order[start : start + config.batch_size])  # all of it in one process
                arrays = (*cache.batch(idx), labels[idx].astype(np.float32), seg_flags[idx])
                yield start, tuple(acc.tensor(a) for a in arrays)

        # on a GPU the next batch is stacked and copied while this one computes
        for start, (images, targets, weights, y, has_seg) in accel.prefetch(batches(), enabled=acc.cuda):
            with acc.autocast():
                logit, seg = net(images)
            # losses in fp32 whatever the forward's precision
            loss, seg_per_image, cls_per_image = batch_loss(logit.float(), seg.float(), targets, weights, y, has_seg, w_seg, w_cls)
            optimizer.zero_grad(set_to_none=True)
            (loss * ctx.world).backward()  # DDP averages over ranks; the batch loss is a sum
            optimizer.step()
            totals["loss"] += loss.item()
            totals["loss_seg"] += seg_per_image.sum().item()
            totals["loss_cls"] += cls_per_image.sum().item()
            totals["correct"] += int(((logit > 0).float() == y).sum().item())
            if on_step:
                n, done = len(order), min(start + config.batch_size, len(order))
                # under torchrun rank 0 sees only its share of the losses: progress without them
                on_step(epoch, done, n, {} if ctx.active else {k: v / done for k, v in totals.items() if k != "correct"})
        n = len(order)
        if ctx.active:
            totals = dict(zip(totals, distributed.sum_values(ctx, list(totals.values()), device)))
        val_ap = None
        if validation and config.validate_every and ((epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs):
            logits = distributed.gather_shards(ctx, score_samples(model, ctx.shard(validation), pre, acc, config.eval_batch_size), len(validation))
            val_ap = average_precision([s.is_defective for s in validation], logits)
            if state["best_val_ap"] is None or val_ap > state["best_val_ap"]:
                state.update(best_val_ap=float(val_ap), best_epoch=epoch)
                if ctx.main:
                    runs.save_weights(out / runs.BEST, model.state_dict())
        log_rows.append({
            "epoch": epoch, "loss": totals["loss"] / n, "loss_seg": totals["loss_seg"] / n, "loss_cls": totals["loss_cls"] / n,
            "weight_seg": w_seg, "weight_cls": w_cls, "train_accuracy": totals["correct"] / n,
            "val_ap": "" if val_ap is None else val_ap, "seconds": round(time.perf_counter() - started, 3),
        })
        state["epoch"] = epoch
        if ctx.main:
            runs.save_weights(out / runs.CHECKPOINT, model.state_dict(), {"state": json.dumps(state)})
            runs.write_csv(out / runs.TRAIN_LOG, LOG_FIELDS, ([row[k] for k in LOG_FIELDS] for row in log_rows))
        if not math.isfinite(totals["loss"]):
            raise DataError(f"training diverged at epoch {epoch} (loss is {totals['loss']}); lower the learning rate")
    if ctx.main:
        runs.save_weights(out / runs.MODEL, model.state_dict())
    distributed.barrier(ctx)  # the run folder is complete before any rank returns
    return out


# ---- the method registry's interface (methods/registry.py) ----

CONFIG_CLASS = TrainConfig


class SegDecScorer(Scorer):
    """Raw score = the decision logit; map = the segmentation probability at 1/8 of the input."""

    method = "segdec"
    raw_is_logit = True

    def __init__(self, model, config: TrainConfig, acc: accel.Accelerator):
        super().__init__(config, acc.device)
        self.model, self.acc = model, acc

    def score_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode(), self.acc.autocast():
            logit, seg = self.model(self.acc.tensor(images))
        return logit.double().cpu().numpy(), torch.sigmoid(seg[:, 0].float()).cpu().numpy()


SCORER = SegDecScorer


def load_scorer(run_dir: str | Path, device: str = "cpu", weights: str = runs.MODEL) -> SegDecScorer:
    from ..models.registry import model_from_config

    run_dir = runs.require_run(Path(run_dir), weights)
    config, model_section = read_run_config(run_dir)
    model = model_from_config(model_section["name"], model_section["config"])
    runs.load_weights(model, run_dir / weights)
    # a run trained in bf16 on a GPU still scores on a CPU (in fp32); fp32 asked for stays fp32
    acc = accel.resolve(device, "fp32" if config.precision == "fp32" else "auto")
    return SegDecScorer(acc.prepare(model).eval(), config, acc)


def decision_threshold(scorer: SegDecScorer, parts: dict[str, list[Sample]], test_metrics: dict) -> dict:
    """Best-F1 logit on the validation split when it has defects, else on the test split."""
    from ..evaluate.metrics import best_f1_threshold

    validation = parts.get("validation")
    if validation and any(s.is_defective for s in validation):
        logits = scorer.raw_scores(validation)
        return {"value": best_f1_threshold([s.is_defective for s in validation], logits)["threshold"], "source": "validation (best F1)"}
    return {"value": test_metrics["threshold"], "source": "test (best F1; no validation split with defects)"}


def run_threshold(run_dir: Path) -> float:
    """The evaluated decision logit (metrics.json), or 0 (probability 0.5) before evaluation."""
    path = Path(run_dir) / runs.METRICS
    return runs.read_json(path).get("decision_threshold_logit", 0.0) if path.is_file() else 0.0
