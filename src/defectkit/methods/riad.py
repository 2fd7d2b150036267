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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runs
from ..errors import ConfigError
from . import unsupervised
from .unsupervised import Reconstruction, UnsupervisedConfig


@dataclass
class RiadConfig(UnsupervisedConfig):
    method: str = "riad"
    ks: tuple[int, ...] = (2, 4, 8, 16)
    n_masks: int = 3

    def __post_init__(self):
        super().__post_init__()
        if self.method != "riad":
            raise ConfigError(f"a RIAD config has method 'riad', got {self.method!r}")
        self.ks = unsupervised.as_tuple(self.ks, int, "ks")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"ks must be a non-empty list of positive cell sizes, got {list(self.ks)}")
        if self.n_masks < 1:
            raise ConfigError(f"n_masks must be at least 1, got {self.n_masks}")


CONFIG_CLASS = RiadConfig
SCORER = unsupervised.ReconstructionScorer


def inpaint(unet, x, masks):
    """``sum_i M_i * f(x * (1 - M_i))`` for disjoint masks ``n x H x W`` (True = hidden): one batched pass."""
    n, (b, c, h, w) = masks.shape[0], x.shape
    hidden = masks.to(dtype=x.dtype, device=x.device).view(1, n, 1, h, w)
    out = unet((x.unsqueeze(1) * (1 - hidden)).reshape(b * n, c, h, w)).view(b, n, c, h, w)
    return (out * hidden).sum(1)


class Riad(Reconstruction):
    def __init__(self, config: RiadConfig, device):
        super().__init__(config, device)
        self._test_masks: dict[int, object] = {}

    def unet_overrides(self) -> dict:
        from ..models import model_config

        widths = self.config.model_overrides.get("widths") or model_config("unet", self.config.preset).widths
        return {"inference_skips": (True,) * (len(widths) - 1)}

    def test_masks(self, k: int, height: int, width: int):
        from .masks import riad_masks

        key = (k, height, width)
        if key not in self._test_masks:
            rng = np.random.default_rng([self.config.seed, 1000 + k])
            self._test_masks[key] = riad_masks(height, width, k, self.config.n_masks, rng, device=self.device)
        return self._test_masks[key]

    def train_reconstruction(self, unet, x, indices, rng):
        from .masks import riad_masks

        k = int(rng.choice(self.config.ks))
        return inpaint(unet, x, riad_masks(x.shape[2], x.shape[3], k, self.config.n_masks, rng, device=x.device))

    def anomaly_map(self, unet, x):
        from .reconstruction import msgms_map

        h, w = x.shape[2:]
        return sum(msgms_map(x, inpaint(unet, x, self.test_masks(k, h, w))) for k in self.config.ks)


def fit(config: RiadConfig, out, resume: bool = False, on_step=None, log=print) -> Path:
    return unsupervised.fit(config, out, Riad, resume=resume, on_step=on_step, log=log)


def load_scorer(run_dir, device: str = "cpu", weights: str = runs.MODEL):
    return unsupervised.load_scorer(run_dir, RiadConfig, Riad, device=device, weights=weights)


def read_run_config(run_dir: Path):
    return unsupervised.read_run_config(run_dir, RiadConfig)


decision_threshold = unsupervised.decision_threshold
run_threshold = unsupervised.run_threshold
