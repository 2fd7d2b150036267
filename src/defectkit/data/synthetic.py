"""Built-in synthetic surface-inspection data, in the spirit of DAGM 2007.

The demo and the tests need a dataset that exists without a download, is the same on every
run, is generated in a second or two, and is neither impossible nor trivial to learn. Images
are procedural grayscale textures with one procedural defect each (or none); masks are exact
because the generator knows which pixels it changed.

Each image is drawn from three independent streams (texture, defect, sensor noise) seeded
from the caller's generator, so the same generator state rendered with and without a defect
gives the same surface: the two images differ only where the defect is.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, DataError

DEFECT_KINDS = ("scratch", "spot", "crack")
TEXTURES = ("smooth", "brushed", "grainy", "blotchy", "woven")
FORMAT_VERSION = 1
META_NAME = "synthetic.json"
MIN_SIZE = 32
SPLITS = ("train", "test")
# What `defectkit demo` trains and tests on. With 100 of each class the small net memorised its
# training images (test AP 0.81); 600 of each let the tiny net learn the task (test AP 0.98),
# and 400 of each (320 trained on, 80 validate) do as well at two thirds of the training time
# (docs/benchmarks.md, the demo).
DEMO_COUNTS = {"n_train_good": 400, "n_train_defective": 400, "n_test_good": 50, "n_test_defective": 50}
CLASSES = ("good", "defective")

# A pixel belongs to the mask when the defect moves it by at least this many grey levels
# (before sensor noise): about twice the noise, so the mask is what a careful annotator
# could see, and what lies outside it is changed by less than that, if at all.
MASK_MIN_CHANGE = 5.0
_SUPERSAMPLE = 4  # strokes are drawn this much finer, then area-averaged: anti-aliased lines
_MIN_AMPLITUDE = 18.0  # grey levels: below this a defect drowns in the texture
_MAX_AMPLITUDE = 60.0  # above this it is a saturated blob, trivial to find
_STEM = re.compile(r"^(train|test)_(good|defective)_\d{4,}$")


# --------------------------------------------------------------------------- textures


def _unit(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit std: families then mix in comparable units."""
    x = x - x.mean()
    std = float(x.std())
    return x / std if std > 1e-6 else x


def _noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Isotropic Gaussian-filtered noise; wide filters run at reduced resolution to stay cheap."""
    if sigma < 0.3:
        return _unit(rng.standard_normal((h, w), dtype=np.float32))
    k = max(1, int(sigma // 3))
    sh, sw = -(-h // k) + 2, -(-w // k) + 2
    n = rng.standard_normal((sh, sw), dtype=np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma / k, borderType=cv2.BORDER_REFLECT)
    if k > 1:
        n = cv2.resize(n, (sw * k, sh * k), interpolation=cv2.INTER_CUBIC)
        n = n[k : k + h, k : k + w]
    else:
        n = n[1 : 1 + h, 1 : 1 + w]
    return _unit(n)


def _rotate_crop(canvas: np.ndarray, angle_deg: float, h: int, w: int) -> np.ndarray:
    d = canvas.shape[0]
    m = cv2.getRotationMatrix2D((d / 2.0, d / 2.0), angle_deg, 1.0)
    out = cv2.warpAffine(canvas, m, (d, d), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    y0, x0 = (d - h) // 2, (d - w) // 2
    return out[y0 : y0 + h, x0 : x0 + w]


def _smooth(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
    """Matte cast or painted surface: soft isotropic mottling at two scales."""
    fine = _noise(rng, h, w, rng.uniform(1.2, 3.0))
    coarse = _noise(rng, h, w, rng.uniform(5.0, 12.0))
    tex = _unit(fine + rng.uniform(0.4, 1.2) * coarse + 0.25 * _noise(rng, h, w, 0.0))
    return tex, rng.uniform(7.0, 16.0)


def _brushed(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
    """Brushed or rolled metal: long streaks along one direction, usually near an axis."""
    d = int(math.ceil(math.hypot(h, w))) + 4
    along, across = rng.uniform(6.0, 20.0), rng.uniform(0.6, 1.6)
    streaks = cv2.GaussianBlur(rng.standard_normal((d, d), dtype=np.float32), (0, 0), sigmaX=along, sigmaY=across)
    rows = cv2.GaussianBlur(rng.standard_normal((d, 1), dtype=np.float32), (0, 0), rng.uniform(0.8, 3.0))
    tex = _unit(streaks) + rng.uniform(0.3, 0.9) * _unit(np.repeat(rows, d, axis=1))
    if rng.random() < 0.4:  # machining marks: a faint regular ribbing
        period = rng.uniform(4.0, 12.0)
        phase = np.cumsum(rng.normal(0.0, 0.05, size=d)).astype(np.float32)
        tex = tex + rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * np.arange(d, dtype=np.float32) / period + phase)[:, None]
    angle = rng.choice([0.0, 90.0]) + rng.normal(0.0, 4.0) if rng.random() < 0.7 else rng.uniform(0.0, 180.0)
    tex = _rotate_crop(tex.astype(np.float32), float(angle), h, w)
    tex = _unit(tex + 0.3 * _noise(rng, h, w, 0.0))
    return tex, rng.uniform(8.0, 18.0)


def _grainy(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
    """Sand-blasted or sintered surface: fine grain with sparse bright and dark specks."""
    grain = _noise(rng, h, w, rng.uniform(0.5, 1.1))
    specks = (rng.random((h, w), dtype=np.float32) < rng.uniform(0.01, 0.05)) * rng.choice(
        np.array([-1.0, 1.0], dtype=np.float32), size=(h, w)
    )
    specks = _unit(cv2.GaussianBlur(specks.astype(np.float32), (0, 0), rng.uniform(0.6, 1.2)))
    tex = grain + rng.uniform(0.4, 1.0) * specks + rng.uniform(0.2, 0.6) * _noise(rng, h, w, rng.uniform(6.0, 14.0))
    return _unit(tex), rng.uniform(10.0, 20.0)


def _blotchy(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
    """Stained, oxidised or unevenly coated surface: large patches with softly sharp edges."""
    sigma = rng.uniform(0.06, 0.14) * min(h, w)
    sharp = rng.uniform(0.5, 2.5)
    blotch = np.tanh(sharp * _noise(rng, h, w, sigma)) / np.tanh(sharp)
    tex = _unit(blotch) + rng.uniform(0.2, 0.5) * _noise(rng, h, w, rng.uniform(1.5, 3.0)) + 0.15 * _noise(rng, h, w, 0.0)
    return _unit(tex), rng.uniform(9.0, 20.0)


def _woven(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
    """Fabric, mesh or knurled surface: two crossing periodic patterns with wandering phase."""
    angle = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    p1 = rng.uniform(5.0, 11.0)
    p2 = p1 * rng.uniform(0.8, 1.25)
    jitter = rng.uniform(0.3, 1.0)
    a = np.sin(2 * np.pi * u / p1 + jitter * _noise(rng, h, w, rng.uniform(6.0, 12.0)))
    b = np.sin(2 * np.pi * v / p2 + jitter * _noise(rng, h, w, rng.uniform(6.0, 12.0)))
    thread = a + rng.uniform(0.5, 1.0) * b + rng.uniform(0.2, 0.8) * a * b
    tex = thread * (1.0 + 0.25 * _noise(rng, h, w, rng.uniform(8.0, 16.0))) + 0.35 * _noise(rng, h, w, 0.7)
    return _unit(tex), rng.uniform(8.0, 16.0)


_TEXTURE_FNS = {"smooth": _smooth, "brushed": _brushed, "grainy": _grainy, "blotchy": _blotchy, "woven": _woven}


def _surface(rng: np.random.Generator, h: int, w: int, family: str) -> tuple[np.ndarray, float]:
    """Texture in grey levels under slightly uneven lighting, plus its contrast (std)."""
    tex, contrast = _TEXTURE_FNS[family](rng, h, w)
    mean = rng.uniform(70.0, 180.0)
    tilt = rng.uniform(0.0, 12.0)  # grey levels across the image
    theta = rng.uniform(0.0, 2 * np.pi)
    gx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :] * np.cos(theta)
    gy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None] * np.sin(theta)
    base = mean + contrast * tex + tilt * (gx + gy)
    return base.astype(np.float32), float(contrast)


# --------------------------------------------------------------------------- defects


def _amplitude(rng: np.random.Generator, base: np.ndarray, contrast: float, lo: float, hi: float, sign: float) -> float:
    """Signed defect strength relative to the texture contrast, kept clear of saturation."""
    mag = float(np.clip(rng.uniform(lo, hi) * contrast, _MIN_AMPLITUDE, _MAX_AMPLITUDE))
    mean = float(base.mean())
    room_up, room_down = 245.0 - mean - 1.5 * contrast, mean - 1.5 * contrast - 10.0
    room = room_up if sign > 0 else room_down
    if room < mag:
        other = room_down if sign > 0 else room_up
        if other >= mag:
            sign = -sign
        else:
            if other > room:
                sign, room = -sign, other
            mag = max(room, _MIN_AMPLITUDE)
    return sign * mag


def _strokes(h: int, w: int, strokes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Coverage (0..1) of polylines with per-segment width and strength, anti-aliased."""
    s = _SUPERSAMPLE
    canvas = np.zeros((h * s, w * s), dtype=np.uint8)
    for points, widths, strengths in strokes:
        p = np.round((points + 0.5) * s - 0.5).astype(np.int32)
        for i in range(len(p) - 1):
            thickness = max(1, int(round(widths[i] * s)))
            value = int(round(255 * float(np.clip(strengths[i], 0.0, 1.0))))
            cv2.line(canvas, (int(p[i, 0]), int(p[i, 1])), (int(p[i + 1, 0]), int(p[i + 1, 1])), value, thickness, cv2.LINE_8)
    alpha = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0.5)  # a little optical blur; reaches one pixel out
    # A line thinner than a pixel covers none fully; it is seen as narrow and deep, not faint.
    peak = float(alpha.max())
    return alpha / peak if peak > 0 else alpha


def _taper(n: int, rng: np.random.Generator, ends: float) -> np.ndarray:
    """Strength along a stroke: fades in and out at the ends and wavers a little between."""
    t = np.linspace(0.0, 1.0, n)
    edge = 0.4 + 0.6 * np.clip(np.minimum(t, 1.0 - t) / ends, 0.0, 1.0)  # ends faint, not gone
    waver = 1.0 + 0.15 * np.sin(2 * np.pi * (rng.uniform(0.5, 2.0) * t + rng.random()))
    return np.clip(edge * waver, 0.0, 1.0)


def _scratch(rng: np.random.Generator, base: np.ndarray, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """A tool or handling scratch: thin, straight or gently bowed, darker or brighter."""
    h, w = base.shape
    length = rng.uniform(0.3, 0.8) * min(h, w)
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    half = 0.5 * length * np.abs(direction)
    cx = rng.uniform(half[0] + 2, w - 3 - half[0]) if w - 5 > 2 * half[0] else w / 2
    cy = rng.uniform(half[1] + 2, h - 3 - half[1]) if h - 5 > 2 * half[1] else h / 2
    p0 = np.array([cx, cy]) - 0.5 * length * direction
    p1 = np.array([cx, cy]) + 0.5 * length * direction
    bow = rng.uniform(-0.12, 0.12) * length if rng.random() < 0.6 else 0.0
    control = np.array([cx, cy]) + bow * np.array([-direction[1], direction[0]])
    t = np.linspace(0.0, 1.0, 40)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * control + t**2 * p1
    points[:, 0] = np.clip(points[:, 0], 0, w - 1)
    points[:, 1] = np.clip(points[:, 1], 0, h - 1)
    width = rng.uniform(0.8, 2.0)
    alpha = _strokes(h, w, [(points, np.full(39, width), _taper(39, rng, 0.15))])
    amp = _amplitude(rng, base, contrast, 1.6, 2.8, 1.0 if rng.random() < 0.5 else -1.0)
    return amp * alpha, np.abs(amp) * alpha


def _spot(rng: np.random.Generator, base: np.ndarray, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """A stain, pit or inclusion: an irregular elliptical blob with a soft rim that also
    partly washes out the texture inside, as real contamination does."""
    h, w = base.shape
    m = min(h, w)
    a = rng.uniform(0.04, 0.13) * m
    b = max(2.0, a * rng.uniform(0.45, 1.0))
    cx, cy = rng.uniform(a + 2, w - a - 2), rng.uniform(a + 2, h - a - 2)
    angle = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    phi = np.arctan2(v / b, u / a)
    wobble = sum(rng.uniform(0.0, top) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k, top in ((2, 0.12), (3, 0.08), (5, 0.04)))
    r = r / (1.0 + wobble)
    soft = rng.uniform(0.15, 0.5)  # rim width in units of the radius
    alpha = np.clip((1.0 + soft / 2 - r) / soft, 0.0, 1.0)
    alpha = (alpha * alpha * (3.0 - 2.0 * alpha)).astype(np.float32)  # smoothstep
    amp = _amplitude(rng, base, contrast, 1.4, 2.6, 1.0 if rng.random() < 0.4 else -1.0)
    washout = rng.uniform(0.0, 0.6)
    flat = cv2.GaussianBlur(base, (0, 0), 3.0)
    return alpha * amp + alpha * alpha * washout * (flat - base), np.abs(amp) * alpha


def _crack(rng: np.random.Generator, base: np.ndarray, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """A fatigue or drying crack: a dark, jagged, branching random walk."""
    h, w = base.shape
    m = min(h, w)
    margin = 0.15
    strokes = []

    def walk(start: np.ndarray, heading: float, steps: int, width: float, depth: int) -> None:
        points = [start]
        pos = start.copy()
        drift = rng.normal(0.0, 0.04)
        for _ in range(steps):
            heading += drift + rng.normal(0.0, 0.35)
            pos = pos + rng.uniform(1.5, 3.0) * m / 128 * np.array([np.cos(heading), np.sin(heading)])
            if not (0 <= pos[0] <= w - 1 and 0 <= pos[1] <= h - 1):
                break
            points.append(pos)
            if depth < 2 and len(strokes) < 5 and rng.random() < 0.05:
                side = 1.0 if rng.random() < 0.5 else -1.0
                walk(pos.copy(), heading + side * rng.uniform(0.4, 1.1), int(steps * rng.uniform(0.2, 0.5)), width * 0.7, depth + 1)
        if len(points) >= 2:
            n = len(points) - 1
            widths = np.maximum(width * np.linspace(1.0, rng.uniform(0.4, 0.8), n), 0.6)
            strength = np.clip(_taper(n, rng, 0.1 if depth == 0 else 0.3) * 1.3, 0.0, 1.0)
            strokes.append((np.array(points), widths, strength))

    start = np.array([rng.uniform(margin * w, (1 - margin) * w), rng.uniform(margin * h, (1 - margin) * h)])
    heading = rng.uniform(0.0, 2 * np.pi)
    steps = int(rng.uniform(0.25, 0.55) * m / (2.25 * m / 128))
    width = rng.uniform(1.0, 2.0)
    walk(start, heading, steps, width, 0)
    # grow the other way too, so the start is not a visible end
    walk(start, heading + np.pi + rng.normal(0.0, 0.3), int(steps * rng.uniform(0.3, 0.8)), width, 1)
    alpha = _strokes(h, w, strokes)
    amp = _amplitude(rng, base, contrast, 1.8, 3.0, -1.0)
    return amp * alpha, np.abs(amp) * alpha


# Each returns (change to add to the surface, its nominal size in grey levels without the
# texture wash-out). The mask is where either reaches MASK_MIN_CHANGE: the footprint of the
# defect as drawn, plus any pixel its wash-out moved as far.
_DEFECT_FNS = {"scratch": _scratch, "spot": _spot, "crack": _crack}


# --------------------------------------------------------------------------- rendering


def _check_size(size) -> tuple[int, int]:
    try:
        width, height = size
    except (TypeError, ValueError):
        raise ConfigError(f"synthetic image size must be (width, height), got {size!r}") from None
    for value in (width, height):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < MIN_SIZE:
            raise ConfigError(f"synthetic image size must be two integers >= {MIN_SIZE}, got {size!r}")
    return int(width), int(height)


def _check_texture(texture: str) -> str:
    if texture != "mixed" and texture not in TEXTURES:
        raise ConfigError(f"unknown synthetic texture '{texture}' (choose from mixed, {', '.join(TEXTURES)})")
    return texture


def _render(rng: np.random.Generator, size, defect: str | None, texture: str) -> tuple[np.ndarray, np.ndarray, str]:
    width, height = _check_size(size)
    _check_texture(texture)
    if defect is not None and defect not in DEFECT_KINDS:
        raise ConfigError(f"unknown synthetic defect '{defect}' (choose from {', '.join(DEFECT_KINDS)})")
    # Always take the same draws from the caller's generator, whatever is rendered.
    tex_rng, defect_rng, noise_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=3))
    family = TEXTURES[int(tex_rng.integers(len(TEXTURES)))] if texture == "mixed" else texture
    base, contrast = _surface(tex_rng, height, width, family)
    image = base
    mask = np.zeros((height, width), dtype=np.uint8)
    if defect is not None:
        for _ in range(20):  # a draw that leaves nothing above threshold is drawn again
            delta, change = _DEFECT_FNS[defect](defect_rng, base, contrast)
            hit = (change >= MASK_MIN_CHANGE) | (np.abs(delta) >= MASK_MIN_CHANGE)
            if hit.any():
                break
        else:  # pragma: no cover - geometry keeps every defect inside the image
            raise RuntimeError(f"synthetic {defect} rendered empty")
        image = base + delta
        mask[hit] = 255
    image = image + np.float32(noise_rng.uniform(0.8, 2.2)) * noise_rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, mask, family


def render(rng: np.random.Generator, size=(128, 128), defect: str | None = None, texture: str = "mixed") -> tuple[np.ndarray, np.ndarray]:
    """One (image, mask) pair: uint8 HxW grayscale and uint8 HxW 0/255.

    ``size`` is (width, height). The generator advances by the same amount whatever is
    rendered, so copies of one generator state give the same surface with and without a
    defect."""
    image, mask, _ = _render(rng, size, defect, texture)
    return image, mask


# --------------------------------------------------------------------------- datasets


def _plan(params: dict) -> list[tuple[str, str, str, str | None, list[int]]]:
    """(split, class, stem, defect kind, seed) for every image; each image has its own seed so
    changing one count leaves the other images as they were."""
    plan = []
    for si, split in enumerate(SPLITS):
        for ci, cls in enumerate(CLASSES):
            for i in range(params[f"n_{split}_{cls}"]):
                kind = DEFECT_KINDS[i % len(DEFECT_KINDS)] if cls == "defective" else None
                plan.append((split, cls, f"{split}_{cls}_{i:04d}", kind, [params["seed"], si, ci, i]))
    return plan


def _paths(root: Path, split: str, cls: str, stem: str) -> tuple[Path, Path | None]:
    return root / split / cls / f"{stem}.png", (root / "masks" / f"{stem}.png" if cls == "defective" else None)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # not an image suffix: readers never see it
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover
        raise DataError("could not encode a synthetic image as PNG")
    return buf.tobytes()


def _ours(path: Path) -> bool:
    """Whether a file could have been written by this generator (a finished or a temporary file)."""
    name = path.name
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:-4]
    return name.endswith(".png") and bool(_STEM.match(name[:-4]))


def _foreign_files(root: Path) -> list[Path]:
    """Anything in ``root`` that this generator did not write: it must not be mixed in."""
    foreign = []
    for entry in root.iterdir():
        if entry.name in SPLITS and entry.is_dir():
            for cls_dir in entry.iterdir():
                if cls_dir.name in CLASSES and cls_dir.is_dir():
                    foreign += [p for p in cls_dir.iterdir() if not _ours(p)]
                else:
                    foreign.append(cls_dir)
        elif entry.name == "masks" and entry.is_dir():
            foreign += [p for p in entry.iterdir() if not _ours(p)]
        elif entry.name != f".{META_NAME}.tmp":
            foreign.append(entry)
    return foreign


def _differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}={old.get(k)!r} (asked {new.get(k)!r})" for k in keys if old.get(k) != new.get(k))


def generate(
    root: str | Path,
    *,
    n_train_good: int = 60,
    n_train_defective: int = 20,
    n_test_good: int = 30,
    n_test_defective: int = 30,
    size=(128, 128),
    seed: int = 0,
    texture: str = "mixed",
) -> Path:
    """Write a synthetic dataset in the folder layout and return ``root``.

    Layout: ``{train,test}/{good,defective}/<stem>.png`` and ``masks/<stem>.png`` for every
    defective image. ``synthetic.json`` is written last, so a folder without it (or missing
    files) is an unfinished run and is generated again; a folder whose ``synthetic.json``
    matches the request is reused as it is; one that holds a different synthetic dataset,
    or other data, is an error rather than being overwritten.
    """
    root = Path(root)
    width, height = _check_size(size)
    _check_texture(texture)
    counts = {"n_train_good": n_train_good, "n_train_defective": n_train_defective, "n_test_good": n_test_good, "n_test_defective": n_test_defective}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"synthetic {name} must be an integer >= 0, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"synthetic seed must be an integer >= 0, got {seed!r}")
    params = {**{k: int(v) for k, v in counts.items()}, "size": [width, height], "seed": int(seed), "texture": texture}
    plan = _plan(params)
    meta_path = root / META_NAME

    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder; cannot write a synthetic dataset there")
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            old_params, old_format = meta["params"], meta["format"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{meta_path}: unreadable synthetic dataset description ({exc}); delete {root} to regenerate it") from None
        if old_format != FORMAT_VERSION or old_params != params:
            detail = _differences(old_params, params) if old_format == FORMAT_VERSION else f"format {old_format!r}, this version writes {FORMAT_VERSION}"
            raise DataError(
                f"{root}: holds a different synthetic dataset ({detail}); "
                "delete the folder or choose another one"
            )
        if all(p.is_file() for split, cls, stem, _, _ in plan for p in _paths(root, split, cls, stem) if p is not None):
            return root
    elif root.exists():
        foreign = _foreign_files(root)
        if foreign:
            raise DataError(
                f"{root}: not empty and not a synthetic dataset (found {foreign[0].relative_to(root)}); "
                "choose an empty or new folder"
            )

    for split in SPLITS:
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    # Leftovers of an unfinished run with other counts would silently join the dataset.
    wanted = {p for split, cls, stem, _, _ in plan for p in _paths(root, split, cls, stem) if p is not None}
    for folder in [root / s / c for s in SPLITS for c in CLASSES] + [root / "masks"]:
        for path in folder.iterdir():
            if _ours(path) and path not in wanted:
                path.unlink()

    images = {}
    for split, cls, stem, kind, image_seed in plan:
        image, mask, family = _render(np.random.default_rng(image_seed), (width, height), kind, texture)
        image_path, mask_path = _paths(root, split, cls, stem)
        _write_atomic(image_path, _png(image))
        if mask_path is not None:
            _write_atomic(mask_path, _png(mask))
        images[stem] = {"texture": family, "defect": kind}
    meta = {"format": FORMAT_VERSION, "generator": "defectkit.data.synthetic", "params": params, "images": images}
    _write_atomic(meta_path, (json.dumps(meta, indent=1) + "\n").encode())
    return root
