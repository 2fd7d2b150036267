"""RIAD (Zavrtanik, Kristan, Skočaj 2021): reconstruction by inpainting with random multi-masks.

The image is tiled into k x k-pixel cells, the cells dealt at random into ``n_masks`` = 3
disjoint masks, and each mask's cells are inpainted by one U-Net pass over the image with
those cells hidden; the reconstruction takes every pixel from the pass that hid it. Training
draws k from ``ks`` = {2, 4, 8, 16} per batch (cells in input pixels, as in the paper's
256-pixel images). Scoring runs every k (12 passes per image) and sums the MSGMS maps
between image and reconstruction before the shared mean filter; image score = max.

The test masks are drawn once per k from a generator seeded by ``(seed, k)`` and used for
every image, so an image's score does not depend on the batch it is in or on earlier calls.
All skip connections stay on at inference (the hidden cells are what keeps detail out).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ..config import Int, IntList, option
from .unsupervised import Reconstruction, ReconstructionConfig


class RiadConfig(ReconstructionConfig):
    method: Literal["riad"] = option("riad", "The method.", cli=False)
    ks: IntList = option((2, 4, 8, 16), "Cell sizes k of the masks, in input pixels.", metavar="N,N,...")
    n_masks: Int = option(3, "Disjoint masks per cell size (one U-Net pass each).")

    def check(self) -> None:
        super().check()
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be a non-empty list of positive cell sizes, got {list(self.ks)}")
        if self.n_masks < 1:
            raise ValueError(f"n_masks must be at least 1, got {self.n_masks}")


def inpaint(unet, x, masks):
    """``sum_i M_i * f(x * (1 - M_i))`` for disjoint masks ``n x H x W`` (True = hidden): one batched pass."""
    n, (c, h, w) = masks.shape[0], x.shape[1:]
    hidden = masks.to(dtype=x.dtype, device=x.device).view(1, n, 1, h, w)
    out = unet((x.unsqueeze(1) * (1 - hidden)).reshape(-1, c, h, w)).view(-1, n, c, h, w)
    return (out * hidden).sum(1)


class Riad(Reconstruction):
    name = "riad"
    summary = "Reconstruction by inpainting with random multi-masks, good images only (Zavrtanik et al.)"
    Config = RiadConfig

    def unet_overrides(self) -> dict:
        from ..models import model_config

        widths = self.config.model_overrides.get("widths") or model_config("unet", self.config.preset).widths
        return {"inference_skips": (True,) * (len(widths) - 1)}

    def setup(self, run_dir: Path, saved: dict | None) -> dict:
        """The test masks: drawn once per k from ``(seed, k)`` at the input size, for every image."""
        from .masks import riad_masks

        width, height = self.config.input_size
        self.test_masks = [riad_masks(height, width, k, self.config.n_masks, np.random.default_rng([self.config.seed, 1000 + k]), device=self.device)
                           for k in self.config.ks]
        return {}

    def hidden_reconstruction(self, x):
        from .masks import riad_masks

        k = int(self.epoch_rng.choice(self.config.ks))
        width, height = self.config.input_size
        return inpaint(self.model, x, riad_masks(height, width, k, self.config.n_masks, self.epoch_rng, device=x.device))

    def anomaly_map(self, x):
        from .reconstruction import msgms_map

        return sum(msgms_map(x, inpaint(self.model, x, masks)) for masks in self.test_masks)
