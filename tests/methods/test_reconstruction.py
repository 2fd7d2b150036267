"""SSIM, GMS/MSGMS, the RIAD loss and the mean filter against direct float64 NumPy/SciPy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from defectkit.methods.reconstruction import (
    gms_map,
    mean_filter,
    msgms_loss,
    msgms_map,
    reconstruction_loss,
    ssim_loss,
    ssim_map,
)

C_GMS = 0.0026


# --------------------------------------------------------------------------------------------
# Independent references: plain NumPy/SciPy, float64, written from the formulas
# --------------------------------------------------------------------------------------------


def _ssim_ref(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x, y: H x W. Gaussian 11 / sigma 1.5, statistics over an edge-replicated image."""
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    blur = lambda a: ndimage.correlate(a, window, mode="nearest")  # noqa: E731
    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def _gms_ref(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x, y: C x H x W. Prewitt / 3 on the channel mean, edge-replicated."""
    kx = np.array([[-1, 0, 1]] * 3, dtype=np.float64) / 3

    def magnitude(a):
        a = a.mean(axis=0)
        return np.hypot(ndimage.correlate(a, kx, mode="nearest"), ndimage.correlate(a, kx.T, mode="nearest"))

    g1, g2 = magnitude(x), magnitude(y)
    return (2 * g1 * g2 + C_GMS) / (g1**2 + g2**2 + C_GMS)


def _upsample_ref(a: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear, half-pixel centres, source index clamped at the edges."""
    for axis in (0, 1):
        n = a.shape[axis]
        src = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0, n - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        t = src - i0
        a0, a1 = np.take(a, i0, axis=axis), np.take(a, i1, axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        a = a0 * (1 - t.reshape(shape)) + a1 * t.reshape(shape)
    return a


def _msgms_ref(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x, y: C x H x W -> H x W."""
    _, h, w = x.shape
    pad = ((0, 0), (0, -h % 8), (0, -w % 8))
    x, y = np.pad(x, pad, mode="edge"), np.pad(y, pad, mode="edge")
    total = np.zeros(x.shape[1:])
    for s in range(4):
        if s:  # 2x2 block means
            c, hh, ww = x.shape
            x = x.reshape(c, hh // 2, 2, ww // 2, 2).mean(axis=(2, 4))
            y = y.reshape(c, hh // 2, 2, ww // 2, 2).mean(axis=(2, 4))
        total += _upsample_ref(_gms_ref(x, y), 2**s)
    return (1 - total / 4)[:h, :w]


def _mean_filter_ref(a: np.ndarray, size: int) -> np.ndarray:
    before, after = (size - 1) // 2, size // 2
    out = np.empty_like(a)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = a[max(0, i - before) : i + after + 1, max(0, j - before) : j + after + 1].mean()
    return out


def _pair(shape, seed=0):
    """An image and a distorted copy: smooth structure plus noise, all within [0, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    x = ndimage.gaussian_filter(x, sigma=(0,) * (len(shape) - 2) + (1, 1))
    x = (x - x.min()) / (x.max() - x.min())
    y = np.clip(x + 0.15 * rng.standard_normal(shape), 0, 1)
    return x, y


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (2, 3, 13, 20)])
def test_ssim_matches_direct_computation(shape):
    x, y = _pair(shape)
    got = ssim_map(_t(x), _t(y)).numpy()
    assert got.shape == shape
    for n in range(shape[0]):
        for c in range(shape[1]):
            np.testing.assert_allclose(got[n, c], _ssim_ref(x[n, c], y[n, c]), rtol=0, atol=1e-10)
    assert ssim_loss(_t(x), _t(y)).item() == pytest.approx(1 - got.mean(), abs=1e-12)
    # float32 agrees to single precision
    got32 = ssim_map(_t(x).float(), _t(y).float()).double().numpy()
    np.testing.assert_allclose(got32, got, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (2, 3, 13, 21)])
def test_gms_matches_direct_computation(shape):
    x, y = _pair(shape, seed=1)
    got = gms_map(_t(x), _t(y)).numpy()
    assert got.shape == (shape[0], 1, *shape[2:])
    for n in range(shape[0]):
        np.testing.assert_allclose(got[n, 0], _gms_ref(x[n], y[n]), rtol=0, atol=1e-6)
    assert got.min() < 0.9  # the distortion is visible: the test is not comparing constants


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (2, 3, 13, 21), (1, 1, 8, 9)])
def test_msgms_matches_direct_computation(shape):
    x, y = _pair(shape, seed=2)
    got = msgms_map(_t(x), _t(y)).numpy()
    assert got.shape == (shape[0], 1, *shape[2:])
    for n in range(shape[0]):
        np.testing.assert_allclose(got[n, 0], _msgms_ref(x[n], y[n]), rtol=0, atol=1e-6)
    assert msgms_loss(_t(x), _t(y)).item() == pytest.approx(got.mean(), abs=1e-12)
    assert got.max() > 0.05


def test_identical_images_give_ssim_one_and_a_zero_msgms_map():
    x, _ = _pair((2, 3, 19, 24), seed=3)
    x = _t(x)
    torch.testing.assert_close(ssim_map(x, x), torch.ones_like(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(msgms_map(x, x), torch.zeros(2, 1, 19, 24, dtype=x.dtype), rtol=0, atol=1e-12)
    assert reconstruction_loss(x, x).abs().item() < 1e-12
    flat = torch.full((1, 1, 16, 16), 0.5)
    assert msgms_map(flat, flat).abs().max() < 1e-6 and ssim_loss(flat, flat).abs() < 1e-6


def test_reconstruction_loss_is_the_equal_sum():
    x, y = _pair((1, 1, 24, 24), seed=4)
    expected = ((x - y) ** 2).mean() + _msgms_ref(x[0], y[0]).mean() + 1 - _ssim_ref(x[0, 0], y[0, 0]).mean()
    assert reconstruction_loss(_t(y), _t(x)).item() == pytest.approx(expected, abs=1e-9)


def test_loss_is_differentiable():
    x, y = _pair((1, 1, 8, 8), seed=5)
    target = _t(x)
    recon = _t(y).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: reconstruction_loss(r, target), (recon,), eps=1e-6, atol=1e-5)
    # flat regions (zero gradient magnitude) must not give NaN gradients
    flat = torch.full((1, 1, 16, 16), 0.3, requires_grad=True)
    reconstruction_loss(flat, torch.full((1, 1, 16, 16), 0.3)).backward()
    assert torch.isfinite(flat.grad).all()


def test_a_few_gradient_steps_reduce_the_loss():
    x, y = _pair((1, 1, 16, 16), seed=6)
    target = _t(x).float()
    recon = _t(y).float().requires_grad_(True)
    opt = torch.optim.SGD([recon], lr=0.5)
    first = reconstruction_loss(recon, target).item()
    for _ in range(5):
        opt.zero_grad()
        loss = reconstruction_loss(recon, target)
        loss.backward()
        opt.step()
    assert reconstruction_loss(recon, target).item() < 0.8 * first


@pytest.mark.parametrize("size", [1, 4, 5, 21])
def test_mean_filter_matches_direct_average_inside_the_image(size):
    rng = np.random.default_rng(7)
    a = rng.random((2, 1, 9, 12))
    got = mean_filter(_t(a), size).numpy()
    assert got.shape == a.shape
    for n in range(2):
        np.testing.assert_allclose(got[n, 0], _mean_filter_ref(a[n, 0], size), rtol=0, atol=1e-12)
    ones = mean_filter(torch.ones(1, 1, 30, 30), 21)
    torch.testing.assert_close(ones, torch.ones_like(ones))  # no darkened border


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        ssim_map(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="same shape"):
        msgms_map(torch.zeros(1, 1, 8, 8), torch.zeros(1, 3, 8, 8))
