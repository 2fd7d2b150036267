"""KolektorSDD2: ``{train,test}/{id}.png`` with ``{id}_GT.png`` masks."""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..imageio import read_mask_file
from ..sample import Sample
from ..splits import load_split
from .common import require_dir, require_samples


def _sample(root: Path, part: str, image_id: str, pixel_labelled: bool) -> Sample:
    image = root / part / f"{image_id}.png"
    mask = root / part / f"{image_id}_GT.png"
    if not image.is_file():
        raise DataError(f"{image}: image listed in the {part} split is missing")
    if not mask.is_file():
        raise DataError(f"{mask}: mask of {image.name} is missing")
    defective = bool(read_mask_file(mask).any())
    return Sample(
        name=f"{part}/{image_id}",
        image_path=image,
        mask_path=mask,
        is_defective=defective,
        pixel_labelled=pixel_labelled or not defective,
        split=part,
    )


def read_ksdd2(root: str | Path, split: str | None = "246", fold: int | None = None) -> list[Sample]:
    """Official train/test split with N pixel-labelled positives (``split`` = N in
    0/16/53/126/246), or every image with ``split="all"`` (split field = its folder)."""
    root = require_dir(Path(root), "KolektorSDD2 folder")
    split = split or "246"
    if split == "all":
        samples = []
        for part in ("train", "test"):
            folder = require_dir(root / part, f"KolektorSDD2 {part} folder")
            ids = sorted(p.stem for p in folder.glob("*.png") if not p.stem.endswith("_GT"))
            samples += [_sample(root, part, i, True) for i in ids]
        return require_samples(samples, root, "KolektorSDD2")
    lists = load_split("ksdd2", split)
    for part in lists:
        require_dir(root / part, f"KolektorSDD2 {part} folder")
    samples = [_sample(root, part, name, labelled) for part, entries in lists.items() for name, labelled in entries]
    return require_samples(samples, root, f"split {split}")
