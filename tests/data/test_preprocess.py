from __future__ import annotations

import numpy as np
import pytest
import torch
from layouts import image, mask, write

from defectkit.data.preprocess import Preprocessing, dilate, distance_weights, downsample
from defectkit.data.sample import Sample
from defectkit.errors import ConfigError, DataError


def brute_force_distance(mask: np.ndarray) -> np.ndarray:
    """float64 Euclidean distance from every positive pixel to the nearest negative pixel."""
    pos = np.argwhere(mask > 0)
    neg = np.argwhere(mask == 0)
    out = np.zeros(mask.shape)
    if len(pos) and len(neg):
        d = np.sqrt(((pos[:, None, :] - neg[None, :, :]) ** 2).sum(-1)).min(1)
        out[tuple(pos.T)] = d
    return out


def random_mask(rng, shape=(20, 24)):
    m = np.zeros(shape, np.float32)
    for _ in range(3):
        r, c = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 8)
        m[r : r + rng.integers(2, 6), c : c + rng.integers(2, 8)] = 1
    return m


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p, max_value", [(1.0, 1.0), (2.0, 3.0), (1.0, 10.0)])
def test_distance_weights_match_a_float64_recomputation(seed, p, max_value):
    m = random_mask(np.random.default_rng(seed))
    d = brute_force_distance(m)
    expected = np.where(m > 0, max_value * (d / d.max()) ** p, 1.0)
    np.testing.assert_allclose(distance_weights(m, max_value, p), expected, rtol=1e-6)


def test_distance_weights_per_component_normalises_each_defect():
    m = np.zeros((30, 30), np.float32)
    m[2:5, 2:5] = 1  # small: peak distance 2
    m[10:25, 10:25] = 1  # large: peak distance 8
    w = distance_weights(m, 1.0, 1.0, per_component=True)
    assert w[3, 3] == pytest.approx(1.0) and w[17, 17] == pytest.approx(1.0)
    w_global = distance_weights(m, 1.0, 1.0)
    assert w_global[3, 3] == pytest.approx(2 / 8)
    assert (distance_weights(np.zeros((5, 5)), 3, 2) == 1).all()


@pytest.mark.parametrize("shape", [(64, 64), (1408 // 8, 512 // 8), (40, 232), (16, 24)])
def test_downsample_matches_reflect_pad_and_avg_pool(shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    t = torch.from_numpy(x)[None, None]
    ref = torch.nn.AvgPool2d(17, stride=8)(torch.nn.ReflectionPad2d(8)(t))[0, 0].numpy()
    out = downsample(x)
    assert out.shape == (shape[0] // 8, shape[1] // 8) == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_downsample_refuses_tiny_maps():
    with pytest.raises(DataError, match="both sides must exceed 8"):
        downsample(np.zeros((8, 16)))


def test_dilate_uses_a_box_of_ones():
    m = np.zeros((11, 11), np.uint8)
    m[5, 5] = 1
    assert dilate(m, 7).sum() == 49 and dilate(m, 1).sum() == 1 and dilate(m, 0).sum() == 1


def test_preprocessing_load(tmp_path):
    img = write(tmp_path / "a.png", image(48, 40))
    msk = write(tmp_path / "a_mask.png", mask(48, 40))
    pre = Preprocessing(input_size=(32, 64), channels=1, dilate=3, weight_p=2, weight_max=3)
    sample = Sample("a", img, True, mask_path=msk)
    x, target, weights = pre.load(sample)
    assert x.shape == (1, 64, 32) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert target.shape == weights.shape == (8, 4)
    assert 0 < target.max() <= 1 and weights.max() > 1  # soft targets; distance weights up to MAX=3
    rgb = Preprocessing(input_size=(32, 64), channels=3).image(sample)
    assert rgb.shape == (3, 64, 32)
    weak = Sample("a", img, True, mask_path=msk, pixel_labelled=False)
    _, t, w = pre.load(weak)
    assert not t.any() and not w.any()  # no segmentation loss for an image-label-only defect
    good = Sample("g", img, False)
    _, t, w = pre.load(good)
    assert not t.any() and np.allclose(w, 1)


def test_preprocessing_rejects_mismatched_mask_and_bad_config(tmp_path):
    img = write(tmp_path / "a.png", image(48, 40))
    msk = write(tmp_path / "a_mask.png", mask(40, 40))
    with pytest.raises(DataError, match="a_mask.png: mask is 40x40 but its image a.png is 40x48"):
        Preprocessing(input_size=(32, 32)).load(Sample("a", img, True, mask_path=msk))
    with pytest.raises(ConfigError, match="multiples of 8"):
        Preprocessing(input_size=(30, 32))


def test_unreadable_image_is_named(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        Preprocessing(input_size=(32, 32)).image(Sample("b", broken, False))
    with pytest.raises(DataError, match="gone.png: file not found"):
        Preprocessing(input_size=(32, 32)).image(Sample("g", tmp_path / "gone.png", False))
