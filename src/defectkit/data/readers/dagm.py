"""DAGM 2007: ``ClassK/{Train,Test}/NNNN.PNG``, masks in ``Label/NNNN_label.PNG``; an image
without a mask file is good. ``fold`` is the class number K (1..10)."""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..sample import Sample
from ..splits import load_split
from .common import check_fold, require_dir, require_samples

N_CLASSES = 10
PARTS = {"train": "Train", "test": "Test"}


def _sample(class_dir: Path, part: str, file_name: str, pixel_labelled: bool) -> Sample:
    folder = class_dir / PARTS[part]
    image = folder / file_name
    if not image.is_file():
        raise DataError(f"{image}: image listed in the {part} split is missing")
    mask = folder / "Label" / f"{image.stem}_label.PNG"
    defective = mask.is_file()
    return Sample(
        name=f"{class_dir.name}/{PARTS[part]}/{image.stem}",
        image_path=image,
        mask_path=mask if defective else None,
        is_defective=defective,
        pixel_labelled=pixel_labelled or not defective,
        split=part,
    )


def read_dagm(root: str | Path, split: str | None = "1000", fold: int | None = None) -> list[Sample]:
    """One class (``fold``, default 1) of an official split (``split`` = number of pixel-labelled positives:
    0/5/15/45/1000, 1000 meaning all), or with ``split="all"`` every image on disk of class
    ``fold`` (all classes when ``fold`` is None)."""
    root = require_dir(Path(root), "DAGM folder")
    split = split or "1000"
    if split == "all":
        classes = [fold] if fold is not None else range(1, N_CLASSES + 1)
        samples = []
        for k in classes:
            class_dir = root / f"Class{k}"
            if fold is not None:
                require_dir(class_dir, f"DAGM class {k} folder")
            for part, sub in PARTS.items():
                folder = class_dir / sub
                if folder.is_dir():
                    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.upper() == ".PNG")
                    samples += [_sample(class_dir, part, n, True) for n in names]
        return require_samples(samples, root, "DAGM" if fold is None else f"DAGM class {fold}")
    classes = load_split("dagm", split)["classes"]
    k = check_fold(1 if fold is None else fold, len(classes), "dagm (class)", first=1)
    class_dir = require_dir(root / f"Class{k}", f"DAGM class {k} folder")
    samples = [
        _sample(class_dir, part, name, labelled) for part, entries in classes[k - 1].items() for name, labelled in entries
    ]
    return require_samples(samples, root, f"split {split} class {k}")
