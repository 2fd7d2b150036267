"""RIAD's random cell masks and EAR's deterministic attention excision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectkit.errors import ConfigError
from defectkit.methods.masks import DEFAULT_KEEP, attention_mask, excise, mosaic, riad_masks

# --------------------------------------------------------------------------------------------
# RIAD
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "k"), [(32, 32, 2), (32, 32, 16), (30, 45, 8), (7, 5, 4), (3, 3, 16)])
def test_riad_masks_are_disjoint_cover_and_follow_the_cells(h, w, k):
    masks = riad_masks(h, w, k, generator=0)
    assert masks.shape == (3, h, w) and masks.dtype == torch.bool
    assert torch.equal(masks.sum(0), torch.ones(h, w, dtype=torch.long))  # disjoint and covering
    # every k x k cell (cut short at the edges) is hidden by exactly one mask, as a whole
    for r in range(0, h, k):
        for c in range(0, w, k):
            cell = masks[:, r : r + k, c : c + k]
            assert cell.all(dim=(1, 2)).sum() == 1 and (cell.any(dim=(1, 2)) == cell.all(dim=(1, 2))).all()


def test_riad_groups_are_balanced():
    masks = riad_masks(64, 64, 4, n=3, generator=1)  # 256 cells -> 86, 85, 85
    cells = sorted((masks.sum(dim=(1, 2)) // 16).tolist())
    assert cells == [85, 85, 86]
    masks = riad_masks(8, 8, 4, n=5, generator=1)  # 4 cells, 5 masks: one is empty, still disjoint
    assert masks.sum(dim=(1, 2)).tolist().count(0) == 1 and masks.sum(0).eq(1).all()


def test_riad_masks_are_repeatable_with_a_seed_and_differ_between_seeds():
    a = riad_masks(32, 32, 4, generator=torch.Generator().manual_seed(5))
    b = riad_masks(32, 32, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(riad_masks(32, 32, 4, generator=7), riad_masks(32, 32, 4, generator=7))
    assert not torch.equal(riad_masks(32, 32, 4, generator=7), riad_masks(32, 32, 4, generator=8))
    n1 = riad_masks(32, 32, 4, generator=np.random.default_rng(3))
    n2 = riad_masks(32, 32, 4, generator=np.random.default_rng(3))
    assert torch.equal(n1, n2)
    # one generator drawn twice moves on: training gets fresh masks each batch
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(riad_masks(32, 32, 4, generator=g), riad_masks(32, 32, 4, generator=g))


def test_riad_bad_arguments():
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        riad_masks(8, 8, 0)
    with pytest.raises(TypeError, match="generator"):
        riad_masks(8, 8, 2, generator="seed")


# --------------------------------------------------------------------------------------------
# EAR attention mask
# --------------------------------------------------------------------------------------------


def _attention(n=2, h=7, w=7, seed=0):
    a = torch.rand(n, 1, h, w, generator=torch.Generator().manual_seed(seed))
    return a / a.sum(dim=(2, 3), keepdim=True)


@pytest.mark.parametrize(
    ("size", "keep"), [((28, 28), 0.1), ((30, 45), 0.1), ((17, 13), 0.25), ((28, 28), 0.0), ((28, 28), 1.0)]
)
def test_attention_mask_covers_the_documented_share(size, keep):
    h, w = size
    mask = attention_mask(_attention(), size, keep=keep)
    assert mask.shape == (2, 1, h, w) and mask.dtype == torch.bool
    expected = int(np.floor(keep * h * w + 0.5))
    assert mask.sum(dim=(1, 2, 3)).tolist() == [expected, expected]


def test_attention_mask_hides_the_highest_attention():
    att = torch.zeros(1, 1, 4, 4)
    att[0, 0, 1, 2] = 1.0  # one hot cell
    mask = attention_mask(att, (16, 16), keep=0.05, stride=4)  # 13 pixels
    ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
    assert mask.sum() == 13
    assert ys.min() >= 4 and ys.max() < 8 and xs.min() >= 8 and xs.max() < 12  # inside the hot cell


def test_attention_mask_is_deterministic_and_breaks_ties_in_raster_order():
    att = _attention(1, 7, 7, seed=4)
    first = attention_mask(att, (28, 28))
    for _ in range(3):
        assert torch.equal(attention_mask(att.clone(), (28, 28)), first)
    assert first.sum() == round(DEFAULT_KEEP * 784)
    # a constant map is all ties: the first pixels in raster order are hidden
    flat = attention_mask(torch.full((7, 7), 1 / 49), (10, 10), keep=0.15)
    assert flat.shape == (10, 10)
    assert flat.flatten()[:15].all() and not flat.flatten()[15:].any()


def test_attention_mask_threshold_rule_and_stride_alignment():
    att = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    # stride 4 puts each cell over its own 4 x 4 pixels (cropped to 6 x 7); 0.6 keeps the
    # pixels at least 60% of the way from the lowest attention to the highest
    mask = attention_mask(att, (6, 7), keep=None, threshold=0.6, stride=4)
    assert mask.shape == (6, 7)
    assert mask[5, 0] and not mask[0, 0] and not mask[0, 6]
    # stretching instead of stride-aligning differs on a size that is not a multiple
    assert not torch.equal(mask, attention_mask(att, (6, 7), keep=None, threshold=0.6))
    with pytest.raises(ConfigError, match="exactly one"):
        attention_mask(att, (6, 7), keep=0.1, threshold=0.5)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        attention_mask(att, (6, 7), keep=1.5)
    with pytest.raises(ValueError, match="covers"):
        attention_mask(att, (9, 9), stride=4)


def test_attention_mask_from_the_attention_model():
    from defectkit.models import create_model

    torch.manual_seed(0)
    model = create_model("attention").eval()
    x = torch.rand(1, 1, 30, 41)
    with torch.no_grad():
        a = model.attention_map(x)
    mask = attention_mask(a, x.shape[2:], keep=0.1, stride=model.output_stride)
    assert mask.shape == (1, 1, 30, 41) and mask.sum() == round(0.1 * 30 * 41)


# --------------------------------------------------------------------------------------------
# Excision
# --------------------------------------------------------------------------------------------


def test_excise_with_zeros_touches_only_the_mask():
    image = torch.rand(2, 3, 12, 10) + 0.1
    mask = torch.zeros(2, 1, 12, 10, dtype=torch.bool)
    mask[0, 0, 2:5, 3:7] = True
    out = excise(image, mask)
    assert (out[0, :, 2:5, 3:7] == 0).all()
    assert torch.equal(out[~mask.expand_as(image)], image[~mask.expand_as(image)])
    assert torch.equal(out[1], image[1])
    assert torch.equal(excise(image, mask[0, 0]), torch.where(mask[0, 0], 0.0, image))  # H x W mask broadcasts


def test_mosaic_fill_is_the_cell_mean():
    image = torch.arange(2 * 1 * 6 * 5, dtype=torch.float64).view(2, 1, 6, 5)
    mask = torch.ones(6, 5, dtype=torch.bool)
    out = excise(image, mask, fill="mosaic", cell=4)
    # cells: rows 0-3 / 4-5, columns 0-3 / 4 (cut-short cells average their own pixels)
    for n in range(2):
        for rs, cs in [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 5)),
                       (slice(4, 6), slice(0, 4)), (slice(4, 6), slice(4, 5))]:  # fmt: skip
            block = out[n, 0, rs, cs]
            assert torch.allclose(block, image[n, 0, rs, cs].mean().expand_as(block))
    assert torch.equal(mosaic(image, 1), image)
    partial = torch.zeros(6, 5, dtype=torch.bool)
    partial[0, 0] = True
    out = excise(image, partial, fill="mosaic", cell=4)
    assert out[0, 0, 0, 0] == image[0, 0, :4, :4].mean() and torch.equal(out[0, 0, 1:], image[0, 0, 1:])


def test_excise_is_deterministic_and_checks_its_arguments():
    image = torch.rand(1, 1, 28, 28)
    mask = attention_mask(_attention(1), (28, 28))
    assert torch.equal(excise(image, mask, fill="mosaic"), excise(image.clone(), mask.clone(), fill="mosaic"))
    with pytest.raises(ConfigError, match="fill must be"):
        excise(image, mask, fill="noise")
    with pytest.raises(ValueError, match="does not fit"):
        excise(image, torch.zeros(27, 28, dtype=torch.bool))
