"""Counting a dataset's samples per split and fold, with the data audit of :mod:`.audit`."""

from __future__ import annotations

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
    problems: list  # of audit.Problem
    checked: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """What ``datasets inspect --json`` prints."""
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return {
            "dataset": self.dataset,
            "root": str(self.root),
            "split": self.split,
            "images": self.total.images,
            "defective": self.total.defective,
            "pixel_labelled": self.total.pixel_labelled,
            "good": self.total.good,
            "checked": self.checked,
            "folds": [
                {"fold": f.fold, "error": f.error, "parts": {k: {"images": c.images, "defective": c.defective, "pixel_labelled": c.pixel_labelled, "good": c.good} for k, c in f.parts.items()}}
                for f in self.folds
            ],
            "problem_counts": counts,
            "problems": [p.to_dict() for p in self.problems],
            "notes": self.notes,
        }


def summarise(samples: list[Sample]) -> dict[str, Counts]:
    order = {p: i for i, p in enumerate(PARTS)}
    parts = sorted({s.split for s in samples}, key=lambda p: order.get(p, len(order)))
    return {p: Counts.of(s for s in samples if s.split == p) for p in parts}


def inspect_dataset(
    name: str,
    root: str | Path | None,
    split: str | None = None,
    check: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Inspection:
    """Counts of the whole dataset and, for an official split (the dataset's default when
    ``split`` is None), of every fold, with the data audit (:mod:`.audit`): its cheap part
    always, and with ``check`` every image and mask decoded, orphan masks and files missing
    against the split lists."""
    from .audit import Audit, cheap_audit, full_audit, read_everything

    spec = get_dataset(name)
    root = resolve_root(spec, root)
    audit = Audit()
    everything = read_everything(spec, root, audit)
    split = split or spec.default_split
    folds: list[FoldSummary] = []
    folds_present: tuple = ()
    if split not in (None, "all"):
        folds_present = (spec.folds_on_disk(root) if spec.folds_on_disk else spec.folds) or (None,)
        for fold in folds_present:
            summary = FoldSummary(fold)
            try:
                kwargs = {} if fold is None else {"fold": fold}
                samples = spec.read(root, split=split, **kwargs)
            except DataError as exc:
                summary.error = str(exc)
            else:
                summary.parts = summarise(samples)
                by_part: dict[str, list[Sample]] = {}
                for s in samples:
                    by_part.setdefault(s.split, []).append(s)
                where = "" if fold is None else f"{spec.fold_name} {fold}: "
                cheap_audit(by_part, audit, spec.name, where=where)
            folds.append(summary)
    else:
        by_part = {}
        for s in everything:
            by_part.setdefault(s.split, []).append(s)
        if len(by_part) > 1:  # a folder dataset with train/test parts
            folds.append(FoldSummary(None, summarise(everything)))
        cheap_audit(by_part, audit, spec.name)
    if split not in (None, "all"):  # byte-identical images labelled both ways, whatever the fold
        cheap_audit({"all": everything}, audit, spec.name, classes=False)
    if check:
        total = len(everything)
        full_audit(spec, root, everything, split, folds_present, audit, (lambda i: on_progress(i, total)) if on_progress else None)
    return Inspection(spec.name, root, Counts.of(everything), split, folds, audit.problems, len(everything) if check else 0, audit.notes)
