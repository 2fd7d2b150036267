"""The MNIST spatial-attention classifier whose attention map EAR uses to pick what to excise.

Park et al., "Excision And Recovery" (arXiv 2310.04010) take the attention of a small digit
classifier trained on MNIST: it peaks at stroke ends, junctions and bends, the places a
reconstruction net should not be allowed to copy. The "paper" preset is that network:

    conv3x3 32, conv3x3 32, maxpool 2, conv3x3 64, conv3x3 64, maxpool 2   (features)
    A = softmax over all positions of conv1x1(64 -> 1)                    (attention)
    conv3x3 64 -> 512 on features * A, global average pool, FC 512 -> 128, FC 128 -> 10

Choices the description leaves open:

* Every conv has padding 1 and a bias, with a ReLU after it and after FC 512 -> 128, so the
  net is fully convolutional up to A and runs on any image size.
* The 1x1 attention conv has no bias: a softmax over positions ignores a constant, so a bias
  would be a parameter that never receives a gradient and changes nothing.
* The max-pools round up (``ceil_mode``), so every input pixel lies in some attention cell even
  when H or W is not a multiple of 4; cell ``(i, j)`` covers input pixels ``[4i, 4i + 4) x
  [4j, 4j + 4)``. On 28 x 28 digits this is the same as rounding down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from defectkit.config import Int
from defectkit.errors import ConfigError

from .config import ModelConfig
from .registry import register_model

__all__ = ["AttentionConfig", "AttentionNet", "PRESETS"]


class AttentionConfig(ModelConfig):
    """Sizes of the attention classifier; the defaults are the paper's network.

    ``widths`` are the output channels of the feature convs, two per stage, with a 2x max-pool
    after each stage (``len(widths) // 2`` stages, so the attention map has stride
    ``2 ** (len(widths) // 2)``, 4 in the paper). ``head_channels`` is the 3x3 conv after the
    attention, ``hidden`` the first fully connected layer.
    """

    label: ClassVar[str] = "attention config"

    in_channels: Int = 1
    widths: tuple[Int, ...] = (32, 32, 64, 64)
    head_channels: Int = 512
    hidden: Int = 128
    num_classes: Int = 10

    @property
    def output_stride(self) -> int:
        """Input pixels per attention cell along each axis."""
        return 2 ** (len(self.widths) // 2)

    def example_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, 28, 28)  # an MNIST digit

    def check(self) -> None:
        for name in ("in_channels", "head_channels", "hidden", "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.label} option {name!r} must be positive, got {getattr(self, name)}")
        if not self.widths or len(self.widths) % 2 or any(w < 1 for w in self.widths):
            raise ConfigError(
                f"{self.label} option 'widths' must be a non-empty list of positive channel counts, "
                f"two per stage, got {list(self.widths)}"
            )


class AttentionNet(nn.Module):
    """Digit classifier with one spatial softmax attention map.

    ``forward(x)`` returns ``(logits [N, num_classes], attention [N, 1, h, w])``; the attention
    sums to 1 over its ``h * w`` positions, with ``h = ceil(H / stride)``. Use
    :meth:`attention_map` when only the map is needed: it skips the classifier head.
    """

    def __init__(self, config: AttentionConfig | Mapping | None = None):
        super().__init__()
        if config is None:
            config = AttentionConfig()
        elif isinstance(config, Mapping):
            config = AttentionConfig.from_dict(config)
        elif not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig, got {type(config).__name__}")
        self.config = config
        c = config

        layers: list[nn.Module] = []
        channels = c.in_channels
        for i, width in enumerate(c.widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.attention = nn.Conv2d(channels, 1, 1, bias=False)
        self.head = nn.Sequential(nn.Conv2d(channels, c.head_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(
            nn.Linear(c.head_channels, c.hidden), nn.ReLU(inplace=True), nn.Linear(c.hidden, c.num_classes)
        )

    @property
    def output_stride(self) -> int:
        return self.config.output_stride

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ConfigError(
                f"attention model expects images of shape N x {self.config.in_channels} x H x W, got {tuple(x.shape)}"
            )
        if min(x.shape[2:]) < 1:
            raise ConfigError(f"attention model got an empty image of shape {tuple(x.shape)}")

    def _attend(self, features: torch.Tensor) -> torch.Tensor:
        n, _, h, w = features.shape
        scores = self.attention(features).flatten(1)
        # softmax in float32 at least: a half-precision sum over many positions drifts from 1
        return torch.softmax(scores.float(), dim=1).to(features.dtype).view(n, 1, h, w)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Attention ``[N, 1, ceil(H/s), ceil(W/s)]`` (s = output stride) for images of any size."""
        self._check(x)
        return self._attend(self.features(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        features = self.features(x)
        attention = self._attend(features)
        pooled = self.head(features * attention).mean(dim=(2, 3))
        return self.classifier(pooled), attention


PRESETS: dict[str, AttentionConfig] = {
    # The published network (427,434 parameters): the one EAR's attention comes from.
    "paper": AttentionConfig(),
}

register_model("attention", AttentionConfig, AttentionNet, PRESETS, default_preset="paper")
