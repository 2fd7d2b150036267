"""SegDecNet: the two-stage segmentation + decision network of Božič, Tabernik and Skočaj.

"End-to-end training of a two-stage neural network for defect detection" (ICPR 2020) and
"Mixed supervision for surface-defect detection: from weakly to fully supervised learning"
(Computers in Industry, 2021). The "paper" preset is their network as the reference code
trains it: 15,637,212 weights as published with one input channel, plus the one scalar the
reference trains by accident (below), so published numbers can be reproduced; the cheaper
presets keep the same structure so that every code path is the same.

The seg head ends in a FeatureNorm, so its map has zero mean and a fixed spread in every
image. The reference asks that norm for no bias (``include_bias=False``) but builds it as
``nn.Parameter(torch.zeros(..., requires_grad=False))``, which trains all the same. That
offset is what lets a good image's map fall to "no defect" everywhere: without it the
segmentation loss of a good image cannot go below ln 2, training shrinks the map's scale
towards 0 and the segmentation net learns almost nothing (KolektorSDD, ``small``, 256x704:
seg loss stuck at 0.689, trained scale 0.12; docs/benchmarks.md). ``seg_bias`` (default on,
as trained by the reference) keeps it; off gives the network as the paper describes it.

Differences from the reference code, none of which changes a trained paper network:

* A FeatureNorm over a single pixel returns its bias instead of NaN.
* The classifier's 66 inputs are ``[max over the 32 decision channels, their average,
  max of the seg logits, their average]``, the reference's order, so its weights port over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import ClassVar

import torch
from torch import nn

from defectkit.config import Float, Int, Size
from defectkit.errors import ConfigError

from .config import ModelConfig
from .layers import ConvBlock, FeatureNorm, gradient_multiply
from .registry import register_model

__all__ = ["SegDecConfig", "SegDecNet", "PRESETS"]


class SegDecConfig(ModelConfig):
    """Every size of a SegDecNet; the defaults are the paper's network.

    ``seg_widths`` are the output channels of the segmentation net's conv blocks, split into
    stages by ``stage_depths`` with a 2x max-pool after each stage (so the seg output stride is
    ``2 ** len(stage_depths)``, 8 in the paper). Each ``decision_widths`` entry is one 2x
    max-pool followed by one conv block. ``gradient_adjustment`` is the initial factor g on the
    gradient from the decision net into the seg net: 0 is the paper's gradient-flow adjustment
    (the classification loss does not train the seg net), 1 turns it off. ``input_size``
    (width, height) is only recorded and validated: the net is fully convolutional.
    """

    label: ClassVar[str] = "segdec config"

    in_channels: Int = 1
    seg_widths: tuple[Int, ...] = (32, 64, 64, 64, 64, 64, 64, 64)
    stage_depths: tuple[Int, ...] = (1, 3, 4)
    kernel: Int = 5
    volume_channels: Int = 1024
    volume_kernel: Int = 15
    decision_widths: tuple[Int, ...] = (8, 16, 32)
    decision_kernel: Int = 5
    norm_eps: Float = 1e-3
    norm_uses_variance: bool = False
    seg_bias: bool = True
    gradient_adjustment: Float = 0.0
    input_size: Size = (512, 1408)

    @property
    def output_stride(self) -> int:
        """Input pixels per segmentation-logit pixel along each axis."""
        return 2 ** len(self.stage_depths)

    @property
    def min_input_size(self) -> int:
        """Smallest height/width that leaves the last decision block at least one pixel."""
        return self.output_stride * 2 ** len(self.decision_widths)

    def example_shape(self) -> tuple[int, int, int, int]:
        m = self.min_input_size
        return (1, self.in_channels, 2 * m, m)

    def check(self) -> None:
        def positive(name: str, values: Sequence[int]) -> None:
            if any(v < 1 for v in values):
                raise ConfigError(f"{self.label} option {name!r} must be positive, got {getattr(self, name)!r}")

        positive("in_channels", [self.in_channels])
        positive("volume_channels", [self.volume_channels])
        for name in ("seg_widths", "stage_depths", "decision_widths"):
            if not getattr(self, name):
                raise ConfigError(f"{self.label} option {name!r} must not be empty")
            positive(name, getattr(self, name))
        for name in ("kernel", "volume_kernel", "decision_kernel"):
            k = getattr(self, name)
            if k < 1 or k % 2 != 1:
                raise ConfigError(f"{self.label} option {name!r} must be an odd positive integer, got {k}")
        if sum(self.stage_depths) != len(self.seg_widths):
            raise ConfigError(
                f"{self.label}: seg_widths has {len(self.seg_widths)} entries but stage_depths "
                f"{list(self.stage_depths)} needs {sum(self.stage_depths)}"
            )
        if self.norm_eps <= 0:
            raise ConfigError(f"{self.label} option 'norm_eps' must be > 0, got {self.norm_eps}")
        width, height = self.input_size
        self.check_input_size(height, width, what="input_size (width, height)")

    def check_input_size(self, height: int, width: int, *, what: str = "input") -> None:
        """Raise :class:`ConfigError` unless an H x W image fits the network.

        The last decision block must see at least 2 pixels: over a single pixel its
        FeatureNorm outputs a constant (NaN in the reference), cutting the decision net off.
        """
        s, m = self.output_stride, self.min_input_size
        if height % s or width % s:
            raise ConfigError(f"{self.label}: {what} {width}x{height} (WxH) must have width and height divisible by {s}")
        if (height // m) * (width // m) < 2:
            raise ConfigError(
                f"{self.label}: {what} {width}x{height} (WxH) is too small; the decision net's last block "
                f"would see {width // m}x{height // m} pixels and needs at least 2, e.g. {m}x{2 * m} or {2 * m}x{m}"
            )


class SegDecNet(nn.Module):
    """Segmentation net (logits at 1/8 resolution) plus decision net (one logit per image).

    ``forward(x)`` returns ``(image_logit [N], seg_logits [N, 1, H/8, W/8])``, both raw logits
    so the losses can use the numerically stable ``*_with_logits`` forms. ``gradient_adjustment``
    (g) may be set at any time, e.g. per epoch by a trainer.
    """

    def __init__(self, config: SegDecConfig | Mapping | None = None):
        super().__init__()
        if config is None:
            config = SegDecConfig()
        elif isinstance(config, Mapping):
            config = SegDecConfig.from_dict(config)
        elif not isinstance(config, SegDecConfig):
            raise TypeError(f"config must be a SegDecConfig, got {type(config).__name__}")
        self.config = config
        c = config
        block = partial(ConvBlock, eps=c.norm_eps, use_variance=c.norm_uses_variance)

        layers: list[nn.Module] = []
        channels, widths = c.in_channels, iter(c.seg_widths)
        for depth in c.stage_depths:
            for _ in range(depth):
                width = next(widths)
                layers.append(block(channels, width, c.kernel))
                channels = width
            layers.append(nn.MaxPool2d(2))
        layers.append(block(channels, c.volume_channels, c.volume_kernel))
        self.volume = nn.Sequential(*layers)

        head = nn.Conv2d(c.volume_channels, 1, 1, bias=False)
        nn.init.xavier_normal_(head.weight)
        self.seg_head = nn.Sequential(head, FeatureNorm(1, c.norm_eps, bias=c.seg_bias, use_variance=c.norm_uses_variance))

        layers, channels = [], c.volume_channels + 1
        for width in c.decision_widths:
            layers += [nn.MaxPool2d(2), block(channels, width, c.decision_kernel)]
            channels = width
        self.decision = nn.Sequential(*layers)
        self.classifier = nn.Linear(2 * channels + 2, 1)

        self.gradient_adjustment = c.gradient_adjustment

    @property
    def gradient_adjustment(self) -> float:
        """Factor g on the decision net's gradient into the seg net (0: paper, 1: plain end-to-end)."""
        return self._gradient_adjustment

    @gradient_adjustment.setter
    def gradient_adjustment(self, value: float) -> None:
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"gradient_adjustment must be a finite number, got {value}")
        self._gradient_adjustment = value

    @property
    def output_stride(self) -> int:
        return self.config.output_stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ConfigError(
                f"segdec expects images of shape N x {self.config.in_channels} x H x W, got {tuple(x.shape)}"
            )
        self.config.check_input_size(int(x.shape[2]), int(x.shape[3]))
        g = self._gradient_adjustment

        volume = self.volume(x)
        seg = self.seg_head(volume)

        features = self.decision(gradient_multiply(torch.cat([volume, seg], dim=1), g))
        # max over a flattened plane sends the gradient to one pixel, as the reference does
        feat_max = features.flatten(2).max(dim=2).values
        feat_avg = features.mean(dim=(2, 3))
        seg_max = gradient_multiply(seg.flatten(1).max(dim=1, keepdim=True).values, g)
        seg_avg = gradient_multiply(seg.mean(dim=(2, 3)), g)

        logit = self.classifier(torch.cat([feat_max, feat_avg, seg_max, seg_avg], dim=1))
        return logit.squeeze(1), seg

    def extra_repr(self) -> str:
        return f"gradient_adjustment={self._gradient_adjustment}"


PRESETS: dict[str, SegDecConfig] = {
    # The published network: reproduces the papers' results; ~169 GFLOP per 1x512x512 image.
    "paper": SegDecConfig(),
    # Same depth and receptive-field shape, halved widths and a 256x7x7 volume: ~11x cheaper, for CPU.
    # Ours, so FeatureNorm divides by the standard deviation (not the paper's sqrt of it): the
    # net is then scale invariant and trains stably at the papers' learning rates (KSDD fold 2,
    # 256x704, 30 epochs, before the seg offset was kept: AP 0.949 with the quirk, 0.974
    # without; docs/benchmarks.md).
    "small": SegDecConfig(
        seg_widths=(16, 32, 32, 32, 32, 32, 32, 32), volume_channels=256, volume_kernel=7, norm_uses_variance=True
    ),
    # Same structure at toy widths: fast enough for unit tests and demos, not for accuracy.
    "tiny": SegDecConfig(
        seg_widths=(8, 16, 16, 16, 16, 16, 16, 16), volume_channels=32, volume_kernel=5, norm_uses_variance=True
    ),
}

register_model("segdec", SegDecConfig, SegDecNet, PRESETS, default_preset="paper")
