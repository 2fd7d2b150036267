"""U-Net for reconstruction (RIAD and EAR) with skip connections switchable per level.

RIAD (Zavrtanik, Kristan, Skočaj, Pattern Recognition 2021) inpaints masked cells with a
U-Net; EAR (Park et al., arXiv 2310.04010) trains the same kind of net with every skip on and
switches the shallow skips off at inference, so fine input detail cannot be copied to the
output and anomalies reconstruct badly.

The authors of RIAD published no code; the "paper" preset follows the public re-implementation
most results are quoted from (plutoyuxie/Reconstruction-by-inpainting-for-visual-anomaly-detection):
a first block at full resolution, then four levels down by a strided 4x4 conv, widths
64-128-256-512-512, up by a 4x4 transposed conv, concatenation with the skip, two 3x3 convs
per block, BatchNorm and ReLU throughout, and a 3x3 conv to the output channels. Weights start
He-normal (the re-implementation keeps PyTorch's default), which matters for ``norm="none"``.

* **Skip semantics.** Skip ``i`` (0 = shallowest, full resolution; ``depth - 1`` = deepest)
  carries encoder level ``i`` into the decoder. When it is off, the decoder gets zeros of the
  same shape in its place, so the weights are the same network either way and that level passes
  no information at all. Which skips are on: ``forward(x, skips=...)`` if given, else
  :attr:`UNet.skips` if set, else all on in training mode and ``config.inference_skips`` in
  eval mode (the EAR default keeps only the deeper ones). RIAD keeps all on: build it with
  ``inference_skips=(True,) * depth``.
* **Output.** ``output="sigmoid"`` (default) keeps reconstructions in [0, 1], the range the
  SSIM and gradient-similarity constants of the losses are defined for; ``"linear"`` returns
  the raw conv output.
* **Any size.** Inputs are replicate-padded at the bottom and right to a multiple of
  ``2 ** depth`` and the output is cropped back, so no row or column is lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from defectkit.config import Flags, Int
from defectkit.errors import ConfigError

from .config import ModelConfig
from .registry import register_model

__all__ = ["UNetConfig", "UNet", "PRESETS"]

_OUTPUTS = ("sigmoid", "linear")
_NORMS = ("batch", "none")


class UNetConfig(ModelConfig):
    """Sizes and switches of the reconstruction U-Net; the defaults are the paper preset.

    ``widths[0]`` is the full-resolution block, each further entry one level down (so
    ``depth = len(widths) - 1`` levels and skips). ``inference_skips`` has one flag per skip,
    shallow to deep: which skips stay on in eval mode unless told otherwise.
    """

    label: ClassVar[str] = "unet config"

    in_channels: Int = 1
    widths: tuple[Int, ...] = (64, 128, 256, 512, 512)
    inference_skips: Flags = (False, False, True, True)
    output: str = "sigmoid"
    norm: str = "batch"

    @property
    def depth(self) -> int:
        return len(self.widths) - 1

    @property
    def size_multiple(self) -> int:
        """Inputs are padded internally to a multiple of this."""
        return 2**self.depth

    def example_shape(self) -> tuple[int, int, int, int]:
        side = 2 * self.size_multiple
        return (1, self.in_channels, side, side)

    def check(self) -> None:
        if self.in_channels < 1:
            raise ConfigError(f"{self.label} option 'in_channels' must be positive, got {self.in_channels}")
        if len(self.widths) < 2 or any(w < 1 for w in self.widths):
            raise ConfigError(
                f"{self.label} option 'widths' must list at least two positive channel counts "
                f"(full resolution, then one per level down), got {list(self.widths)}"
            )
        if len(self.inference_skips) != self.depth:
            raise ConfigError(
                f"{self.label}: inference_skips has {len(self.inference_skips)} flags but the net has "
                f"{self.depth} skip connections (one per level down)"
            )
        if self.output not in _OUTPUTS:
            raise ConfigError(f"{self.label} option 'output' must be one of {', '.join(_OUTPUTS)}, got {self.output!r}")
        if self.norm not in _NORMS:
            raise ConfigError(f"{self.label} option 'norm' must be one of {', '.join(_NORMS)}, got {self.norm!r}")


def _conv_norm_relu(cin: int, cout: int, kernel: int, stride: int, norm: str) -> list[nn.Module]:
    batch = norm == "batch"
    padding = 1  # 3x3 stride 1 keeps the size; 4x4 stride 2 halves an even size exactly
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=not batch)]
    if batch:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class _Down(nn.Sequential):
    def __init__(self, cin: int, cout: int, first: bool, norm: str):
        kernel, stride = (3, 1) if first else (4, 2)
        super().__init__(*_conv_norm_relu(cin, cout, kernel, stride, norm), *_conv_norm_relu(cout, cout, 3, 1, norm))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
        self.convs = nn.Sequential(
            *_conv_norm_relu(2 * cout, cout, 3, 1, norm), *_conv_norm_relu(cout, cout, 3, 1, norm)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """Reconstruction U-Net; ``forward(x, skips=None)`` returns an image shaped like ``x``."""

    def __init__(self, config: UNetConfig | Mapping | None = None):
        super().__init__()
        if config is None:
            config = UNetConfig()
        elif isinstance(config, Mapping):
            config = UNetConfig.from_dict(config)
        elif not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.down = nn.ModuleList(
            _Down(cin, cout, i == 0, c.norm)
            for i, (cin, cout) in enumerate(zip((c.in_channels, *c.widths[:-1]), c.widths))
        )
        # up[i] brings level i + 1 back to level i and merges skip i
        self.up = nn.ModuleList(_Up(c.widths[i + 1], c.widths[i], c.norm) for i in range(c.depth))
        self.final = nn.Conv2d(c.widths[0], c.in_channels, 3, padding=1)
        self._skips: tuple[bool, ...] | None = None
        for m in self.modules():
            # He init: PyTorch's default shrinks a ReLU signal ~2.5x per conv, which without
            # BatchNorm would starve the deep path (23 stacked convs at depth 4)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def depth(self) -> int:
        return self.config.depth

    @property
    def skips(self) -> tuple[bool, ...] | None:
        """Skip flags used when ``forward`` is given none; None: all on in training, config's in eval."""
        return self._skips

    @skips.setter
    def skips(self, value: bool | Sequence[bool] | None) -> None:
        self._skips = None if value is None else self._normalise_skips(value)

    def active_skips(self, skips: bool | Sequence[bool] | None = None) -> tuple[bool, ...]:
        """The flags a forward pass with ``skips`` would use, shallow to deep."""
        if skips is not None:
            return self._normalise_skips(skips)
        if self._skips is not None:
            return self._skips
        return (True,) * self.depth if self.training else self.config.inference_skips

    def _normalise_skips(self, skips: bool | Sequence[bool]) -> tuple[bool, ...]:
        if isinstance(skips, bool):
            return (skips,) * self.depth
        flags = tuple(skips)
        if len(flags) != self.depth or not all(isinstance(f, bool) for f in flags):
            raise ConfigError(
                f"skips must be true/false or a list of {self.depth} true/false flags (shallow to deep), got {skips!r}"
            )
        return flags

    def forward(self, x: torch.Tensor, skips: bool | Sequence[bool] | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ConfigError(
                f"unet expects images of shape N x {self.config.in_channels} x H x W, got {tuple(x.shape)}"
            )
        flags = self.active_skips(skips)
        h, w = x.shape[2:]
        m = self.config.size_multiple
        pad_h, pad_w = -h % m, -w % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")

        levels = []
        for block in self.down:
            x = block(x)
            levels.append(x)
        y = levels.pop()
        for i in reversed(range(self.depth)):
            skip = levels[i] if flags[i] else torch.zeros_like(levels[i])
            y = self.up[i](y, skip)
        y = self.final(y)
        if self.config.output == "sigmoid":
            y = torch.sigmoid(y)
        return y[:, :, :h, :w]

    def extra_repr(self) -> str:
        return f"skips={self._skips}, inference_skips={self.config.inference_skips}"


PRESETS: dict[str, UNetConfig] = {
    # The RIAD re-implementation's U-Net (widths 64..512, four levels down): 28.8 M parameters,
    # ~109 GFLOP per 1x256x256 image.
    "paper": UNetConfig(),
    # Quarter widths: 1.8 M parameters, ~16x cheaper (6.8 GFLOP per 1x256x256), for CPU training.
    "small": UNetConfig(widths=(16, 32, 64, 128, 128)),
    # Toy widths for unit tests and demos, not for accuracy.
    "tiny": UNetConfig(widths=(4, 8, 8, 16, 16)),
}

register_model("unet", UNetConfig, UNet, PRESETS, default_preset="paper")
