"""Excision And Recovery (Park et al., arXiv 2310.04010): one attention mask, one U-Net pass.

The MNIST attention classifier's map of the (grayscale) image marks the "suspicious"
places; those pixels are excised (filled with zeros, the paper's v1, or with a mosaic of the
image, v2) and a U-Net recovers the image. Training uses every skip connection; at inference
only the deeper ones stay on (``inference_skips``, shallow to deep, default off-off-on-on),
so fine detail cannot be copied through and anomalies recover badly. The anomaly map is the
MSGMS map between input and recovery (then the shared mean filter; image score = max).

The mask is a pure function of the image: the attention net has no batch statistics, and
:func:`~defectkit.methods.masks.attention_mask` breaks ties in raster order, so the same
image always gets the same mask. The rule is a documented parameter because the paper does
not publish one: ``mask_rule="share"`` hides the ``mask_share`` (default 10%) of pixels with
the highest attention, ``"threshold"`` hides pixels whose min-max normalised attention is at
least ``mask_threshold``. ``"random"`` is the ablation's control: the same ``mask_share`` of
pixels chosen from a random map at the attention map's resolution (upsampled and ranked
exactly as attention is, so the blobs have the same scale), seeded by the image's content so
the mask is still one fixed function of the image; it tells what the attention's choice of
*where* to excise is worth.

The attention weights the run uses (the shipped MNIST ones by default) are copied into the
run folder as ``attention.safetensors``, so evaluation and prediction never depend on a
file outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runs
from ..errors import ConfigError, DataError
from . import unsupervised
from .unsupervised import Reconstruction, UnsupervisedConfig

ATTENTION_FILE = runs.ATTENTION
LUMA = (0.299, 0.587, 0.114)
MASK_RULES = ("share", "threshold", "random")


@dataclass
class EarConfig(UnsupervisedConfig):
    method: str = "ear"
    attention_weights: str | None = None  # None: the shipped MNIST weights
    mask_rule: str = "share"  # "share", "threshold" or "random" (the ablation's control)
    mask_share: float = 0.1
    mask_threshold: float = 0.5
    fill: str = "zeros"  # "zeros" (v1) or "mosaic" (v2)
    mosaic_cell: int = 8
    inference_skips: tuple[bool, ...] | None = None  # None: the U-Net preset's (shallow off, deep on)

    def __post_init__(self):
        super().__post_init__()
        if self.method != "ear":
            raise ConfigError(f"an EAR config has method 'ear', got {self.method!r}")
        if self.mask_rule not in MASK_RULES:
            raise ConfigError(f"mask_rule must be one of {', '.join(MASK_RULES)}, got {self.mask_rule!r}")
        if not 0 <= self.mask_share <= 1 or not 0 <= self.mask_threshold <= 1:
            raise ConfigError("mask_share and mask_threshold must lie in [0, 1]")
        if self.fill not in ("zeros", "mosaic"):
            raise ConfigError(f"fill must be 'zeros' or 'mosaic', got {self.fill!r}")
        if self.mosaic_cell < 1:
            raise ConfigError(f"mosaic_cell must be positive, got {self.mosaic_cell}")
        if self.inference_skips is not None:
            self.inference_skips = unsupervised.as_tuple(self.inference_skips, bool, "inference_skips")


CONFIG_CLASS = EarConfig
SCORER = unsupervised.ReconstructionScorer


def gray(x):
    """Luminance of ``N x C x H x W`` images (C = 1 is returned as is): the attention net reads gray digits."""
    if x.shape[1] == 1:
        return x
    weights = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


class Ear(Reconstruction):
    def __init__(self, config: EarConfig, device):
        super().__init__(config, device)
        self.attention = None
        self.train_masks = None

    def unet_overrides(self) -> dict:
        return {} if self.config.inference_skips is None else {"inference_skips": self.config.inference_skips}

    def setup(self, out: Path, saved: dict | None) -> dict:
        from ..models.registry import model_from_config
        from .attention_pretrain import SHIPPED_ATTENTION, load_attention, read_attention_info

        if saved is not None:  # an existing run: its own copy of the attention weights
            section = saved.get("attention")
            if not isinstance(section, dict) or not isinstance(section.get("config"), dict):
                raise DataError(f"{Path(out) / runs.CONFIG}: an EAR run needs an 'attention' section")
            model = model_from_config("attention", section["config"])
            runs.load_weights(model, Path(out) / ATTENTION_FILE, f"the attention config in {Path(out) / runs.CONFIG}")
            self.attention = model.to(self.device).eval()
            return {}
        source = self.config.attention_weights
        self.attention = load_attention(source, self.device)
        runs.save_weights(Path(out) / ATTENTION_FILE, self.attention.state_dict())
        accuracy = read_attention_info(source).get("training", {}).get("test_accuracy")
        return {"attention": {
            "name": "attention", "config": self.attention.config.to_dict(), "file": ATTENTION_FILE,
            "source": f"shipped {SHIPPED_ATTENTION.name}" if source is None else str(source), "test_accuracy": accuracy,
        }}

    def masks(self, x):
        """Boolean ``N x H x W``, True = excised; one deterministic mask per image."""
        import torch

        from .masks import attention_mask, content_seeded_map

        c = self.config
        stride = self.attention.output_stride
        if c.mask_rule == "random":
            attention = content_seeded_map(x, stride, c.seed)
        else:
            with torch.no_grad():
                attention = self.attention.attention_map(gray(x))
        rule = {"keep": None, "threshold": c.mask_threshold} if c.mask_rule == "threshold" else {"keep": c.mask_share}
        return attention_mask(attention, tuple(x.shape[2:]), stride=stride, **rule)[:, 0]

    def excised(self, x, masks):
        from .masks import excise

        return excise(x, masks, self.config.fill, cell=self.config.mosaic_cell)

    def prepare_training(self, images: np.ndarray) -> None:
        import torch

        batch = self.config.eval_batch_size
        self.train_masks = torch.cat([self.masks(torch.from_numpy(images[i : i + batch]).to(self.device)) for i in range(0, len(images), batch)])

    def train_reconstruction(self, unet, x, indices, rng):
        return unet(self.excised(x, self.train_masks[indices]))

    def anomaly_map(self, unet, x):
        from .reconstruction import msgms_map

        return msgms_map(x, unet(self.excised(x, self.masks(x))))


def fit(config: EarConfig, out, resume: bool = False, on_step=None, log=print) -> Path:
    return unsupervised.fit(config, out, Ear, resume=resume, on_step=on_step, log=log)


def load_scorer(run_dir, device: str = "cpu", weights: str = runs.MODEL):
    return unsupervised.load_scorer(run_dir, EarConfig, Ear, device=device, weights=weights)


def read_run_config(run_dir: Path):
    return unsupervised.read_run_config(run_dir, EarConfig)


decision_threshold = unsupervised.decision_threshold
run_threshold = unsupervised.run_threshold
