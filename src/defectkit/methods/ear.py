"""Excision And Recovery (Park et al., arXiv 2310.04010): one attention mask, one U-Net pass.

The MNIST attention classifier's map of the (grayscale) image marks the "suspicious"
places; those pixels are excised (filled with zeros, the paper's v1, or with a mosaic of the
image, v2) and a U-Net recovers the image. Training uses every skip connection; at inference
only the deeper ones stay on (``inference_skips``, shallow to deep, default off-off-on-on),
so fine detail cannot be copied through and anomalies recover badly. The anomaly map is the
MSGMS map between input and recovery (then the shared mean filter; image score = max).

The mask is a pure function of the image: the attention net has no batch statistics (the
backbone below keeps its ImageNet ones), and :func:`~defectkit.methods.masks.attention_mask`
breaks ties in raster order, so the same image always gets the same mask. The rule is a
documented parameter because the paper does not publish one: ``mask_rule="share"`` hides
the ``mask_share`` (default 10%) of pixels with the highest attention, ``"threshold"`` hides
pixels whose min-max normalised attention is at least ``mask_threshold``. ``"random"`` is the ablation's control: the same ``mask_share`` of
pixels chosen from a random map at the attention map's resolution (upsampled and ranked
exactly as attention is, so the blobs have the same scale), seeded by the image's content so
the mask is still one fixed function of the image; it tells what the attention's choice of
*where* to excise is worth.

The paper's later versions take the map from an ImageNet-pretrained network instead: a digit
classifier has seen only strokes on a blank page, an ImageNet one textures and objects closer
to a product's surface. ``attention="backbone"`` does so with the offline EfficientNet-Lite0
PatchCore uses. A CNN has no attention heads, so its map is the activation attention of
Zagoruyko & Komodakis (2017), the channel mean of the squared activations of
``BACKBONE_STAGE`` (stride 8), and the same mask rule ranks it.

The attention weights the run uses (the shipped MNIST ones by default, or the backbone
truncated after that stage) are copied into the run folder as ``attention.safetensors``, so
evaluation and prediction never depend on a file outside it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from .. import runs
from ..config import Flags, Float, Int, option
from ..errors import ConfigError, DataError
from .unsupervised import Reconstruction, ReconstructionConfig

ATTENTION_FILE = "attention.safetensors"  # the run folder's copy of the attention weights
LUMA = (0.299, 0.587, 0.114)
MASK_RULES = ("share", "threshold", "random")
ATTENTIONS = ("mnist", "backbone")
BACKBONE = "efficientnet_lite0"
BACKBONE_STAGE = "stage3"  # stride 8, 40 channels (PatchCore's shallower stage)


class EarConfig(ReconstructionConfig):
    method: Literal["ear"] = option("ear", "The method.", cli=False)
    attention: str = option("mnist", "Where the mask's attention comes from: mnist (the MNIST classifier's) or backbone (the ImageNet EfficientNet-Lite0's activation attention, stage3).")
    attention_weights: str | None = option(None, "Attention weights (.safetensors with its .json beside it); default: the shipped MNIST ones.")
    backbone_weights: str | None = option(None, "Backbone weights for --attention backbone, a .safetensors file (default: the packaged ImageNet ones).")
    mask_rule: str = option("share", "'share' (hide the top --mask-share of pixels by attention), 'threshold', or 'random' (same share, random places: an ablation).")
    mask_share: Float = option(0.1, "Share of pixels excised.")
    mask_threshold: Float = option(0.5, "Excise pixels whose normalised attention is at least this (with --mask-rule threshold).")
    fill: str = option("zeros", "What fills the excised pixels: zeros (paper v1) or mosaic (v2).")
    mosaic_cell: Int = option(8, "Cell size of the mosaic fill, in pixels.")
    inference_skips: Flags | None = option(None, "U-Net skips on at inference, one 0/1 per level shallow to deep (default: the preset's, 0011).", metavar="0011")

    def check(self) -> None:
        super().check()
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.backbone_weights is not None and not self.backbone_weights.lower().endswith(".safetensors"):
            raise ValueError(f"backbone_weights must be a .safetensors file, got {self.backbone_weights!r}")
        if self.attention == "backbone" and self.attention_weights is not None:
            raise ValueError("attention_weights are the MNIST attention's; with attention 'backbone' give backbone_weights")
        if self.attention == "mnist" and self.backbone_weights is not None:
            raise ValueError("backbone_weights need attention 'backbone'")
        if self.mask_rule not in MASK_RULES:
            raise ValueError(f"mask_rule must be one of {', '.join(MASK_RULES)}, got {self.mask_rule!r}")
        if not 0 <= self.mask_share <= 1 or not 0 <= self.mask_threshold <= 1:
            raise ValueError("mask_share and mask_threshold must lie in [0, 1]")
        if self.fill not in ("zeros", "mosaic"):
            raise ValueError(f"fill must be 'zeros' or 'mosaic', got {self.fill!r}")
        if self.mosaic_cell < 1:
            raise ValueError(f"mosaic_cell must be positive, got {self.mosaic_cell}")


def gray(x):
    """Luminance of ``N x C x H x W`` images (C = 1 is returned as is): the attention net reads gray digits."""
    if x.shape[1] == 1:
        return x
    weights = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


class Ear(Reconstruction):
    name = "ear"
    summary = "Excision And Recovery: attention-masked U-Net reconstruction, good images only (Park et al.)"
    Config = EarConfig

    def __init__(self, config: EarConfig, device: str | None = None, training: bool = False):
        super().__init__(config, device, training)
        self.attention = None

    def unet_overrides(self) -> dict:
        return {} if self.config.inference_skips is None else {"inference_skips": self.config.inference_skips}

    def setup(self, run_dir: Path, saved: dict | None) -> dict:
        from ..models.registry import model_from_config
        from .attention_pretrain import SHIPPED_ATTENTION, load_attention, read_attention_info

        if self.config.attention == "backbone":
            return self.setup_backbone(Path(run_dir), saved)
        if saved is not None:  # an existing run: its own copy of the attention weights
            section = saved.get("attention")
            if not isinstance(section, dict) or not isinstance(section.get("config"), dict):
                raise DataError(f"{Path(run_dir) / runs.CONFIG}: an EAR run needs an 'attention' section")
            model = model_from_config("attention", section["config"])
            runs.load_weights(model, Path(run_dir) / ATTENTION_FILE, f"the attention config in {Path(run_dir) / runs.CONFIG}")
            self.attention = model.to(self.device).eval()
            return {}
        source = self.config.attention_weights
        self.attention = load_attention(source, self.device)
        runs.save_weights(Path(run_dir) / ATTENTION_FILE, self.attention.state_dict())
        accuracy = read_attention_info(source).get("training", {}).get("test_accuracy")
        return {"attention": {
            "name": "attention", "config": self.attention.config.to_dict(), "file": ATTENTION_FILE,
            "source": f"shipped {SHIPPED_ATTENTION.name}" if source is None else str(source), "test_accuracy": accuracy,
        }}

    def setup_backbone(self, run_dir: Path, saved: dict | None) -> dict:
        """``attention="backbone"``: the backbone up to ``BACKBONE_STAGE``, the run's copy once it exists."""
        from ..models.backbone import EfficientNetLite, StageAttention, create_backbone, variant

        if saved is not None:
            section = saved.get("attention")
            if not isinstance(section, dict) or not isinstance(section.get("stage"), str):
                raise DataError(f"{run_dir / runs.CONFIG}: a backbone-attention EAR run needs an 'attention' section with its stage")
            try:
                attention = StageAttention(EfficientNetLite(BACKBONE), section["stage"])
            except ConfigError as exc:
                raise DataError(f"{run_dir / runs.CONFIG}: {exc}") from None
            runs.load_weights(attention.net, run_dir / ATTENTION_FILE, f"the attention section of {run_dir / runs.CONFIG}")
            self.attention = attention.to(self.device).eval()
            return {}
        source = self.config.backbone_weights
        self.attention = StageAttention(create_backbone(BACKBONE, source), BACKBONE_STAGE).to(self.device).eval()
        runs.save_weights(run_dir / ATTENTION_FILE, self.attention.net.state_dict())
        return {"attention": {
            "name": BACKBONE, "stage": BACKBONE_STAGE, "stride": self.attention.output_stride,
            "map": "channel mean of squared activations (Zagoruyko & Komodakis 2017)", "file": ATTENTION_FILE,
            "source": f"{variant(BACKBONE).source} (ImageNet)" if source is None else str(source),
        }}

    def networks(self) -> list:
        return [self.model, self.attention]

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
                attention = self.attention.attention_map(x if c.attention == "backbone" else gray(x))
        rule = {"keep": None, "threshold": c.mask_threshold} if c.mask_rule == "threshold" else {"keep": c.mask_share}
        return attention_mask(attention, tuple(self.config.input_size[::-1]), stride=stride, **rule)[:, 0]

    def excised(self, x, masks):
        from .masks import excise

        return excise(x, masks, self.config.fill, cell=self.config.mosaic_cell)

    def hidden_reconstruction(self, x):
        return self.model(self.excised(x, self.masks(x)))

    def anomaly_map(self, x):
        from .reconstruction import msgms_map

        return msgms_map(x, self.model(self.excised(x, self.masks(x))))

    def check_exportable(self) -> None:
        if self.config.mask_rule == "random":
            raise ConfigError("an EAR run with mask_rule 'random' (the ablation's control) seeds its masks in NumPy and cannot be exported; export an attention-mask run")
