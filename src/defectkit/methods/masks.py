"""Masks that hide part of an image from a reconstruction net: RIAD's random cells, EAR's excision.

Convention throughout: a mask is boolean and ``True`` marks the pixels that are *hidden*
(removed from the input, to be reconstructed).

* RIAD (Zavrtanik et al. 2021): the image is tiled into k x k-pixel cells and the cells are
  split at random into n disjoint groups; pass i hides group i, and each pixel's
  reconstruction is taken from the one pass that hid it.
* EAR (Park et al., arXiv 2310.04010): one deterministic mask per image from the attention
  map of an MNIST classifier. The paper does not publish its thresholding rule; here it is
  "hide the top ``keep`` share of pixels by attention" (default 10%) or, alternatively, "hide
  pixels whose normalised attention is at least ``threshold``".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["riad_masks", "attention_mask", "content_seeded_map", "excise", "mosaic", "DEFAULT_KEEP", "DEFAULT_MOSAIC_CELL"]

DEFAULT_KEEP = 0.1
DEFAULT_MOSAIC_CELL = 8

Generator = torch.Generator | np.random.Generator | int | None


def riad_masks(
    height: int, width: int, k: int, n: int = 3, generator: Generator = None, *, device=None
) -> torch.Tensor:
    """``n x height x width`` boolean masks, disjoint and together covering the image.

    Cells are k x k pixels from the top-left; when ``height`` or ``width`` is not a multiple of
    k the last row/column of cells is cut short. The cells are shuffled and dealt into ``n``
    groups whose sizes differ by at most one cell (fewer cells than ``n`` leaves some masks
    empty). ``generator`` may be a ``torch.Generator``, a NumPy ``Generator`` or an int seed;
    the same seed gives the same masks. ``None`` draws from torch's global generator.
    """
    for name, v in (("height", height), ("width", width), ("k", k), ("n", n)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    rows, cols = math.ceil(height / k), math.ceil(width / k)
    cells = rows * cols
    if isinstance(generator, np.random.Generator):
        order = torch.from_numpy(generator.permutation(cells))
    else:
        if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
            generator = torch.Generator().manual_seed(int(generator))
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch or NumPy Generator, an int seed or None, got {type(generator).__name__}"
            )
        order = torch.randperm(cells, generator=generator)
    group = torch.empty(cells, dtype=torch.long)
    # rank r of the shuffled order goes to group floor(r * n / cells): contiguous, balanced
    group[order] = torch.arange(cells) * n // cells
    grid = group.view(rows, cols).repeat_interleave(k, 0).repeat_interleave(k, 1)[:height, :width]
    return (grid.unsqueeze(0) == torch.arange(n).view(n, 1, 1)).to(device)


def attention_mask(
    attention: torch.Tensor,
    size: int | tuple[int, int],
    keep: float | None = DEFAULT_KEEP,
    *,
    threshold: float | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """One boolean mask per attention map, at image size ``size`` = (H, W): True = excise.

    The map (``h x w``, ``1 x h x w`` or ``N x 1 x h x w``) is upsampled bilinearly (half-pixel
    centres) and min-max normalised to [0, 1] per image (a constant map becomes all zeros).
    With ``stride`` (the attention net's output stride) it is upsampled to ``h*stride x
    w*stride`` and cropped to ``size``, which keeps each attention cell over the pixels it
    came from; without it the map is stretched to ``size``.

    ``keep`` (default 0.1) hides exactly ``floor(keep * H * W + 0.5)`` pixels, those of highest
    attention; exact ties (a constant map, for one) are broken in raster order, the earlier
    pixel hidden first, so the same map always gives the same mask. ``threshold`` instead
    hides every pixel whose normalised attention is at least ``threshold``; pass
    ``keep=None`` with it. Returns the map's leading shape with the spatial size replaced
    by ``size``.
    """
    if (keep is None) == (threshold is None):
        raise ConfigError("give exactly one of keep (share of pixels to hide) and threshold")
    if keep is not None and not 0.0 <= keep <= 1.0:
        raise ConfigError(f"keep must be a share between 0 and 1, got {keep}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must lie in [0, 1] (the map is normalised), got {threshold}")
    if isinstance(size, int):
        size = (size, size)
    height, width = (int(s) for s in size)
    if min(height, width) < 1:
        raise ConfigError(f"size must be a positive (height, width), got {size}")
    if attention.dim() not in (2, 3, 4) or (attention.dim() >= 3 and attention.shape[-3] != 1):
        raise ValueError(f"attention must be h x w, 1 x h x w or N x 1 x h x w, got {tuple(attention.shape)}")

    lead = attention.shape[:-2]
    # normalised before upsampling too, so a constant map becomes exact zeros (all ties)
    # rather than interpolation rounding noise that the normalisation would blow up
    maps = _normalise(attention.detach().reshape(-1, 1, *attention.shape[-2:]).float())  # float32: what ONNX Resize takes, so an export masks alike
    if stride is not None:
        if stride < 1:
            raise ConfigError(f"stride must be positive, got {stride}")
        full = (maps.shape[2] * stride, maps.shape[3] * stride)
        if full[0] < height or full[1] < width:
            raise ValueError(
                f"attention map {tuple(maps.shape[2:])} at stride {stride} covers {full}, "
                f"less than the image {(height, width)}"
            )
        maps = F.interpolate(maps, size=full, mode="bilinear", align_corners=False)[:, :, :height, :width]
    else:
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    flat = _normalise(maps).flatten(1)

    if threshold is not None:
        mask = flat >= threshold
    else:
        count = int(math.floor(keep * height * width + 0.5))
        if count == 0:
            mask = torch.zeros_like(flat, dtype=torch.bool)
        else:
            # a stable descending sort, written with ops ONNX has (TopK, CumSum): everything
            # above the count-th value, then the earliest pixels tied with it
            kth = torch.topk(flat, count, dim=1).values[:, -1:]
            above, tied = flat > kth, flat == kth
            wanted = count - above.sum(1, keepdim=True)
            mask = above | (tied & (torch.cumsum(tied.to(torch.int64), 1) <= wanted))
    return mask.view(*lead, height, width).to(attention.device)


def content_seeded_map(images: torch.Tensor, stride: int, seed: int = 0) -> torch.Tensor:
    """``N x 1 x ceil(H/stride) x ceil(W/stride)`` uniform noise, each map seeded by ``seed`` and
    its image's bytes: a stand-in for an attention map that is random in *where* it points but
    still a fixed function of the image (EAR's ``mask_rule="random"`` ablation)."""
    import zlib

    if images.dim() != 4:
        raise ValueError(f"expected images N x C x H x W, got {tuple(images.shape)}")
    h, w = (math.ceil(s / stride) for s in images.shape[2:])
    pixels = images.detach().to("cpu", torch.float32).contiguous().numpy()
    maps = [np.random.default_rng([seed, zlib.crc32(p.tobytes())]).random((1, h, w)) for p in pixels]
    return torch.from_numpy(np.stack(maps)).to(images.device)


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] per ``N x 1 x h x w`` map; a constant map becomes zeros."""
    low = maps.amin(dim=(2, 3), keepdim=True)
    span = maps.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), torch.zeros_like(maps))


def mosaic(image: torch.Tensor, cell: int = DEFAULT_MOSAIC_CELL) -> torch.Tensor:
    """The image with every ``cell x cell`` block replaced by its mean (cut-short blocks at the
    bottom/right edges average only their own pixels)."""
    if image.dim() != 4:
        raise ValueError(f"expected images N x C x H x W, got {tuple(image.shape)}")
    if cell < 1:
        raise ConfigError(f"mosaic cell must be positive, got {cell}")
    h, w = image.shape[2:]
    pad = (0, -w % cell, 0, -h % cell)
    sums = F.avg_pool2d(F.pad(image, pad), cell) * cell * cell
    ones = torch.ones(1, 1, h, w, dtype=image.dtype, device=image.device)
    counts = F.avg_pool2d(F.pad(ones, pad), cell) * cell * cell
    means = sums / counts
    return means.repeat_interleave(cell, 2).repeat_interleave(cell, 3)[:, :, :h, :w]


def excise(
    image: torch.Tensor, mask: torch.Tensor, fill: str = "zeros", *, cell: int = DEFAULT_MOSAIC_CELL
) -> torch.Tensor:
    """``image`` (``N x C x H x W``) with the ``True`` pixels of ``mask`` replaced.

    ``fill="zeros"`` is EAR v1; ``"mosaic"`` (EAR v2) puts there the mean of the image's
    ``cell x cell`` block, all of the block's pixels counted, so only coarse brightness of the
    hidden region survives. ``mask`` is ``H x W``, ``N x H x W`` or ``N x 1 x H x W``.
    """
    if image.dim() != 4:
        raise ValueError(f"expected images N x C x H x W, got {tuple(image.shape)}")
    if mask.dim() == 2:
        mask = mask.view(1, 1, *mask.shape)
    elif mask.dim() == 3:
        mask = mask.unsqueeze(1)
    fits = mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2:] == image.shape[2:]
    if not fits or mask.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(image.shape)}")
    mask = mask.to(device=image.device, dtype=torch.bool)
    if fill == "zeros":
        replacement = torch.zeros_like(image)
    elif fill == "mosaic":
        replacement = mosaic(image, cell)
    else:
        raise ConfigError(f"fill must be 'zeros' or 'mosaic', got {fill!r}")
    return torch.where(mask, replacement, image)
