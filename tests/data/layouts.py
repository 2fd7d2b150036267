"""Tiny dummy datasets in each official layout, written into a temp folder.

Images are small (the readers do not care about size); masks are 0/255 with a defect where
the layout says so. Names follow the official split lists so the real lists are exercised."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from defectkit.data.splits import load_split


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def image(h: int = 24, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)


def mask(h: int = 24, w: int = 16, defect: bool = True) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    if defect:
        m[h // 3 : h // 2, w // 4 : w // 2] = 255
    return m


def make_ksdd(root: Path, defective: dict[str, set[int]] | None = None) -> Path:
    """kos01..kos50 with Part0..Part7; by default Part3 of every folder is defective and so is
    Part5 of kos02 and kos07 (52 defective among 399 counted images, as in the real dataset)."""
    defective = defective or {}
    for k in range(1, 51):
        name = f"kos{k:02d}"
        bad = defective.get(name, {3} | ({5} if k in (2, 7) else set()))
        for part in range(8):
            write(root / name / f"Part{part}.jpg", image(seed=k * 8 + part))
            write(root / name / f"Part{part}_label.bmp", mask(defect=part in bad))
    return root


def make_ksdd2(root: Path, split: str = "16") -> tuple[Path, set[str]]:
    """Every id of the split list; the ids the list marks image-label-only, and 20 more, are
    defective. Returns (root, defective ids)."""
    lists = load_split("ksdd2", split)
    weak = {n for n, labelled in lists["train"] if not labelled}
    extra = {n for n, _ in lists["train"][:10]} | {n for n, _ in lists["test"][:10]}
    bad = weak | extra
    for part, entries in lists.items():
        for name, _ in entries:
            write(root / part / f"{name}.png", image(8, 8))
            write(root / part / f"{name}_GT.png", mask(8, 8, defect=name in bad))
    return root, bad


def make_dagm(root: Path, k: int = 1, split: str = "5") -> tuple[Path, set[str]]:
    """ClassK with every file of the split's class; the image-label-only ones and the first 10
    test images get a Label/ mask file. Returns (root, defective 'Part/name' keys)."""
    lists = load_split("dagm", split)["classes"][k - 1]
    bad = {f"train/{n}" for n, labelled in lists["train"] if not labelled}
    bad |= {f"train/{n}" for n, _ in lists["train"][:5]} | {f"test/{n}" for n, _ in lists["test"][:10]}
    for part, sub in (("train", "Train"), ("test", "Test")):
        for name, _ in lists[part]:
            write(root / f"Class{k}" / sub / name, image(8, 8))
            if f"{part}/{name}" in bad:
                write(root / f"Class{k}" / sub / "Label" / f"{Path(name).stem}_label.PNG", mask(8, 8))
    return root, bad


def rle_encode(m: np.ndarray) -> str:
    """Column-major, 1-based run-length encoding (the Kaggle/Severstal convention)."""
    flat = np.concatenate([[0], (m.T.reshape(-1) > 0).astype(np.int8), [0]])
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    changes[1::2] -= changes[::2]
    return " ".join(map(str, changes))


def make_severstal(root: Path, split: str = "300_10", csv_format: str = "new") -> tuple[Path, dict[str, np.ndarray]]:
    """train_images/ with every id of the split (tiny placeholder JPEGs) and train.csv. The
    split's image-label-only ids and 10 test ids are defective, some with two classes.
    Returns (root, full-size expected mask per defective id)."""
    lists = load_split("severstal", split)
    ids = [n for entries in lists.values() for n, _ in entries]
    weak = [n for n, labelled in lists["train"] if not labelled]
    bad = weak[:40] + [n for n, _ in lists["test"][:10]]
    for name in ids:
        write(root / "train_images" / f"{name}.jpg", image(4, 4))
    rows, expected = [], {}
    for i, name in enumerate(bad):
        m1 = np.zeros((256, 1600), np.uint8)
        m1[10 + i : 40 + i, 100 : 130 + i] = 1
        rows.append((name, 1 + i % 4, rle_encode(m1)))
        full = m1.copy()
        if i % 3 == 0:  # a second class on the same image: must be merged, not dropped
            m2 = np.zeros_like(m1)
            m2[200:250, 1500:1590] = 1
            rows.append((name, 3, rle_encode(m2)))
            full |= m2
        expected[name] = full
    with open(root / "train.csv", "w") as f:
        if csv_format == "new":
            f.write("ImageId,ClassId,EncodedPixels\n")
            f.writelines(f"{n}.jpg,{c},{r}\n" for n, c, r in rows)
        else:
            f.write("ImageId_ClassId,EncodedPixels\n")
            f.writelines(f"{n}.jpg_{c},{r}\n" for n, c, r in rows)
            f.writelines(f"{n}.jpg_{c},\n" for n in ids[:5] for c in range(1, 5))
    return root, expected


def make_folder(root: Path, with_splits: bool = True) -> Path:
    """train/ and test/ with good/ and defective/; masks for some defective images."""
    for split in ("train", "test") if with_splits else ("",):
        base = root / split if split else root
        for i in range(3):
            write(base / "good" / f"{split}g{i}.png", image(seed=i))
        for i in range(2):
            write(base / "defective" / f"{split}d{i}.png", image(seed=10 + i))
        write(root / "masks" / f"{split}d0.png", mask())
    return root
