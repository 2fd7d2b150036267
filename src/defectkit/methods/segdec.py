"""The supervised two-stage network trained end-to-end (Božič, Tabernik, Skočaj 2020/2021).

Training follows the papers' reference code exactly where it matters: per-image losses with
the gradients summed over a batch and one plain SGD step per batch, the segmentation loss
only for pixel-labelled images, dynamic balancing ``(1 - n/N) L_seg + delta (n/N) L_cls``,
gradient-flow adjustment, distance-transform weights and frequency-of-use sampling.
The images of a batch go through the network as one tensor; since the loss is a sum of
per-image losses, that gives the same gradient as the reference's loop over images.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from ..config import Float, Int, option
from ..data.preprocess import Preprocessing
from ..data.sample import Sample
from ..errors import ConfigError
from . import accel
from .base import Method, MethodConfig


class PlainSGD:
    """The papers' optimiser, SGD without momentum or weight decay: ``p -= lr * grad``, the
    arithmetic of ``torch.optim.SGD`` at those settings (bit for bit on the CPU, tested), without
    the 2 s the first ``torch.optim`` optimiser of a process spends importing ``torch._dynamo``
    (1% of the demo). It has no state, so its checkpoints are those ``torch.optim.SGD`` wrote."""

    def __init__(self, params, lr: float):
        self.params = list(params)
        self.lr = float(lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self) -> None:
        import torch

        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"state": {}, "param_groups": [{"lr": self.lr, "momentum": 0, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if saved.get("state"):
            raise ConfigError(f"plain SGD keeps no state, got state for {len(saved['state'])} parameter(s)")


class SegDecTrainConfig(MethodConfig):
    """Training options of the two-stage network; the defaults are the KolektorSDD paper settings."""

    label: ClassVar[str] = "training"

    method: Literal["segdec"] = option("segdec", "The method.", cli=False)
    preset: str = option("paper", "Network preset: paper (the published net), small, tiny.")
    dilate: Int = option(7, "Mask dilation kernel size (0 or 1: none).")
    weighted_segmentation: bool = option(True, "Distance-transform weights on defect pixels in the segmentation loss (extension 3).")
    weight_p: Float = option(2.0, "Exponent p of the distance-transform weights.")
    weight_max: Float = option(1.0, "MAX of the distance-transform weights.")
    delta: Float = option(0.01, "Weight of the classification loss.")
    learning_rate: Float = option(1.0, "SGD learning rate.", cli=("--lr",))
    dynamic_balancing: bool = option(True, "Shift the loss from segmentation to classification over the epochs (extension 1).")
    gradient_adjustment: bool = option(True, "Keep the classification loss's gradient out of the segmentation net (extension 2).")
    frequency_sampling: bool = option(True, "Draw defect-free images by frequency of use (extension 4); else uniformly.")
    precision: str = option("auto", "auto (bf16 autocast on a CUDA GPU that has it, else fp32), fp32, or bf16 (GPU only).")
    empty_masks: Literal["image-label", "pixel"] = option(
        "image-label", "Defective training images whose mask is all zeros: image-label (trained on their label only) or pixel (an empty segmentation target, as the mask says).")

    def check(self) -> None:
        super().check()
        if self.precision not in accel.PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(accel.PRECISIONS)}, got {self.precision!r}")
        if self.dilate < 0 or self.delta < 0 or not self.weight_max > 0 or not self.weight_p > 0:
            raise ValueError("dilate and delta must be 0 or more, weight_p and weight_max positive")

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            input_size=self.input_size,
            channels=self.channels,
            dilate=self.dilate,
            weighted_segmentation=self.weighted_segmentation,
            weight_p=self.weight_p,
            weight_max=self.weight_max,
            resize=self.resize,
        )


# The per-dataset settings of the Computers in Industry 2021 scripts (METHODS.md, section 1).
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "dagm": dict(dataset="dagm", input_size=(512, 512), channels=1, dilate=7, epochs=70, learning_rate=0.05, delta=1.0, batch_size=1, weight_p=1.0, weight_max=10.0),
    "ksdd": dict(dataset="ksdd", input_size=(512, 1408), channels=1, dilate=7, epochs=50, learning_rate=1.0, delta=0.01, batch_size=1, weight_p=2.0, weight_max=1.0),
    "ksdd2": dict(dataset="ksdd2", input_size=(232, 640), channels=3, dilate=15, epochs=50, learning_rate=0.01, delta=1.0, batch_size=1, weight_p=2.0, weight_max=3.0),
    "severstal": dict(dataset="severstal", input_size=(1600, 256), channels=1, dilate=1, epochs=90, learning_rate=0.1, delta=0.1, batch_size=10, weight_p=2.0, weight_max=1.0),
    # Ours, for a user's own data (and any dataset without published settings): the small
    # network, 20 epochs; what the demo used before it had many images.
    "custom": dict(preset="small", input_size=(128, 128), channels=1, dilate=3, epochs=20, learning_rate=0.05, delta=1.0, batch_size=4, weight_p=2.0, weight_max=3.0, validate_every=0),
    # Ours: the tiny network on the built-in synthetic data, trained in minutes on a CPU. Many
    # images, few epochs: on 160 images the small net memorised them (test AP 0.81); on 640
    # the tiny one (3.5x cheaper per step) reaches AP 0.97-0.98 (docs/benchmarks.md, the demo).
    "demo": dict(dataset="synthetic", preset="tiny", input_size=(128, 128), channels=1, dilate=3, epochs=12, learning_rate=0.2, delta=1.0, batch_size=4, weight_p=2.0, weight_max=3.0, validate_every=0),
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


def named_values(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The values of named settings ``name`` for a run given options ``given``: a weak split
    (N = 0, e.g. ``--split 33_0``) takes the reference's weakly supervised settings, a
    Severstal split its number of epochs."""
    if name not in PAPER_SETTINGS:
        raise ConfigError(f"unknown config '{name}'; available: {', '.join(PAPER_SETTINGS)}")
    settings = dict(PAPER_SETTINGS[name])
    if is_weak_split(given.get("split")):
        settings.update(WEAK_SETTINGS.get(name, {}))
    if name == "severstal" and given.get("split") and "epochs" not in given:
        positives = int(str(given["split"]).split("_")[0])
        settings["epochs"] = SEVERSTAL_EPOCHS.get(positives, settings["epochs"])
    return settings


def paper_config(name: str, **overrides: Any) -> "SegDecTrainConfig":
    """A named configuration (``ksdd``, ``dagm``, ``ksdd2``, ``severstal``, ``custom``, ``demo``) with overrides."""
    return SegDec.make_config({k: v for k, v in overrides.items() if v is not None}, name)


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


class SegDec(Method):
    """Raw score = the decision logit; heatmap = the segmentation probability at 1/8 of the input."""

    def training_samples(self, parts, log):
        """A defective image whose mask marks no pixel is an annotation left blank far more often
        than a defect with no extent: as a pixel target it would teach the segmentation net that
        the defect is background. It trains on its image label, unless ``empty_masks`` is pixel."""
        import dataclasses

        from ..data.imageio import empty_mask_samples

        samples = super().training_samples(parts, log)
        empty = set(empty_mask_samples(samples))
        if empty:
            first = samples[min(empty)]
            where = first.mask_path or first.name
            if self.config.empty_masks == "image-label":
                log(f"warning: {len(empty)} defective training image(s) have an all-zero mask (first: {where}); training them on their image label only "
                    "(--empty-masks pixel uses the empty masks as targets)")
                samples = [dataclasses.replace(s, pixel_labelled=False) if i in empty else s for i, s in enumerate(samples)]
            else:
                log(f"warning: {len(empty)} defective training image(s) have an all-zero mask (first: {where}); using them as empty targets (--empty-masks pixel)")
        return samples

    name = "segdec"
    summary = "supervised two-stage segmentation + decision network (Božič et al.)"
    Config = SegDecTrainConfig
    model_name = "segdec"
    needs_defects = True
    raw_is_logit = True
    score_text = "defect probability (the sigmoid of the decision logit)"
    heatmap_text = "defect probability per pixel"
    distributed = True
    log_fields = ("loss", "loss_seg", "loss_cls", "weight_seg", "weight_cls", "train_accuracy")
    named_settings = PAPER_SETTINGS
    named_settings_default = " (default: the dataset's own, else custom)"
    demo = {"config": "demo"}

    @classmethod
    def make_config(cls, values: dict[str, Any], named: str | None = None, source: dict[str, str] | None = None) -> SegDecTrainConfig:
        """Named settings (default: the dataset's own, else ``custom``) under the given values."""
        if named is None:
            named = values.get("dataset") if values.get("dataset") in PAPER_SETTINGS else "custom"
        settings = named_values(named, values)
        origin = {k: f"named settings '{named}'" for k in settings}
        return cls.Config.from_dict({**settings, **values, "method": cls.name}, {**origin, **(source or {})})

    def accelerator(self, device: str, training: bool):
        # a run trained in bf16 on a GPU still scores on a CPU (in fp32); fp32 asked for stays fp32
        precision = self.config.precision if training else ("fp32" if self.config.precision == "fp32" else "auto")
        return accel.resolve(device, precision)

    def build_model(self):
        from ..models import create_model

        c = self.config
        # the model config records the size it was trained at (and checks the net accepts it)
        model = create_model("segdec", c.preset, in_channels=c.channels, **{"input_size": tuple(c.input_size), **c.model_overrides})
        model.gradient_adjustment = 0.0 if c.gradient_adjustment else 1.0
        return model

    def item_loader(self):
        return self.pre.load  # (image, soft mask, loss weights), the last two at 1/8

    def prepare_training(self, samples: list[Sample], log) -> None:
        from ..data.sampler import EpochSampler

        self.labels = np.array([s.is_defective for s in samples])
        self.seg_flags = np.array([s.pixel_labelled for s in samples], dtype=np.float32)
        self.sampler = EpochSampler(self.labels, seed=self.config.seed, frequency_of_use=self.config.frequency_sampling)
        self.dynamic = self.config.dynamic_balancing
        if self.dynamic and not any(s.pixel_labelled for s in samples if s.is_defective):
            log("weak supervision (no pixel-labelled defects): dynamic balancing switched off, as in the papers")
            self.dynamic = False

    def cache_priority(self) -> list[int]:
        return np.argsort(~self.labels, kind="stable").tolist()  # every epoch uses every positive

    def epoch_order(self, epoch: int, n: int) -> np.ndarray:
        return self.sampler.epoch(epoch)  # every positive and as many negatives

    def optimizer(self):
        return PlainSGD(self.model.parameters(), lr=self.config.learning_rate)

    def epoch_values(self, epoch: int) -> dict[str, float]:
        self.w_seg, self.w_cls = loss_weights(epoch, self.config.epochs, self.config.delta, self.dynamic)
        return {"weight_seg": self.w_seg, "weight_cls": self.w_cls}

    def training_step(self, indices, tensors, epoch):
        images, targets, weights = tensors
        y = self.acc.tensor(self.labels[indices].astype(np.float32))
        has_seg = self.acc.tensor(self.seg_flags[indices])
        with self.acc.autocast():
            logit, seg = self.net(images)
        # losses in fp32 whatever the forward's precision
        loss, seg_loss, cls_loss = batch_loss(logit.float(), seg.float(), targets, weights, y, has_seg, self.w_seg, self.w_cls)
        return loss, {"loss": loss.item(), "loss_seg": seg_loss.sum().item(), "loss_cls": cls_loss.sum().item(),
                      "correct": ((logit > 0).float() == y).sum().item()}

    def epoch_log(self, totals: dict[str, float], n: int) -> dict[str, float]:
        n = max(n, 1)
        return {"loss": totals.get("loss", 0.0) / n, "loss_seg": totals.get("loss_seg", 0.0) / n,
                "loss_cls": totals.get("loss_cls", 0.0) / n, "train_accuracy": totals.get("correct", 0.0) / n}

    def forward(self, x):
        import torch

        logit, seg = self.model(x)
        return logit, torch.sigmoid(seg)
