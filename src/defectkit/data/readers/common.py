"""Small helpers shared by the readers."""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if not path.is_dir():
        raise DataError(f"{path}: {what} is not a folder")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def require_samples(samples: list, root: Path, what: str) -> list:
    if not samples:
        raise DataError(f"{root}: {what} is empty (no images found)")
    return samples


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def check_fold(fold: int, count: int, dataset: str, first: int = 0) -> int:
    if not first <= fold < first + count:
        raise DataError(f"{dataset}: fold {fold} does not exist (valid: {first}..{first + count - 1})")
    return fold
