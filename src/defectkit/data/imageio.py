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


class MaskError(DataError):
    """A mask file that decodes but cannot be used as this image's mask (``kind`` says why)."""

    kind = "mask_mode"


class MaskSizeError(MaskError):
    kind = "mask_size"


# PIL modes a mask may have: grey of any integer depth, bilevel, or palette (the index is the value)
GREY_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")


def read_mask_file(path: str | Path) -> np.ndarray:
    """Binary uint8 mask (0/1) of a mask file: any value above 0 is defect.

    Valid masks are single-channel images of integer values: 8- or 16-bit grey, bilevel, or
    palette images, where the palette *index* is the value (KolektorSDD: index 1 = defect).
    So 0/255 PNGs (DAGM), 0/1 masks, palette BMPs with extra levels and bounding-box masks
    all work. An RGB(A) mask is accepted when it is grey (R = G = B everywhere); a colour one
    is refused, since which colour is a defect cannot be guessed, and so are float images.
    An alpha channel is ignored."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("LA", "PA"):
                im = im.getchannel(0)
                mode = im.mode
            if mode in GREY_MODES:
                values = np.asarray(im)
            elif mode in ("RGB", "RGBA"):
                rgb = np.asarray(im)[..., :3]
                if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
                    raise MaskError(
                        f"{path}: mask is a colour image (its R, G and B differ); a mask must be grey or a palette "
                        "image, 0 = good and anything above 0 = defect"
                    )
                values = rgb[..., 0]
            else:
                raise MaskError(f"{path}: image mode {mode} cannot be a mask (expected a grey, bilevel or palette image)")
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError(f"{path}: not a readable image ({exc})") from None
    return (values > 0).astype(np.uint8)


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


def empty_mask_samples(samples: list[Sample], workers: int = 4) -> list[int]:
    """Indices of the defective, pixel-labelled samples whose mask marks no pixel (masks only
    are read; a mask that cannot be read is left to the loader to report)."""
    from concurrent.futures import ThreadPoolExecutor

    candidates = [i for i, s in enumerate(samples) if s.is_defective and s.pixel_labelled and s.has_mask]

    def empty(i: int) -> bool:
        s = samples[i]
        try:
            mask = read_mask_file(s.mask_path) if s.mask_path is not None else load_mask(s)
        except DataError:
            return False
        return mask is not None and not mask.any()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [i for i, is_empty in zip(candidates, pool.map(empty, candidates)) if is_empty]


def load_mask(sample: Sample) -> np.ndarray | None:
    """Full-resolution binary mask of a sample; zeros for a good image without a mask file;
    ``None`` for a defective image that has no pixel annotation at all.

    A mask file whose size differs from its image's is refused (:class:`MaskSizeError`):
    resizing it would silently move the defect under the pixel metrics and the training loss."""
    if sample.mask_path is not None:
        mask = read_mask_file(sample.mask_path)
        width, height = image_size(sample.image_path)
        if mask.shape != (height, width):
            raise MaskSizeError(
                f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{sample.image_path.name} is {width}x{height}"
            )
        return mask
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
