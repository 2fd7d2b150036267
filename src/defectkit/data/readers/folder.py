"""A user's own images, no code needed.

Accepted layouts (image suffixes: png, jpg, jpeg, bmp, tif, tiff)::

    root/good/*.png            root/train/good/*.png        root/labels.csv
    root/defective/*.png       root/train/defective/*.png     image,label,split[,mask]
    root/masks/<stem>.png      root/test/good/ ...            good/a.png,good,train
                               root/test/defective/ ...       bad/b.png,defective,test,m/b.png
                               root/masks/<stem>.png

Masks are matched by file stem (``<stem>``, ``<stem>_mask``, ``<stem>_label`` or ``<stem>_GT``)
in ``<split>/masks/`` first, then ``masks/``. A defective image without a mask is used with
its image label only. ``validation/`` is recognised beside ``train/`` and ``test/``. Without
split folders every sample has split ``all``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ...errors import DataError
from ..sample import Sample
from .common import is_image, require_dir, require_samples

SPLITS = ("train", "validation", "test")
CLASS_DIRS = {"good": False, "defective": True}
MASK_SUFFIXES = ("", "_mask", "_label", "_GT")
LABELS = {"good": False, "ok": False, "normal": False, "0": False, "defective": True, "bad": True, "ng": True, "defect": True, "1": True}
CSV_NAME = "labels.csv"


def _mask_index(*folders: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for folder in reversed(folders):  # earlier folders win
        if folder.is_dir():
            for path in folder.iterdir():
                if is_image(path):
                    index[path.stem] = path
    return index


def _find_mask(stem: str, index: dict[str, Path]) -> Path | None:
    for suffix in MASK_SUFFIXES:
        if stem + suffix in index:
            return index[stem + suffix]
    return None


def _sample(root: Path, image: Path, defective: bool, split: str, mask: Path | None) -> Sample:
    if mask is not None and not defective:
        mask = None  # a good image's mask is empty by definition
    return Sample(
        name=image.relative_to(root).with_suffix("").as_posix(),
        image_path=image,
        mask_path=mask,
        is_defective=defective,
        pixel_labelled=mask is not None or not defective,
        split=split,
    )


def _from_class_dirs(root: Path, base: Path, split: str) -> list[Sample]:
    masks = _mask_index(base / "masks", root / "masks")
    samples = []
    for class_dir, defective in CLASS_DIRS.items():
        folder = base / class_dir
        if not folder.is_dir():
            continue
        for image in sorted(p for p in folder.rglob("*") if is_image(p)):
            samples.append(_sample(root, image, defective, split, _find_mask(image.stem, masks) if defective else None))
    return samples


def _from_csv(csv_path: Path) -> list[Sample]:
    root = csv_path.parent
    masks = _mask_index(root / "masks")
    samples = []
    with open(csv_path, newline="") as handle:
        rows = csv.DictReader(handle)
        fields = [f.strip().lower() for f in rows.fieldnames or []]
        if "image" not in fields or "label" not in fields:
            raise DataError(f"{csv_path}: needs the columns image,label (and optionally split, mask); found {fields}")
        for line_no, raw in enumerate(rows, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            image = root / row["image"]
            if not image.is_file():
                raise DataError(f"{csv_path} line {line_no}: image {image} not found")
            label = row["label"].lower()
            if label not in LABELS:
                raise DataError(f"{csv_path} line {line_no}: label '{row['label']}' is not one of good/defective (or 0/1, ok/ng)")
            split = row.get("split") or "all"
            if split not in SPLITS + ("all",):
                raise DataError(f"{csv_path} line {line_no}: split '{split}' is not one of train/validation/test")
            mask = root / row["mask"] if row.get("mask") else _find_mask(image.stem, masks)
            if mask is not None and not mask.is_file():
                raise DataError(f"{csv_path} line {line_no}: mask {mask} not found")
            samples.append(_sample(root, image, LABELS[label], split, mask))
    return samples


def read_folder(root: str | Path, split: str | None = None, fold: int | None = None) -> list[Sample]:
    """Every image under ``root`` in one of the layouts above; ``split`` keeps only that part.

    ``root`` may also be the path of a CSV file laid out like ``labels.csv``."""
    root = Path(root)
    if root.suffix.lower() == ".csv":
        if not root.is_file():
            raise DataError(f"{root}: CSV file not found")
        samples = _from_csv(root)
        root = root.parent
    else:
        require_dir(root, "dataset folder")
        if (root / CSV_NAME).is_file():
            samples = _from_csv(root / CSV_NAME)
        elif any((root / s).is_dir() for s in SPLITS):
            samples = [x for s in SPLITS for x in _from_class_dirs(root, root / s, s)]
        else:
            samples = _from_class_dirs(root, root, "all")
        if not samples:
            raise DataError(
                f"{root}: no images found; expected good/ and defective/ folders "
                "(or train/ and test/ each holding them, or a labels.csv)"
            )
    if split not in (None, "all"):
        samples = [s for s in samples if s.split == split]
        return require_samples(samples, root, f"split '{split}'")
    return samples
