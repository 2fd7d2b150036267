"""Reading images and masks with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .sample import Sample


def _decode(path: Path, flag: int) -> np.ndarray:
    import cv2

    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if raw.size == 0:
        raise DataError(f"{path}: file is empty")
    image = cv2.imdecode(raw, flag)
    if image is None:
        raise DataError(f"{path}: not a readable image (corrupt or unsupported format)")
    return image


def read_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """uint8 image, HxW for ``channels=1`` and HxWx3 RGB for ``channels=3``."""
    import cv2

    path = Path(path)
    if channels == 1:
        return _decode(path, cv2.IMREAD_GRAYSCALE)
    if channels == 3:
        return cv2.cvtColor(_decode(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    raise DataError(f"channels must be 1 or 3, got {channels}")


def read_mask_file(path: str | Path) -> np.ndarray:
    """Binary uint8 mask (0/1): any value above 0 is defect (palette BMPs, 0/255 PNGs, boxes)."""
    import cv2

    mask = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return (mask > 0).astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def rle_runs(rle: str, shape: tuple[int, int], *, source: str = "RLE") -> tuple[np.ndarray, np.ndarray]:
    """Validated 0-based (starts, ends) of a Kaggle/Severstal run-length encoding."""
    height, width = shape
    values = rle.split()
    if len(values) % 2:
        raise DataError(f"{source}: odd number of values in run-length encoding")
    try:
        pairs = np.asarray(values, dtype=np.int64).reshape(-1, 2)
    except ValueError:
        raise DataError(f"{source}: run-length encoding holds a non-integer value") from None
    starts, lengths = pairs[:, 0] - 1, pairs[:, 1]
    if len(pairs) and (starts.min() < 0 or lengths.min() < 0):
        raise DataError(f"{source}: run-length encoding has a start below 1 or a negative length")
    ends = starts + lengths
    total = height * width
    if len(pairs) and ends.max() > total:
        raise DataError(
            f"{source}: run-length encoding runs past the image "
            f"(pixel {int(ends.max())} > {height}x{width} = {total} pixels)"
        )
    return starts, ends


def rle_decode(rle: str, shape: tuple[int, int], *, source: str = "RLE") -> np.ndarray:
    """Binary mask of a run-length encoding: 1-based starts, column-major (Severstal/Kaggle)."""
    height, width = shape
    starts, ends = rle_runs(rle, shape, source=source)
    flat = np.zeros(height * width + 1, dtype=np.int32)
    np.add.at(flat, starts, 1)
    np.add.at(flat, ends, -1)
    mask = (np.cumsum(flat[:-1]) > 0).astype(np.uint8)
    return np.ascontiguousarray(mask.reshape(width, height).T)


def load_mask(sample: Sample) -> np.ndarray | None:
    """Full-resolution binary mask of a sample; zeros for a good image without a mask file;
    ``None`` for a defective image that has no pixel annotation at all."""
    if sample.mask_path is not None:
        return read_mask_file(sample.mask_path)
    if sample.mask_rle:
        shape = sample.mask_shape
        if shape is None:
            raise DataError(f"{sample.name}: run-length mask without an image shape")
        mask = np.zeros(shape, dtype=np.uint8)
        for rle in sample.mask_rle:
            mask |= rle_decode(rle, shape, source=sample.name)
        return mask
    if not sample.is_defective:
        width, height = image_size(sample.image_path)
        return np.zeros((height, width), dtype=np.uint8)
    return None
