"""KolektorSDD (v1): ``kosNN/PartM.jpg`` with ``PartM_label.bmp`` masks, 3-fold cross-validation."""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..imageio import read_mask_file
from ..sample import Sample
from ..splits import load_split
from .common import check_fold, require_dir, require_file, require_samples

# kos21/Part7 is a byte copy of kos21/Part6; the authors evaluate on the remaining 399 images.
EXCLUDED = frozenset({"kos21/Part7"})


def _folder_samples(folder: Path, split: str, pixel_labelled: bool) -> list[Sample]:
    samples = []
    for image in sorted(folder.glob("Part*.jpg"), key=lambda p: int(p.stem[4:]) if p.stem[4:].isdigit() else p.stem):
        name = f"{folder.name}/{image.stem}"
        if name in EXCLUDED:
            continue
        mask = require_file(image.with_name(f"{image.stem}_label.bmp"), "mask")
        defective = bool(read_mask_file(mask).any())
        samples.append(
            Sample(
                name=name,
                image_path=image,
                mask_path=mask,
                is_defective=defective,
                pixel_labelled=pixel_labelled or not defective,
                split=split,
            )
        )
    return samples


def read_ksdd(root: str | Path, split: str | None = "33_33", fold: int | None = None) -> list[Sample]:
    """Samples of one fold of an official split (``split="33_33"``, ``fold`` 0..2), or every
    image with ``split="all"``. Split keys: ``P_N`` = P positive folders for training, N of
    them pixel-labelled."""
    root = require_dir(Path(root), "KolektorSDD folder")
    split = split or "33_33"
    if split == "all":
        folders = sorted(p for p in root.glob("kos[0-9][0-9]") if p.is_dir())
        if not folders:
            raise DataError(f"{root}: no kosNN folders found (expected the KolektorSDD layout kosNN/PartM.jpg)")
        samples = [s for f in folders for s in _folder_samples(f, "all", True)]
        return require_samples(samples, root, "KolektorSDD")
    folds = load_split("ksdd", split)["folds"]
    fold = check_fold(0 if fold is None else fold, len(folds), "ksdd")
    samples: list[Sample] = []
    for part, entries in folds[fold].items():
        for folder_name, pixel_labelled in entries:
            folder = root / folder_name
            if not folder.is_dir():
                raise DataError(f"{folder}: folder listed in split {split} fold {fold} ({part}) is missing")
            samples.extend(_folder_samples(folder, part, pixel_labelled))
    return require_samples(samples, root, f"split {split} fold {fold}")
