"""Layers shared by defectkit's networks."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FeatureNorm", "ConvBlock", "gradient_multiply"]


class FeatureNorm(nn.Module):
    """Per-sample, per-channel normalisation over H and W (the SegDecNet reference's norm).

    ``y = scale * (x - mean) / sqrt(s + eps) + bias`` where ``s`` is the *unbiased* standard
    deviation: the reference uses std where the textbook form uses variance, and the paper's
    numbers were obtained that way. ``use_variance=True`` puts the (unbiased) variance there.
    A plane of a single pixel has no unbiased spread; it is taken as 0, so the output is
    ``bias`` instead of the reference's NaN. Statistics are computed in at least float32 so
    that half-precision activations do not lose them.
    """

    def __init__(self, num_features: int, eps: float = 1e-3, *, bias: bool = True, use_variance: bool = False):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a positive number, got {eps}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.use_variance = bool(use_variance)
        self.scale = nn.Parameter(torch.ones(num_features))
        if bias:
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"FeatureNorm({self.num_features}) expects N x {self.num_features} x H x W, got {tuple(x.shape)}")
        pixels = x.shape[2] * x.shape[3]
        if self.use_variance and pixels > 1 and x.dtype in (torch.float32, torch.float64) and not torch.onnx.is_in_onnx_export():
            # The same formula with the normalisation in the fused instance-norm kernel (forward
            # and backward in one pass each); the scale and bias stay outside it, where autograd
            # sums their gradients over the centred values: group_norm's own affine gradients
            # lose digits when a plane's mean is large against its spread. 1.8-2x faster than
            # the composite (benchmarks/featurenorm.py). group_norm divides by the biased variance:
            # sqrt(var_unbiased + eps) = sqrt(n / (n - 1)) sqrt(var_biased + eps (n - 1) / n).
            shrink = (pixels - 1) / pixels
            normalised = F.group_norm(x, self.num_features, None, None, self.eps * shrink)
            a = (self.scale * math.sqrt(shrink)).view(1, -1, 1, 1)
            return normalised * a if self.bias is None else torch.addcmul(self.bias.view(1, -1, 1, 1), normalised, a)
        return self.composite(x)

    def composite(self, x: torch.Tensor) -> torch.Tensor:
        """The formula in elementwise operations: the std form, half precision, one-pixel planes
        and ONNX export (whose graph has no instance norm of this form)."""
        dtype = x.dtype
        xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        correction = 1 if x.shape[2] * x.shape[3] > 1 else 0
        stat = torch.var_mean if self.use_variance else torch.std_mean
        spread, mean = stat(xf, dim=(2, 3), correction=correction, keepdim=True)
        # (x - mean) * a + bias with a = scale / sqrt(spread + eps) per sample and channel: two
        # passes over the full-size tensor where the textbook form takes four (at high
        # resolution this layer is memory-bound, see benchmarks/profile_segdec.py). Centring
        # first keeps precision when |mean| >> spread, and a one-pixel plane gives bias exactly.
        a = self.scale.view(1, -1, 1, 1) * torch.rsqrt(spread + self.eps)
        centred = xf - mean
        return (centred * a if self.bias is None else torch.addcmul(self.bias.view(1, -1, 1, 1), centred, a)).to(dtype)

    def extra_repr(self) -> str:
        spread = "var" if self.use_variance else "std"
        return f"{self.num_features}, eps={self.eps}, bias={self.bias is not None}, spread={spread}"


class ConvBlock(nn.Module):
    """Conv (no bias: the norm removes it) -> FeatureNorm -> ReLU, Xavier-normal as in the paper."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, eps: float = 1e-3, use_variance: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the size, got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.xavier_normal_(self.conv.weight)
        self.norm = FeatureNorm(out_channels, eps, use_variance=use_variance)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(self.conv(x)))


class _GradientMultiplyFn(torch.autograd.Function):
    """Identity forward; backward scales the gradient (0 stops it exactly, even past inf/NaN)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.factor == 0.0:
            return torch.zeros_like(grad), None
        if ctx.factor == 1.0:
            return grad, None
        return grad * ctx.factor, None


def _check_factor(factor: float) -> float:
    factor = float(factor)
    if not math.isfinite(factor):
        raise ValueError(f"gradient factor must be finite, got {factor}")
    return factor


def gradient_multiply(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged, with the gradient flowing back through it multiplied by ``factor``."""
    return _GradientMultiplyFn.apply(x, _check_factor(factor))
