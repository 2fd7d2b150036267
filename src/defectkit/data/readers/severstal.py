"""Severstal steel: ``train_images/{id}.jpg`` and ``train.csv`` of run-length encoded masks
(1-based, column-major, 256x1600). All defect classes of an image merge into one binary mask."""

from __future__ import annotations

import csv
from pathlib import Path

from ...errors import DataError
from ..imageio import rle_runs
from ..sample import Sample
from ..splits import load_split
from .common import require_dir, require_file, require_samples

MASK_SHAPE = (256, 1600)  # (height, width) of every Severstal image


def read_rle_table(csv_path: Path) -> dict[str, tuple[str, ...]]:
    """Image id -> every non-empty RLE of that image (all classes, all rows kept).

    Accepts the current Kaggle format (``ImageId,ClassId,EncodedPixels``) and the original
    one (``ImageId_ClassId,EncodedPixels`` with empty rows for absent classes)."""
    table: dict[str, list[str]] = {}
    with open(csv_path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{csv_path}: file is empty")
        header = [h.strip() for h in header]
        if header[:3] == ["ImageId", "ClassId", "EncodedPixels"]:
            split_id = False
        elif header[:2] == ["ImageId_ClassId", "EncodedPixels"]:
            split_id = True
        else:
            raise DataError(f"{csv_path}: unexpected header {header}; expected ImageId,ClassId,EncodedPixels")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if split_id:
                image_id, rle = row[0].rsplit("_", 1)[0], (row[1] if len(row) > 1 else "")
            else:
                if len(row) < 3:
                    raise DataError(f"{csv_path} line {line_no}: expected 3 columns, got {len(row)}")
                image_id, rle = row[0], row[2]
            image_id = image_id.removesuffix(".jpg")
            if rle.strip():
                rle_runs(rle, MASK_SHAPE, source=f"{csv_path} line {line_no} ({image_id})")
                table.setdefault(image_id, []).append(rle.strip())
            else:
                table.setdefault(image_id, [])
    return {k: tuple(v) for k, v in table.items()}


def _sample(images: Path, image_id: str, rles: dict, part: str, pixel_labelled: bool) -> Sample:
    image = images / f"{image_id}.jpg"
    if not image.is_file():
        raise DataError(f"{image}: image listed in the {part} split is missing")
    mask_rle = rles.get(image_id, ())
    return Sample(
        name=image_id,
        image_path=image,
        is_defective=bool(mask_rle),
        mask_rle=mask_rle,
        mask_shape=MASK_SHAPE if mask_rle else None,
        pixel_labelled=pixel_labelled or not mask_rle,
        split=part,
    )


def read_severstal(root: str | Path, split: str | None = "3000_3000", fold: int | None = None) -> list[Sample]:
    """Official split ``P_N`` (P positives for training, N of them pixel-labelled; train,
    validation and test parts), or every image of ``train_images`` with ``split="all"``."""
    root = require_dir(Path(root), "Severstal folder")
    images = require_dir(root / "train_images", "Severstal train_images folder")
    rles = read_rle_table(require_file(root / "train.csv", "Severstal train.csv"))
    split = split or "3000_3000"
    if split == "all":
        ids = sorted(p.stem for p in images.glob("*.jpg"))
        samples = [_sample(images, i, rles, "all", True) for i in ids]
        return require_samples(samples, root, "Severstal")
    lists = load_split("severstal", split)
    samples = [_sample(images, n, rles, part, labelled) for part, entries in lists.items() for n, labelled in entries]
    return require_samples(samples, root, f"split {split}")
