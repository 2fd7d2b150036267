"""Image-similarity maps and losses for reconstruction-based anomaly detection (RIAD, EAR).

RIAD (Zavrtanik, Kristan, Skočaj 2021) trains with ``L2 + MSGMS + SSIM`` and scores with the
multi-scale gradient-magnitude-similarity (MSGMS) map, smoothed by a mean filter. Everything
here is a plain differentiable torch function on ``N x C x H x W`` images in [0, 1].

Choices the papers leave open, all so that every map has the input's size:

* **SSIM**: Gaussian window 11, sigma 1.5, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with
  ``L = data_range``, computed per channel. The local statistics are taken over a
  replicate-padded image (border pixels repeated): zero padding would darken the local means
  near the border and report dissimilarity where there is none.
* **GMS**: images are first averaged over channels (gradient similarity is a luminance
  measure, as in GMSD, which the constant c = 0.0026 = 170 / 255^2 comes from). Gradients are
  Prewitt kernels divided by 3 (GMSD's normalisation, the one c is calibrated for) on a
  replicate-padded image. The magnitude is ``sqrt(gx^2 + gy^2 + 1e-12)``: the tiny constant keeps
  the gradient finite on flat regions and changes no value by more than 1e-6.
* **MSGMS**: scale s (s = 0..3) average-pools both images by 2 s times; each scale's GMS map
  is bilinearly upsampled (half-pixel centres) back to full size. Sizes that are not a
  multiple of ``2 ** (scales - 1)`` are replicate-padded at the bottom and right first and
  the map cropped back, so the scales stay aligned and no row or column is dropped. The public
  RIAD re-implementation also median-filters before the gradients; the paper does not, and
  neither does this.
* **Mean filter**: averages over the part of the window inside the image, so borders are
  neither darkened (zero padding) nor over-weighted (replicate padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "gaussian_window",
    "ssim_map",
    "ssim_loss",
    "gradient_magnitude",
    "gms_map",
    "msgms_map",
    "msgms_loss",
    "reconstruction_loss",
    "mean_filter",
]

GMS_C = 0.0026
_MAGNITUDE_EPS = 1e-12


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(
            f"expected two images of the same shape N x C x H x W, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (the SSIM window is its outer product)."""
    if size < 1 or size % 2 != 1:
        raise ValueError(f"window size must be an odd positive integer, got {size}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _separable_blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-channel 2-D filtering with the outer product of ``g`` on a replicate-padded image."""
    c, k = x.shape[1], g.numel()
    x = F.pad(x, (k // 2,) * 4, mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """Local SSIM per pixel and channel, ``N x C x H x W``; 1 where the images agree."""
    _check_pair(x, y)
    g = gaussian_window(window, sigma, dtype=x.dtype, device=x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n = x.shape[0]
    # one blur call for all five statistics
    stats = _separable_blur(torch.cat([x, y, x * x, y * y, x * y]), g)
    mx, my, mxx, myy, mxy = stats.split(n)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim_loss(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """``1 - mean SSIM``: 0 for identical images."""
    return 1 - ssim_map(x, y, **kwargs).mean()


def _prewitt_kernels(dtype, device) -> torch.Tensor:
    gx = torch.tensor([[-1.0, 0.0, 1.0]] * 3, dtype=dtype, device=device) / 3
    return torch.stack([gx, gx.T]).unsqueeze(1)  # 2 x 1 x 3 x 3: d/dx, d/dy


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude of the channel mean, ``N x 1 x H x W``."""
    if x.dim() != 4:
        raise ValueError(f"expected images N x C x H x W, got {tuple(x.shape)}")
    gray = x.mean(dim=1, keepdim=True)
    grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), _prewitt_kernels(x.dtype, x.device))
    return torch.sqrt((grad * grad).sum(dim=1, keepdim=True) + _MAGNITUDE_EPS)


def gms_map(x: torch.Tensor, y: torch.Tensor, *, c: float = GMS_C) -> torch.Tensor:
    """Gradient-magnitude similarity ``(2 g1 g2 + c) / (g1^2 + g2^2 + c)``, ``N x 1 x H x W``, 1 = same."""
    _check_pair(x, y)
    g1, g2 = gradient_magnitude(x), gradient_magnitude(y)
    return (2 * g1 * g2 + c) / (g1 * g1 + g2 * g2 + c)


def msgms_map(x: torch.Tensor, y: torch.Tensor, *, scales: int = 4, c: float = GMS_C) -> torch.Tensor:
    """``1 - mean over scales of GMS``, each scale upsampled to full size: ``N x 1 x H x W``, 0 = same."""
    _check_pair(x, y)
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    h, w = x.shape[2:]
    m = 2 ** (scales - 1)
    pad_h, pad_w = -h % m, -w % m
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        y = F.pad(y, (0, pad_w, 0, pad_h), mode="replicate")
    size = x.shape[2:]
    total = gms_map(x, y, c=c)
    for _ in range(scales - 1):
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        total = total + F.interpolate(gms_map(x, y, c=c), size=size, mode="bilinear", align_corners=False)
    return (1 - total / scales)[:, :, :h, :w]


def msgms_loss(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """Mean of :func:`msgms_map`: 0 for identical images."""
    return msgms_map(x, y, **kwargs).mean()


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RIAD's training loss: ``L2 + MSGMS + SSIM`` with equal weights (L2 = mean squared error)."""
    _check_pair(reconstruction, target)
    return (
        F.mse_loss(reconstruction, target)
        + msgms_loss(reconstruction, target)
        + ssim_loss(reconstruction, target)
    )


def mean_filter(x: torch.Tensor, size: int = 21) -> torch.Tensor:
    """``size x size`` box average of each map (``N x C x H x W``), same size out.

    Near the border it averages only the pixels inside the image. An even ``size`` reaches one
    pixel further down/right than up/left.
    """
    if x.dim() != 4:
        raise ValueError(f"expected maps N x C x H x W, got {tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"filter size must be positive, got {size}")
    if size == 1:
        return x
    before, after = (size - 1) // 2, size // 2
    pad = (before, after, before, after)
    total = F.avg_pool2d(F.pad(x, pad), size, stride=1)
    ones = torch.ones(1, 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    share = F.avg_pool2d(F.pad(ones, pad), size, stride=1)
    return total / share
