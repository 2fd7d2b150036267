"""A user's own images, no code needed.

Accepted layouts (image suffixes: png, jpg, jpeg, bmp, tif, tiff)::

    root/good/*.png            root/train/good/*.png        root/labels.csv
    root/defective/*.png       root/train/defective/*.png     image,label,split[,mask]
    root/masks/<stem>.png      root/test/good/ ...            good/a.png,good,train
                               root/test/defective/ ...       bad/b.png,defective,test,m/b.png
                               root/masks/<stem>.png

Masks are matched by file stem (``<stem>``, ``<stem>_mask``, ``<stem>_label`` or ``<stem>_GT``)
in ``<split>/masks/`` first, then ``masks/``. Images in subfolders (``defective/cam1/x.png``)
look for a mask at the same place under ``masks/`` (``masks/cam1/x.png``) first, then by
stem alone. A defective image without a mask is used with its image label only.
``validation/`` is recognised beside ``train/`` and ``test/``. Without split folders every
sample has split ``all``.

A mask matched by stem must belong to one image: when two images share a stem
(``x.png`` and ``x.jpg``, ``cam1/x.png`` and ``cam2/x.png``, or ``train/`` and ``test/``
images with one ``masks/x.png``) or one image matches two mask files (``x.png`` and
``x.bmp``), the dataset is refused naming them; a ``mask`` column in labels.csv names masks
explicitly and is never ambiguous.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ...errors import DataError
from ..sample import Sample
from .common import is_image, require_dir, require_samples

SPLITS = ("train", "validation", "test")
CLASS_DIRS = {"good": False, "defective": True}
MASK_SUFFIXES = ("", "_mask", "_label", "_GT")
LABELS = {"good": False, "ok": False, "normal": False, "0": False, "defective": True, "bad": True, "ng": True, "defect": True, "1": True}
CSV_NAME = "labels.csv"

def _problem(problems: list | None, kind: str, files, message: str) -> None:
    """Record a problem as (kind, files, one-line message) when the audit collects them, so
    that it reports every one; else (training, evaluation) raise the first."""
    if problems is None:
        raise DataError(message)
    problems.append((kind, tuple(str(f) for f in files), message))


def _mask_index(*folders: Path) -> dict[str, list[Path]]:
    """Mask files by their path under the masks folder without suffix (``cam1/x``); the
    earlier folder wins a key, files of one folder sharing a key are all kept (ambiguous)."""
    index: dict[str, list[Path]] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        found: dict[str, list[Path]] = {}
        for path in sorted(folder.rglob("*")):
            if is_image(path):
                found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
        for key, paths in found.items():
            index.setdefault(key, paths)
    return index


def _find_masks(relative: str, index: dict[str, list[Path]]) -> list[Path]:
    """Candidate masks of an image at ``relative`` (its path under its class folder, without
    suffix): the mirrored place first, then the stem alone; more than one is ambiguous."""
    stem = relative.rsplit("/", 1)[-1]
    for key in dict.fromkeys((relative, stem)):
        for suffix in MASK_SUFFIXES:
            if key + suffix in index:
                return index[key + suffix]
    return []


def _pick_mask(image: Path, candidates: list[Path], problems) -> Path | None:
    if len(candidates) > 1:
        _problem(problems, "ambiguous_mask", [image, *candidates],
                 f"{image}: matches {len(candidates)} mask files ({', '.join(map(str, candidates))}); keep one, or name the mask in labels.csv")
    return candidates[0] if candidates else None


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


def _from_class_dirs(root: Path, base: Path, split: str, problems) -> list[Sample]:
    masks = _mask_index(base / "masks", root / "masks")
    samples = []
    for class_dir, defective in CLASS_DIRS.items():
        folder = base / class_dir
        if not folder.is_dir():
            continue
        for image in sorted(p for p in folder.rglob("*") if is_image(p)):
            mask = None
            if defective:
                relative = image.relative_to(folder).with_suffix("").as_posix()
                mask = _pick_mask(image, _find_masks(relative, masks), problems)
            samples.append(_sample(root, image, defective, split, mask))
    return samples


def _from_csv(csv_path: Path, problems) -> tuple[list[Sample], set[Path]]:
    """Samples of a labels.csv and the images whose mask its ``mask`` column names."""
    root = csv_path.parent
    masks = _mask_index(root / "masks")
    samples, explicit = [], set()
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot read it ({exc.strerror})") from None
    try:
        rows = csv.DictReader(io.StringIO(text, newline=""))
        fields = [f.strip().lower() for f in rows.fieldnames or []]
        if "image" not in fields or "label" not in fields:
            raise DataError(f"{csv_path}: needs the columns image,label (and optionally split, mask); found {fields}")
        for line_no, raw in enumerate(rows, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            image = root / row["image"]
            if not image.is_file():
                _problem(problems, "missing", [image], f"{csv_path} line {line_no}: image {image} not found")
                continue
            label = row["label"].lower()
            if label not in LABELS:
                _problem(problems, "bad_row", [csv_path], f"{csv_path} line {line_no}: label '{row['label']}' is not one of good/defective (or 0/1, ok/ng)")
                continue
            split = row.get("split") or "all"
            if split not in SPLITS + ("all",):
                _problem(problems, "bad_row", [csv_path], f"{csv_path} line {line_no}: split '{split}' is not one of train/validation/test")
                continue
            if row.get("mask"):
                mask = root / row["mask"]
                explicit.add(image)
                if not mask.is_file():
                    _problem(problems, "missing", [mask], f"{csv_path} line {line_no}: mask {mask} not found")
                    mask = None
            else:
                mask = _pick_mask(image, _find_masks(image.stem, masks), problems) if LABELS[label] else None
            samples.append(_sample(root, image, LABELS[label], split, mask))
    except csv.Error as exc:
        raise DataError(f"{csv_path}: not a valid CSV file ({exc})") from None
    return samples, explicit


def _check_shared_masks(samples: list[Sample], explicit: set[Path], problems) -> None:
    """Refuse a mask matched by stem to more than one image: which one it outlines is a guess."""
    users: dict[Path, list[Path]] = {}
    for s in samples:
        if s.mask_path is not None and s.image_path not in explicit:
            users.setdefault(s.mask_path, []).append(s.image_path)
    for mask, images in users.items():
        if len(set(images)) > 1:
            shown = " and ".join(map(str, dict.fromkeys(images)))
            _problem(problems, "ambiguous_mask", [mask, *dict.fromkeys(images)],
                     f"{mask}: mask matched by file stem to both {shown}; rename one image, put its mask at the "
                     "same subfolder under masks/, or name each image's mask in labels.csv (column mask)")


def scan_folder(root: str | Path, problems: list | None = None) -> list[Sample]:
    """Every sample of a folder dataset (all splits). With ``problems`` (a list) what is wrong
    with the layout (missing files, bad rows, ambiguous masks) is appended to it and reading
    goes on; without, the first one raises :class:`DataError`."""
    root = Path(root)
    explicit: set[Path] = set()
    if root.suffix.lower() == ".csv":
        if not root.is_file():
            raise DataError(f"{root}: CSV file not found")
        samples, explicit = _from_csv(root, problems)
    else:
        require_dir(root, "dataset folder")
        if (root / CSV_NAME).is_file():
            samples, explicit = _from_csv(root / CSV_NAME, problems)
        elif any((root / s).is_dir() for s in SPLITS):
            samples = [x for s in SPLITS for x in _from_class_dirs(root, root / s, s, problems)]
        else:
            samples = _from_class_dirs(root, root, "all", problems)
        if not samples and problems is None:
            raise DataError(
                f"{root}: no images found; expected good/ and defective/ folders "
                "(or train/ and test/ each holding them, or a labels.csv)"
            )
    _check_shared_masks(samples, explicit, problems)
    return samples


MASK_FOLDER_NAMES = {"masks", "mask", "ground_truth", "groundtruth", "gt", "labels", "label", "annotations"}  # "Label": DAGM's


def mask_like(files: list[Path], base: Path) -> dict[Path, str]:
    """The files among ``files`` (found under folder ``base``) that look like masks, with why:
    under a mask folder (``masks/``, ``ground_truth/``, ...); named ``<stem>_mask``, ``_label``
    or ``_GT`` beside an image ``<stem>``; or sharing its stem with another image of the folder
    (``x.png`` beside ``x.jpg``) while holding two pixel values at most, as a mask does."""
    from PIL import Image

    out: dict[Path, str] = {}
    by_folder: dict[Path, dict[str, list[Path]]] = {}
    for f in files:
        by_folder.setdefault(f.parent, {}).setdefault(f.stem.lower(), []).append(f)
    for f in files:
        try:
            parts = f.relative_to(base).parts[:-1]
        except ValueError:
            parts = ()
        folder = next((p for p in parts if p.lower() in MASK_FOLDER_NAMES), None)
        if folder is not None:
            out[f] = f"in a {folder}/ folder"
            continue
        stems = by_folder[f.parent]
        owner = next((f.stem[: -len(x)] for x in MASK_SUFFIXES if x and f.stem.lower().endswith(x.lower()) and f.stem[: -len(x)].lower() in stems), None)
        if owner is not None:
            out[f] = f"named like the mask of {owner}"
            continue
        if len(stems[f.stem.lower()]) > 1:
            try:
                with Image.open(f) as image:
                    two_valued = image.getcolors(maxcolors=2) is not None  # None: more than two colours
            except Exception:  # unreadable: predict reports it as an image that cannot be read
                continue
            if two_valued:
                out[f] = f"two-valued like a mask, beside {next(o.name for o in stems[f.stem.lower()] if o != f)}"
    return out


def mask_folders(root: str | Path) -> list[Path]:
    """The folders masks are matched in (``masks/`` and ``<split>/masks/``) that exist."""
    root = Path(root)
    base = root.parent if root.suffix.lower() == ".csv" else root
    return [f for f in [base / "masks", *(base / s / "masks" for s in SPLITS)] if f.is_dir()]


def read_folder(root: str | Path, split: str | None = None, fold: int | None = None) -> list[Sample]:
    """Every image under ``root`` in one of the layouts above; ``split`` keeps only that part.

    ``root`` may also be the path of a CSV file laid out like ``labels.csv``."""
    samples = scan_folder(root)
    root = Path(root)
    if root.suffix.lower() == ".csv":
        root = root.parent
    if split not in (None, "all"):
        samples = [s for s in samples if s.split == split]
        return require_samples(samples, root, f"split '{split}'")
    return samples
