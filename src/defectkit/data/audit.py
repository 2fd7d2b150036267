"""The data audit: everything wrong with a dataset, every problem at once, not the first.

It has two parts.

* **Cheap** (:func:`cheap_audit`): no image is decoded. The same image file listed twice in a
  split or in training and test, byte-identical files under two labels or in training and
  test, and splits without the classes training or AP needs. Byte identity is cheap: files
  are grouped by size first and only files sharing a size are read (a 64 KiB prefix, then
  the whole file when the prefixes agree); on KolektorSDD this takes well under a second.
  Every training runs it before it touches the run folder (:func:`check_training_data`) and
  stops on the first problem, since each one makes the result wrong.
* **Full** (:func:`full_audit`, ``defectkit datasets inspect``): the cheap part and every
  image and mask decoded (unreadable files, masks of the wrong size or mode), mask files no
  image uses, and every file the official split lists name that is missing. The folder
  reader's own refusals (ambiguous masks, missing files, bad labels.csv rows) are collected
  there too instead of stopping at the first.

Byte-identical images the official KolektorSDD release holds (``kos01`` = ``kos26``,
``kos27`` = ``kos34``, with different masks) are kept as published: they are reported as
notes, not problems.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DataError
from .sample import Sample

KINDS = {
    "unreadable": "an image or mask that cannot be decoded (empty, truncated, corrupt, not an image)",
    "missing": "a file an official split list or labels.csv names that is not on disk",
    "mask_size": "a mask whose size differs from its image's",
    "mask_mode": "a mask file that cannot be a mask (colour, float)",
    "orphan_mask": "a mask file that no image uses",
    "ambiguous_mask": "a mask matched by stem to several images, or an image matching several masks",
    "empty_mask": "a defective image whose mask marks no pixel (segdec trains it on its image label only)",
    "bad_row": "a labels.csv row that cannot be read",
    "listed_twice": "the same image file twice in one split",
    "train_test_overlap": "the same image file in training (or validation) and test",
    "identical_images": "byte-identical image files under two labels, or in training and test",
    "missing_class": "a split without the good or defective images training or AP needs",
    "reader": "the dataset's reader stopped; the rest was audited without its images",
}

# folder pairs of the official KolektorSDD release whose images are byte-identical (kept as published)
KNOWN_IDENTICAL = {"ksdd": (("kos01", "kos26"), ("kos27", "kos34"))}

PREFIX = 64 * 1024


@dataclass(frozen=True)
class Problem:
    kind: str
    files: tuple[str, ...]
    message: str  # one line, naming the file(s)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "files": list(self.files), "message": self.message}


@dataclass
class Audit:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digests: dict = field(default_factory=dict)  # path -> (size, prefix hash, full hash), shared by folds

    def add(self, kind: str, files: Iterable, message: str) -> None:
        problem = Problem(kind, tuple(str(f) for f in files), message)
        if all((p.kind, p.files, p.message) != (problem.kind, problem.files, problem.message) for p in self.problems):
            self.problems.append(problem)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return counts


def _norm(path: Path) -> Path:
    return Path(os.path.normpath(path))


# ---------------------------------------------------------------------------- byte identity


def _hash(path: Path, limit: int | None) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        if limit is not None:
            digest.update(handle.read(limit))
        else:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def identical_groups(paths: Iterable[Path], cache: dict | None = None) -> list[list[Path]]:
    """Groups (two or more) of distinct files with the same bytes. Only files sharing a size
    are read: first 64 KiB, then the whole file where those agree. Unreadable files are left
    out (the decode check reports them)."""
    cache = {} if cache is None else cache
    by_size: dict[int, list[Path]] = {}
    for path in dict.fromkeys(_norm(p) for p in paths):
        try:
            by_size.setdefault(path.stat().st_size, []).append(path)
        except OSError:
            continue
    groups = []
    for size, same_size in by_size.items():
        if len(same_size) < 2 or size == 0:
            continue
        by_key: dict[tuple, list[Path]] = {}
        for path in same_size:
            try:
                if path not in cache:
                    cache[path] = [_hash(path, PREFIX), None]
                by_key.setdefault((cache[path][0],), []).append(path)
            except OSError:
                continue
        for candidates in by_key.values():
            if len(candidates) < 2:
                continue
            full: dict[str, list[Path]] = {}
            for path in candidates:
                try:
                    if cache[path][1] is None:
                        cache[path][1] = cache[path][0] if size <= PREFIX else _hash(path, None)
                    full.setdefault(cache[path][1], []).append(path)
                except OSError:
                    continue
            groups += [g for g in full.values() if len(g) > 1]
    return groups


def _known_identical(dataset: str | None, samples: list[Sample]) -> tuple[str, str] | None:
    """The folder pair of the official release (KolektorSDD kos01 = kos26, ...) that holds these
    byte-identical images; None when they are not such a pair."""
    pairs = KNOWN_IDENTICAL.get(dataset or "", ())
    keys = set()
    for s in samples:
        folder, _, part = s.name.partition("/")
        pair = next((p for p in pairs if folder in p), None)
        if pair is None:
            return None
        keys.add((pair, part))
    return next(iter(keys))[0] if len(keys) == 1 else None


# ---------------------------------------------------------------------------- cheap part


def cheap_audit(parts: dict[str, list[Sample]], audit: Audit, dataset: str | None = None, *, where: str = "",
                needs_defects: bool = False, identical: bool = True, classes: bool = True) -> Audit:
    """The checks that decode nothing (see the module's docstring), added to ``audit``.
    ``parts``: samples by split; ``where`` prefixes messages (``fold 1: ``); ``identical`` and
    ``classes`` switch the byte-identity and the classes-per-split checks."""
    paths: dict[str, dict[Path, list[Sample]]] = {}
    for part, samples in parts.items():
        by_path = paths.setdefault(part, {})
        for s in samples:
            by_path.setdefault(_norm(s.image_path), []).append(s)
        for path, listed in by_path.items():
            if len(listed) > 1:
                audit.add("listed_twice", [path], f"{path}: {where}listed {len(listed)} times in split '{part}'")
    tested = paths.get("test", {})
    for part in ("train", "validation"):
        for path in sorted(set(paths.get(part, {})) & set(tested)):
            audit.add("train_test_overlap", [path], f"{path}: {where}in both the {part} and the test split")
    if identical:
        everything = [s for samples in parts.values() for s in samples]
        by_path = {}
        for s in everything:
            by_path.setdefault(_norm(s.image_path), []).append(s)
        for group in identical_groups(by_path, audit.digests):
            samples = [s for path in group for s in by_path[path]]
            labels = {s.is_defective for s in samples}
            splits = {s.split for s in samples}
            leaks = "test" in splits and splits & {"train", "validation"}
            if len(labels) < 2 and not leaks:
                continue
            shown = " and ".join(map(str, group))
            known = _known_identical(dataset, samples)
            if known:
                audit.note(f"{known[0]} and {known[1]} hold byte-identical images (with different masks) in the official release; kept as published")
                continue
            why = "labelled both good and defective" if len(labels) > 1 else f"{where}in the {'/'.join(sorted(splits - {'test'}))} and the test split"
            audit.add("identical_images", group, f"{shown}: byte-identical images {why}")
    for part, samples in parts.items() if classes else ():
        defective = sum(s.is_defective for s in samples)
        good = len(samples) - defective
        if not samples:
            continue
        if part in ("train", "all") and not good:
            audit.add("missing_class", [], f"{where}split '{part}' has no good images ({defective} defective): every method needs good images, and AP would be undefined")
        elif part == "train" and needs_defects and not defective:
            audit.add("missing_class", [], f"{where}split 'train' has no defective images ({good} good): this method trains on good and defective images")
        if part in ("test", "all") and good and not defective:
            audit.add("missing_class", [], f"{where}split '{part}' has no defective images ({good} good): AP and AUROC would be undefined")
        elif part == "test" and not good:
            audit.add("missing_class", [], f"{where}split 'test' has no good images ({defective} defective): AP and AUROC would be undefined")
    return audit


def check_training_data(parts: dict[str, list[Sample]], dataset: str | None = None, needs_defects: bool = False) -> None:
    """Stop a training whose data would make its result wrong: the cheap audit, first problem
    as one line (with how many more there are)."""
    problems = cheap_audit(parts, Audit(), dataset, needs_defects=needs_defects).problems
    if problems:
        more = f" (and {len(problems) - 1} more problem(s); `defectkit datasets inspect` lists them all)" if len(problems) > 1 else ""
        raise DataError(problems[0].message + more)


# ---------------------------------------------------------------------------- full part


def read_everything(spec, root: Path, audit: Audit) -> list[Sample]:
    """Every sample of the dataset (split ``all``); what stops the reader is recorded, not raised."""
    from .readers.folder import scan_folder

    if spec.name in ("folder", "synthetic"):
        if spec.name == "synthetic":
            spec.read(root, split="all")  # generates it when absent
        problems: list = []
        samples = scan_folder(root, problems)
        if not samples and not problems:
            scan_folder(root)  # raises what is expected there
        for kind, files, message in problems:
            audit.add(kind, files, message)
        return samples
    try:
        return spec.read(root, split="all")
    except DataError as exc:
        # a file inside the dataset stopped the reader: audit the rest; anything else (no such
        # folder, not this layout) is the user's path, refused as one line
        first = Path(str(exc).split(": ", 1)[0])
        if first == root or root not in first.parents:
            raise
        audit.add("reader", [first], str(exc))
        return []


def check_sample(sample: Sample) -> tuple[str, str] | None:
    """(kind, message) when the image does not decode completely or its mask (if any) does not
    decode or fit it; None when both are fine."""
    from PIL import Image

    from .imageio import MaskError, load_mask

    path = sample.image_path
    try:
        if path.stat().st_size == 0:
            return "unreadable", f"{path}: file is empty"
        with Image.open(path) as im:
            im.load()
            size = im.size
    except FileNotFoundError:
        return "missing", f"{path}: file not found"
    except Exception as exc:  # PIL raises many types for broken files
        return "unreadable", f"{path}: unreadable image ({exc})"
    if not sample.has_mask:
        return None
    try:
        mask = load_mask(sample)
    except MaskError as exc:
        return exc.kind, str(exc)
    except DataError as exc:
        return ("missing" if "file not found" in str(exc) else "unreadable"), str(exc)
    if mask.shape != (size[1], size[0]):  # run-length masks: their declared shape
        return "mask_size", f"{sample.name} (run-length mask): mask is {mask.shape[1]}x{mask.shape[0]} but its image {path} is {size[0]}x{size[1]}"
    if sample.is_defective and sample.pixel_labelled and not mask.any():
        where = sample.mask_path or f"{sample.name} (run-length mask)"
        return "empty_mask", f"{where}: mask of defective image {path.name} marks no pixel; segdec trains it on its image label only (--empty-masks pixel: as an empty target)"
    return None


def decode_all(samples: list[Sample], audit: Audit, on_progress: Callable[[int], None] | None = None, workers: int = 4) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (sample, found) in enumerate(zip(samples, pool.map(check_sample, samples)), start=1):
            if found:
                kind, message = found
                on_mask = sample.mask_path is not None and message.startswith(str(sample.mask_path))
                files = [sample.mask_path, sample.image_path] if on_mask else [sample.image_path]
                audit.add(kind, files, message)
            if on_progress:
                on_progress(i)


def orphan_masks(spec, root: Path, samples: list[Sample], audit: Audit) -> None:
    """Mask files no image uses: usually a misnamed mask, whose image then trains without it."""
    from .readers.common import is_image
    from .readers.folder import mask_folders

    if spec.name in ("folder", "synthetic"):
        used = {_norm(s.mask_path) for s in samples if s.mask_path is not None}
        good = {s.image_path.stem for s in samples if not s.is_defective}
        for folder in mask_folders(root):
            for path in sorted(p for p in folder.rglob("*") if is_image(p)):
                if _norm(path) not in used:
                    stem = path.stem
                    owner = next((stem.removesuffix(x) for x in ("_mask", "_label", "_GT", "") if stem.removesuffix(x) in good), None)
                    why = f"matches good image '{owner}', whose mask is empty by definition" if owner else "no defective image matches its name"
                    audit.add("orphan_mask", [path], f"{path}: mask used by no image ({why})")
        return
    patterns = {
        "ksdd": ("kos*/*_label.bmp", lambda p: p.with_name(p.name.removesuffix("_label.bmp") + ".jpg")),
        "dagm": ("Class*/*/Label/*_label.PNG", lambda p: p.parent.parent / (p.name.removesuffix("_label.PNG") + ".PNG")),
        "ksdd2": ("*/*_GT.png", lambda p: p.with_name(p.name.removesuffix("_GT.png") + ".png")),
    }
    if spec.name in patterns:
        pattern, image_of = patterns[spec.name]
        for path in sorted(root.glob(pattern)):
            if not image_of(path).is_file():
                audit.add("orphan_mask", [path], f"{path}: mask of {image_of(path).name}, which is missing")
    if spec.name == "severstal" and (root / "train.csv").is_file():
        from .readers.severstal import read_rle_table

        for image_id, rles in read_rle_table(root / "train.csv").items():
            image = root / "train_images" / f"{image_id}.jpg"
            if rles and not image.is_file():
                audit.add("orphan_mask", [root / "train.csv"], f"{root / 'train.csv'}: run-length masks of {image_id}, whose image {image} is missing")


def listed_files(name: str, root: Path, split: str, folds: Iterable[int | None]) -> Iterable[tuple[Path, str]]:
    """(file, where it is listed) for every file an official split list names."""
    from .splits import load_split

    lists = load_split(name, split)
    if name == "ksdd":
        for k in folds:
            for part, entries in lists["folds"][k].items():
                for folder, _ in entries:
                    yield root / folder, f"folder listed in split {split} ({part} of fold {k})"
        for image in sorted(root.glob("kos[0-9][0-9]/Part*.jpg")):
            yield image.with_name(f"{image.stem}_label.bmp"), f"mask of {image.parent.name}/{image.name}"
    elif name == "dagm":
        for k in folds:
            for part, entries in lists["classes"][k - 1].items():
                for file_name, _ in entries:
                    yield root / f"Class{k}" / part.title() / file_name, f"image listed in split {split} (class {k} {part})"
    elif name == "ksdd2":
        for part, entries in lists.items():
            for image_id, _ in entries:
                yield root / part / f"{image_id}.png", f"image listed in split {split} ({part})"
                yield root / part / f"{image_id}_GT.png", f"mask listed in split {split} ({part})"
    elif name == "severstal":
        for part, entries in lists.items():
            for image_id, _ in entries:
                yield root / "train_images" / f"{image_id}.jpg", f"image listed in split {split} ({part})"


def missing_listed(spec, root: Path, split: str | None, folds: Iterable[int | None], audit: Audit) -> None:
    """Every file the official split lists name that is not on disk (the readers stop at the first)."""
    if split in (None, "all") or not spec.has_official_splits:
        return
    seen = set()
    for path, where in listed_files(spec.name, root, split, folds):
        if path in seen:
            continue
        seen.add(path)
        if not path.exists():
            audit.add("missing", [path], f"{path}: {where} is missing")


def full_audit(spec, root: Path, everything: list[Sample], split: str | None, folds: list, audit: Audit,
               on_progress: Callable[[int], None] | None = None) -> Audit:
    """The decoding part of the audit (the cheap part runs per fold in :mod:`.inspect`)."""
    decode_all(everything, audit, on_progress)
    orphan_masks(spec, root, everything, audit)
    missing_listed(spec, root, split, folds, audit)
    # a reader that stopped on a file reported above says nothing new
    named = {f for p in audit.problems if p.kind != "reader" for f in p.files}
    audit.problems = [p for p in audit.problems if p.kind != "reader" or not set(p.files) & named]
    return audit
