"""Counting a dataset's samples per split and fold, and checking every file on disk."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DataError
from .datasets import get_dataset, resolve_root
from .sample import Sample

PARTS = ("train", "validation", "test", "all")


@dataclass
class Counts:
    images: int = 0
    defective: int = 0
    pixel_labelled: int = 0  # defective images whose mask may be used for training

    @classmethod
    def of(cls, samples: Iterable[Sample]) -> "Counts":
        counts = cls()
        for s in samples:
            counts.images += 1
            counts.defective += s.is_defective
            counts.pixel_labelled += s.is_defective and s.pixel_labelled and s.has_mask
        return counts

    @property
    def good(self) -> int:
        return self.images - self.defective


@dataclass
class FoldSummary:
    fold: int | None
    parts: dict[str, Counts] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Inspection:
    dataset: str
    root: Path
    total: Counts
    split: str | None
    folds: list[FoldSummary]
    problems: list[str]
    checked: int


def summarise(samples: list[Sample]) -> dict[str, Counts]:
    order = {p: i for i, p in enumerate(PARTS)}
    parts = sorted({s.split for s in samples}, key=lambda p: order.get(p, len(order)))
    return {p: Counts.of(s for s in samples if s.split == p) for p in parts}


def check_sample(sample: Sample) -> str | None:
    """None if the image decodes completely and its mask (if any) decodes and matches its size."""
    from PIL import Image

    from .imageio import load_mask

    try:
        with Image.open(sample.image_path) as im:
            im.load()
            size = im.size
    except FileNotFoundError:
        return f"{sample.image_path}: file not found"
    except Exception as exc:  # PIL raises many types for broken files
        return f"{sample.image_path}: unreadable image ({exc})"
    if not sample.has_mask:
        return None
    try:
        mask = load_mask(sample)
    except DataError as exc:
        return str(exc)
    if mask.shape != (size[1], size[0]):
        where = sample.mask_path or f"{sample.name} (run-length mask)"
        return f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[0]}x{size[1]}"
    return None


def check_samples(samples: list[Sample], on_progress: Callable[[int], None] | None = None, workers: int = 4) -> list[str]:
    """Problems found, one line each (empty when every file is fine)."""
    problems = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, problem in enumerate(pool.map(check_sample, samples), start=1):
            if problem:
                problems.append(problem)
            if on_progress:
                on_progress(i)
    return problems


def inspect_dataset(
    name: str,
    root: str | Path | None,
    split: str | None = None,
    check: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Inspection:
    """Counts of the whole dataset and, for an official split (the dataset's default when
    ``split`` is None), of every fold; with ``check`` every image and mask is decoded."""
    spec = get_dataset(name)
    root = resolve_root(spec, root)
    everything = spec.read(root, split="all")
    split = split or spec.default_split
    folds: list[FoldSummary] = []
    if split not in (None, "all"):
        folds_present = spec.folds_on_disk(root) if spec.folds_on_disk else spec.folds
        for fold in folds_present or (None,):
            summary = FoldSummary(fold)
            try:
                kwargs = {} if fold is None else {"fold": fold}
                summary.parts = summarise(spec.read(root, split=split, **kwargs))
            except DataError as exc:
                summary.error = str(exc)
            folds.append(summary)
    elif len({s.split for s in everything}) > 1:  # a folder dataset with train/test parts
        folds.append(FoldSummary(None, summarise(everything)))
    problems: list[str] = []
    if check:
        total = len(everything)
        problems = check_samples(everything, (lambda i: on_progress(i, total)) if on_progress else None)
    return Inspection(spec.name, root, Counts.of(everything), split, folds, problems, len(everything) if check else 0)
