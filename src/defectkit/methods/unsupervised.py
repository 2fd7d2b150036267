"""What EAR and RIAD share: config, training on good images only, scoring, the decision threshold.

Both reconstruct an image from a partly hidden copy with a U-Net trained by ``L2 + MSGMS +
SSIM`` (METHODS.md sections 2-3) and flag what they cannot reconstruct. They differ only in
how the input is hidden and the reconstruction assembled (``hidden_reconstruction``,
``anomaly_map`` in ``ear.py``, ``riad.py``); everything else is written once here.

* **Data.** Only the good images of the training split are used; defective training images
  are ignored (one log line says how many). When there is no validation split with defects,
  a seeded ``holdout`` share of the good training images (default 10%, at least one image
  when there are two or more) is kept out of training to set the decision threshold.
* **Training.** Adam (learning rate 1e-4, weight decay 1e-5, batch 4, 300 epochs: the public
  RIAD re-implementation's settings). Each epoch's order and random masks come from a
  generator seeded by ``(seed, epoch)``.
* **Score.** The method's anomaly map at the input size, smoothed by a mean filter; the image
  score is its maximum. The filter is 21 x 21 at the papers' 256-pixel images and scales with
  the shorter input side: ``round(21 * side / 256)``, made odd, at least 1 (``mean_filter``
  sets it directly).
* **Threshold.** Best F1 on the validation split when it has good and defective images;
  otherwise the ``threshold_quantile`` (default 0.99, linear interpolation) of the good
  calibration images' scores: the held-out good images, or the training good images
  themselves when ``holdout`` is 0 (their scores run low, since the net has learned them).
  Fixed at the end of training in ``threshold.json``; ``metrics.json`` repeats it.
  The hold-out and this rule are :class:`HeldOutCalibration`, which PatchCore uses too.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..config import Float, Int, Size, option
from ..data.sample import Sample
from ..errors import DataError
from .base import Method, MethodConfig

PAPER_SIDE, PAPER_FILTER = 256, 21


class ReconstructionConfig(MethodConfig):
    """Options EAR and RIAD share; saved in the run folder's config.yaml."""

    input_size: Size = option((256, 256), "Network input size, WIDTHxHEIGHT, both multiples of 8.", metavar="WxH")
    preset: str = option("paper", "U-Net preset: paper, small, tiny.")
    epochs: Int = option(300, "Training epochs (--resume may raise it).", resumable=True)
    batch_size: Int = option(4, "Images per optimiser step.")
    learning_rate: Float = option(1e-4, "Adam learning rate.", cli=("--lr",))
    weight_decay: Float = option(1e-5, "Adam weight decay.")
    eval_batch_size: Int = option(8, "Images scored at once in validation and evaluation.", resumable=True)
    mean_filter: Int = option(0, "Anomaly-map mean filter size (0: 21 at a 256-pixel shorter side, scaled with it).")
    threshold_quantile: Float = option(0.99, "Decision threshold = this quantile of good images' scores when no validation split has defects.")
    holdout: Float = option(0.1, "Share of good training images held out to set that threshold (0: use the training images).")

    def check(self) -> None:
        super().check()
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if self.mean_filter < 0:
            raise ValueError(f"mean_filter must be 0 (automatic) or a positive size, got {self.mean_filter}")
        if not 0 < self.threshold_quantile <= 1:
            raise ValueError(f"threshold_quantile must lie in (0, 1], got {self.threshold_quantile}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be a share in [0, 1), got {self.holdout}")

    @property
    def filter_size(self) -> int:
        """Mean-filter size in use: ``mean_filter``, or 21 scaled from a 256-pixel shorter side."""
        if self.mean_filter:
            return self.mean_filter
        size = max(1, round(PAPER_FILTER * min(self.input_size) / PAPER_SIDE))
        return size if size % 2 else size + 1


class HeldOutCalibration:
    """Good-only training with a seeded share of the good training images held out, and the
    decision threshold as a quantile of their scores (a mixin of :class:`Method`; the config
    needs ``holdout``, ``threshold_quantile`` and ``seed``). Written once for every method
    trained on good images only."""

    def split_training(self, parts: dict[str, list[Sample]]) -> tuple[list[Sample], list[Sample]]:
        """(good images to train on, held-out good images for the threshold)."""
        good = [s for s in parts.get("train", []) if not s.is_defective]
        labels = [s.is_defective for s in parts.get("validation") or []]
        if (any(labels) and not all(labels)) or self.config.holdout == 0 or len(good) < 2:  # the validation split sets it
            return good, []
        count = min(max(1, round(self.config.holdout * len(good))), len(good) - 1)
        held = set(np.random.default_rng([self.config.seed, 1]).choice(len(good), count, replace=False).tolist())
        return [s for i, s in enumerate(good) if i not in held], [s for i, s in enumerate(good) if i in held]

    def training_samples(self, parts, log):
        super().training_samples(parts, log)  # the checks and the line about defective images
        train, held_out = self.split_training(parts)
        if held_out:
            log(f"holding out {len(held_out)} of {len(train) + len(held_out)} good training images to set the decision threshold")
        return train

    def calibration_threshold(self, parts):
        """The ``threshold_quantile`` of the held-out (else the training) good images' scores."""
        train_good, held_out = self.split_training(parts)
        images, where = (held_out, "held-out training good images") if held_out else (train_good, "training good images (none held out)")
        if not images:
            raise DataError(f"dataset {self.config.dataset}: no good training image to set the decision threshold with")
        q = self.config.threshold_quantile
        value = float(np.quantile(self.raw_scores(images), q))
        return {"value": value, "source": f"quantile {q:g} of {len(images)} {where}", "quantile": q, "images": len(images)}


class Reconstruction(HeldOutCalibration, Method):
    """Raw score = max of the smoothed anomaly map; heatmap = that map at the input size."""

    model_name = "unet"
    score_text = "anomaly score (the maximum of the smoothed anomaly map)"
    heatmap_text = "anomaly map (smoothed gradient-magnitude difference to the reconstruction)"
    log_fields: ClassVar[tuple[str, ...]] = ("loss", "loss_l2", "loss_msgms", "loss_ssim")

    def unet_overrides(self) -> dict:
        """U-Net config fields the method fixes (its inference skips)."""
        return {}

    def build_model(self):
        from ..models import create_model

        c = self.config
        return create_model("unet", c.preset, in_channels=c.channels, **{**c.model_overrides, **self.unet_overrides()})

    def hidden_reconstruction(self, x):
        """The training reconstruction of batch ``x`` (hidden parts recovered); uses ``self.epoch_rng``."""
        raise NotImplementedError

    def anomaly_map(self, x):
        """Unsmoothed anomaly map ``N x 1 x H x W`` of images ``x`` (U-Net in eval mode)."""
        raise NotImplementedError

    # training

    def optimizer(self):
        import torch

        return torch.optim.Adam(self.model.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

    def training_step(self, indices, tensors, epoch):
        import torch.nn.functional as F

        from .reconstruction import msgms_loss, ssim_loss

        (x,) = tensors
        rec = self.hidden_reconstruction(x)
        losses = {"loss_l2": F.mse_loss(rec, x), "loss_msgms": msgms_loss(rec, x), "loss_ssim": ssim_loss(rec, x)}
        loss = losses["loss_l2"] + losses["loss_msgms"] + losses["loss_ssim"]
        n = len(indices)
        return loss, {"loss": loss.item() * n, **{k: v.item() * n for k, v in losses.items()}}

    # scoring

    def forward(self, x):
        from .reconstruction import mean_filter

        maps = mean_filter(self.anomaly_map(x), self.config.filter_size)
        return maps.flatten(1).amax(1), maps
