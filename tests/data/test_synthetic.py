"""The synthetic data is what the demo trains on and what other tests read: it must be
reproducible to the byte, its masks must be exactly where the defects are, and the folder it
writes must be safe to reuse."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from defectkit.data import synthetic
from defectkit.data.synthetic import DEFECT_KINDS, TEXTURES, generate, render
from defectkit.errors import ConfigError, DataError

SMALL = dict(n_train_good=4, n_train_defective=5, n_test_good=3, n_test_defective=6, size=(96, 64))


def _rng(*seed: int) -> np.random.Generator:
    return np.random.default_rng(list(seed))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- render


@pytest.mark.parametrize("defect", (None,) + DEFECT_KINDS)
def test_render_same_seed_same_arrays(defect):
    for seed in range(3):
        a = render(_rng(seed), (128, 128), defect)
        b = render(_rng(seed), (128, 128), defect)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    other = render(_rng(99), (128, 128), defect)
    assert not np.array_equal(a[0], other[0])


def test_render_consumes_the_same_draws_whatever_it_renders():
    states = []
    for defect in (None,) + DEFECT_KINDS:
        rng = _rng(5)
        render(rng, (64, 64), defect, texture="mixed")
        states.append(rng.bit_generator.state)
    assert all(s == states[0] for s in states)


@pytest.mark.parametrize("texture", TEXTURES + ("mixed",))
def test_good_image_has_empty_mask(texture):
    for seed in range(3):
        image, mask = render(_rng(seed), (80, 48), None, texture)
        assert image.dtype == np.uint8 and mask.dtype == np.uint8
        assert image.shape == mask.shape == (48, 80)
        assert not mask.any()
        assert 5 < image.std() < 60  # a texture, neither flat nor noise-saturated


@pytest.mark.parametrize("texture", TEXTURES)
@pytest.mark.parametrize("defect", DEFECT_KINDS)
def test_mask_is_exactly_what_the_defect_changed(defect, texture):
    for seed in range(4):
        good, empty = render(_rng(seed, 1), (128, 128), None, texture)
        bad, mask = render(_rng(seed, 1), (128, 128), defect, texture)
        assert not empty.any()
        assert set(np.unique(mask)) == {0, 255}
        inside = mask > 0
        diff = np.abs(bad.astype(np.int16) - good.astype(np.int16))
        # the defect is visible where the mask says ...
        assert diff[inside].mean() >= 8
        assert np.mean(diff[inside] >= 3) > 0.8
        assert diff[inside].mean() > 4 * diff[~inside].mean()
        # ... outside it nothing moved as far as the mask threshold, and only a faint fringe
        # right next to it moved at all (one grey level of rounding aside)
        assert diff[~inside].max() <= synthetic.MASK_MIN_CHANGE + 1
        near = ndimage.binary_dilation(inside, iterations=4)
        assert diff[~near].max() <= 1


@pytest.mark.parametrize("size", [(32, 32), (128, 96), (72, 200), (257, 33)])
@pytest.mark.parametrize("defect", (None,) + DEFECT_KINDS)
def test_renders_at_any_size(size, defect):
    for texture in TEXTURES:
        image, mask = render(_rng(3), size, defect, texture)
        assert image.shape == mask.shape == (size[1], size[0])
        assert image.dtype == mask.dtype == np.uint8
        assert mask.any() == (defect is not None)


def test_defects_differ_from_draw_to_draw():
    masks = [render(_rng(seed), (128, 128), "crack")[1] for seed in range(5)]
    assert len({m.tobytes() for m in masks}) == 5


def test_render_rejects_bad_options():
    with pytest.raises(ConfigError):
        render(_rng(0), (31, 64), None)
    with pytest.raises(ConfigError):
        render(_rng(0), (64, 64.0), None)
    with pytest.raises(ConfigError):
        render(_rng(0), (64, 64), "dent")
    with pytest.raises(ConfigError):
        render(_rng(0), (64, 64), None, texture="marble")


# --------------------------------------------------------------------------- generate


def test_generate_writes_the_folder_layout(tmp_path):
    root = generate(tmp_path / "ds", **SMALL)
    assert root == tmp_path / "ds"
    counts = {"train/good": 4, "train/defective": 5, "test/good": 3, "test/defective": 6}
    stems = []
    for folder, n in counts.items():
        files = sorted((root / folder).iterdir())
        assert len(files) == n and all(f.suffix == ".png" for f in files)
        stems += [f.stem for f in files]
    assert len(set(stems)) == len(stems) == 18
    defective = [s for s in stems if "_defective_" in s]
    assert sorted(p.stem for p in (root / "masks").iterdir()) == sorted(defective)
    assert {p.name for p in root.iterdir()} == {"train", "test", "masks", "synthetic.json"}

    for folder in counts:
        for path in (root / folder).iterdir():
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert image.shape == (64, 96) and image.dtype == np.uint8
            mask_path = root / "masks" / path.name
            if "defective" in folder:
                mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
                assert mask.shape == image.shape
                assert set(np.unique(mask)) == {0, 255}
            else:
                assert not mask_path.exists()

    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["format"] == synthetic.FORMAT_VERSION
    assert meta["params"] == {
        "n_train_good": 4, "n_train_defective": 5, "n_test_good": 3, "n_test_defective": 6,
        "size": [96, 64], "seed": 0, "texture": "mixed",
    }
    kinds = [meta["images"][s]["defect"] for s in sorted(defective)]
    assert all(kinds.count(k) >= 3 for k in DEFECT_KINDS)  # 11 defects spread over 3 kinds
    assert len({v["texture"] for v in meta["images"].values()}) > 1


def test_generate_files_match_render(tmp_path):
    """The files are plain renders: what a reader loads is what render() returned."""
    root = generate(tmp_path / "ds", **SMALL)
    meta = json.loads((root / "synthetic.json").read_text())
    stem = "test_defective_0001"
    image = cv2.imread(str(root / "test" / "defective" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(root / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    again, again_mask = render(np.random.default_rng([0, 1, 1, 1]), (96, 64), meta["images"][stem]["defect"])
    assert np.array_equal(image, again) and np.array_equal(mask, again_mask)


def test_generate_is_byte_identical_per_seed(tmp_path):
    a = _files(generate(tmp_path / "a", **SMALL, seed=7))
    b = _files(generate(tmp_path / "b", **SMALL, seed=7))
    c = _files(generate(tmp_path / "c", **SMALL, seed=8))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".png") and not k.startswith("masks/"))


def test_generate_named_texture(tmp_path):
    root = generate(tmp_path / "ds", **SMALL, texture="woven")
    meta = json.loads((root / "synthetic.json").read_text())
    assert {v["texture"] for v in meta["images"].values()} == {"woven"}


def test_generate_reuses_a_matching_folder(tmp_path):
    root = generate(tmp_path / "ds", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate(root, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_generate_refuses_a_different_dataset(tmp_path):
    root = generate(tmp_path / "ds", **SMALL)
    before = _files(root)
    with pytest.raises(DataError, match="different synthetic dataset") as info:
        generate(root, **{**SMALL, "seed": 1})
    assert str(root) in str(info.value) and "seed" in str(info.value)
    with pytest.raises(DataError, match="different synthetic dataset"):
        generate(root, **{**SMALL, "size": (64, 64)})
    assert _files(root) == before


def test_generate_refuses_a_folder_with_other_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic dataset"):
        generate(tmp_path / "mine", **SMALL)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError):
        generate(tmp_path / "file", **SMALL)


def test_generate_completes_an_interrupted_run(tmp_path):
    reference = _files(generate(tmp_path / "ref", **SMALL))
    root = generate(tmp_path / "ds", **SMALL)
    # missing image with the description present: regenerated
    (root / "train" / "good" / "train_good_0002.png").unlink()
    generate(root, **SMALL)
    assert _files(root) == reference
    # killed before the description was written, after a run with more images: leftovers go
    (root / "synthetic.json").unlink()
    (root / "masks" / "test_defective_0003.png").unlink()
    generate(tmp_path / "big", **{**SMALL, "n_train_good": 9})
    for extra in ("train_good_0007", "train_good_0008"):
        (root / "train" / "good" / f"{extra}.png").write_bytes((tmp_path / "big" / "train" / "good" / f"{extra}.png").read_bytes())
    (root / "masks" / ".test_defective_0000.png.tmp").write_bytes(b"partial")
    generate(root, **SMALL)
    assert _files(root) == reference


def test_generate_rejects_bad_options(tmp_path):
    with pytest.raises(ConfigError):
        generate(tmp_path / "a", **{**SMALL, "n_test_good": -1})
    with pytest.raises(ConfigError):
        generate(tmp_path / "a", **{**SMALL, "size": (16, 64)})
    with pytest.raises(ConfigError):
        generate(tmp_path / "a", **SMALL, texture="marble")
    with pytest.raises(ConfigError):
        generate(tmp_path / "a", **SMALL, seed=-3)
    assert not (tmp_path / "a").exists()
