"""Uploaded bytes to pixels and heatmaps to PNG, with a 4xx answer for every bad upload.

Checks run cheapest first, so a bad upload costs little: the part's content type, an empty
file, then the image header (PIL reads the dimensions without decoding the pixels; a picture
over the pixel limit is refused before any decoding), then the full decode. Pixels are
decoded with OpenCV exactly as :func:`defectkit.data.imageio.read_image` reads a file, so the
service scores an upload as ``defectkit predict`` scores the same file; a format OpenCV does
not read but PIL does falls back to PIL (converted as :func:`defectkit.infer.predictor.to_array`
converts a PIL image). OpenCV returns nothing for a truncated or corrupt file, and PIL's full
``load()`` then says what is wrong.
"""

from __future__ import annotations

import base64
import io

import numpy as np


class BadInput(Exception):
    """An upload the service refuses: ``status`` (4xx) and a message naming the file."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


# a part's content type the service reads as a possible image; browsers and curl send
# application/octet-stream (or nothing) for files whose type they do not know
NEUTRAL_TYPES = ("", "application/octet-stream", "binary/octet-stream")


def check_content_type(name: str, content_type: str | None) -> None:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in NEUTRAL_TYPES or kind.startswith("image/"):
        return
    raise BadInput(415, f"{name}: content type {kind} is not an image; send image files (image/*, or application/octet-stream)")


def header_size(name: str, data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header; 4xx for an empty file, a non-image or one over ``max_pixels``."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadInput(422, f"{name}: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError:  # PIL's own limit (Image.MAX_IMAGE_PIXELS), met before ours when set lower
        raise BadInput(413, f"{name}: image has too many pixels (PIL refuses it as a decompression bomb); the limit is {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise BadInput(415, f"{name}: not an image (no image format this service reads: PNG, JPEG, BMP, TIFF, WebP, ...)") from None
    except Exception as exc:  # PIL raises several kinds for headers it cannot parse
        raise BadInput(415, f"{name}: not a readable image (its header is damaged: {exc})") from None
    if width < 1 or height < 1:
        raise BadInput(422, f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise BadInput(413, f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}")
    return width, height


def decode(name: str, data: bytes, channels: int) -> np.ndarray:
    """uint8 HxW (``channels`` 1) or HxWx3 RGB (3), as read_image reads a file; 422 when it cannot be decoded."""
    import cv2

    try:
        flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:
        image = None
    if image is not None:
        return image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    from PIL import Image

    try:  # formats OpenCV does not read (GIF, ICO, ...) and a clear reason for those it found broken
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except Exception as exc:
        raise BadInput(422, f"{name}: the image cannot be decoded: truncated or corrupt ({exc})") from None


def png_base64(image: np.ndarray) -> str:
    """PNG of a uint8 HxW (gray) or HxWx3 (RGB) array, base64 text."""
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buffer.tobytes()).decode("ascii")


def heatmap_png(kind: str, image: np.ndarray, heatmap: np.ndarray, scale: float) -> str:
    """``overlay``: the jet-coloured heatmap over the image (as ``defectkit predict`` draws it);
    ``map``: the heatmap divided by ``scale`` as 8-bit gray (255 = the top of the scale)."""
    if kind == "overlay":
        from ..infer.predictor import overlay

        return png_base64(overlay(image, heatmap, scale=scale))
    if kind == "map":
        return png_base64(np.round(np.clip(heatmap / scale, 0.0, 1.0) * 255).astype(np.uint8))
    raise ValueError(f"unknown heatmap kind {kind!r}")
