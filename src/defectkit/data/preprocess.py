"""Turning a sample into network inputs and targets, as the two-stage network's papers do.

Order matters and follows the reference: dilate the full-resolution mask, resize it to the
input size (bilinear: soft edges), weight positive pixels by their distance to the nearest
negative, then bring mask and weights to 1/8 resolution by reflect-padding 8 and
average-pooling with kernel 17, stride 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError
from .imageio import load_mask, read_image
from .sample import Sample

DOWNSAMPLE = 8


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``size = (width, height)`` (OpenCV's default, as the reference)."""
    import cv2

    width, height = size
    if array.shape[1] == width and array.shape[0] == height:
        return array
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)


def image_to_tensor_layout(image: np.ndarray) -> np.ndarray:
    """uint8 HxW or HxWxC -> float32 CxHxW in [0, 1]."""
    array = image.astype(np.float32) / 255.0
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


RESIZE_MODES = ("stretch", "pad")


def canvas_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the zero-padded canvas an image of ``height x width`` takes in
    ``pad`` mode: itself widened or heightened at the right or bottom to the input's aspect
    ratio, so that the stretch to ``size = (width, height)`` scales both sides alike."""
    target_w, target_h = size
    if width * target_h < height * target_w:  # narrower than the input: pad the width
        return height, max(width, round(height * target_w / target_h))
    return max(height, round(width * target_h / target_w)), width


def pad_to_aspect(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (HxW or HxWxC, any dtype) on its :func:`canvas_size` canvas: zeros at the
    right or bottom, the image at the top left."""
    height, width = image.shape[:2]
    canvas_h, canvas_w = canvas_size(height, width, size)
    if (canvas_h, canvas_w) == (height, width):
        return image
    out = np.zeros((canvas_h, canvas_w, *image.shape[2:]), dtype=image.dtype)
    out[:height, :width] = image
    return out


def heatmap_to_image(heatmap: np.ndarray, height: int, width: int, size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """A network-size heatmap at the image's ``height x width``: resized (bilinear, as the ONNX
    graph does), in ``pad`` mode to the canvas and then cropped to the image."""
    import cv2

    canvas_h, canvas_w = canvas_size(height, width, size) if mode == "pad" else (height, width)
    out = heatmap if heatmap.shape == (canvas_h, canvas_w) else cv2.resize(heatmap, (canvas_w, canvas_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out[:height, :width], dtype=np.float32)


def network_input(image: np.ndarray, size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """uint8 HxW or HxWxC -> float32 CxHxW in [0, 1] at ``size = (width, height)``; in ``pad``
    mode the image is first put on its :func:`canvas_size` canvas (the aspect ratio kept).

    Bilinear with half-pixel centres and no antialiasing, computed in float from the uint8
    pixels: the reference resizes the uint8 image with OpenCV, whose fixed-point arithmetic
    rounds to whole grey levels; this keeps the sub-level values instead (at most one grey
    level apart) and is exactly what the exported ONNX graph computes (its Resize op), so an
    exported model scores like the run it came from.
    """
    import torch
    import torch.nn.functional as F

    width, height = size
    array = image_to_tensor_layout(pad_to_aspect(image, size) if mode == "pad" else image)
    if array.shape[1:] == (height, width):
        return array
    with torch.inference_mode():
        out = F.interpolate(torch.from_numpy(array)[None], size=(height, width), mode="bilinear", align_corners=False)
    return out[0].numpy()


def dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Grow the defect with a ``size`` x ``size`` box of ones; 0 or 1 leaves it unchanged."""
    import cv2

    if size is None or size <= 1:
        return mask
    return cv2.dilate(mask, np.ones((size, size), np.uint8))


def distance_weights(mask: np.ndarray, max_value: float = 1.0, p: float = 1.0, per_component: bool = False) -> np.ndarray:
    """Segmentation-loss weights: ``max_value * (d / d_max) ** p`` on positive pixels, where d is
    the Euclidean distance to the nearest negative pixel, and 1 on negative pixels.

    ``d_max`` is taken over the whole mask (paper preset); ``per_component=True`` normalises each
    8-connected defect on its own, as the authors' code does."""
    from scipy import ndimage

    positive = mask > 0
    weights = np.ones(mask.shape, dtype=np.float32)
    if not positive.any():
        return weights
    distance = ndimage.distance_transform_edt(positive)
    if per_component:
        labels, count = ndimage.label(positive, structure=np.ones((3, 3)))
        peaks = np.asarray(ndimage.maximum(distance, labels, index=np.arange(1, count + 1)))
        d_max = peaks[labels[positive] - 1]
    else:
        d_max = distance.max()
    weights[positive] = max_value * (distance[positive] / d_max) ** p
    return weights


def downsample(array: np.ndarray, factor: int = DOWNSAMPLE) -> np.ndarray:
    """Reflect-pad ``factor`` and average-pool with kernel ``2*factor+1``, stride ``factor``
    (the reference's ``ReflectionPad2d`` + ``AvgPool2d``), as an integral image in float64."""
    height, width = array.shape
    if height <= factor or width <= factor:
        raise DataError(f"cannot downsample a {height}x{width} map by {factor}: both sides must exceed {factor}")
    kernel = 2 * factor + 1
    padded = np.pad(array.astype(np.float64), factor, mode="reflect")
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1))
    integral[1:, 1:] = padded.cumsum(0).cumsum(1)
    rows = np.arange(0, padded.shape[0] - kernel + 1, factor)
    cols = np.arange(0, padded.shape[1] - kernel + 1, factor)
    r0, c0 = rows[:, None], cols[None, :]
    total = integral[r0 + kernel, c0 + kernel] - integral[r0, c0 + kernel] - integral[r0 + kernel, c0] + integral[r0, c0]
    return (total / kernel**2).astype(np.float32)


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a sample into training tensors; saved with every run."""

    input_size: tuple[int, int] = (512, 1408)  # (width, height), both divisible by 8
    channels: int = 1
    dilate: int = 7
    weighted_segmentation: bool = True  # distance-transform weights on positive pixels
    weight_p: float = 2.0
    weight_max: float = 1.0
    weight_per_component: bool = False
    resize: str = "stretch"  # stretch: both sides to the input size; pad: the aspect ratio kept (zeros at the right or bottom)

    def __post_init__(self):
        width, height = self.input_size
        if width % DOWNSAMPLE or height % DOWNSAMPLE or width <= 0 or height <= 0:
            raise ConfigError(f"input size {width}x{height} must be positive multiples of {DOWNSAMPLE}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")

    def image(self, sample: Sample) -> np.ndarray:
        """float32 CxHxW in [0, 1] at the input size."""
        return network_input(read_image(sample.image_path, self.channels), self.input_size, self.resize)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image CxHxW, soft mask, loss weights), the last two at 1/8 of the input size.

        A weakly labelled positive gets zero targets and weights: it gives no segmentation loss."""
        raw = read_image(sample.image_path, self.channels)
        image = network_input(raw, self.input_size, self.resize)
        width, height = self.input_size
        shape = (height // DOWNSAMPLE, width // DOWNSAMPLE)
        if sample.is_defective and not sample.pixel_labelled:
            return image, np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        mask = load_mask(sample)
        if mask is None:
            raise DataError(f"{sample.image_path}: marked pixel-labelled but has no mask")
        if mask.shape != raw.shape[:2]:
            raise DataError(
                f"{sample.mask_path or sample.name}: mask is {mask.shape[1]}x{mask.shape[0]} "
                f"but its image {sample.image_path.name} is {raw.shape[1]}x{raw.shape[0]}"
            )
        mask = dilate(mask, self.dilate).astype(np.float32)
        mask = resize(pad_to_aspect(mask, self.input_size) if self.resize == "pad" else mask, self.input_size)
        if self.weighted_segmentation:
            weights = distance_weights(mask, self.weight_max, self.weight_p, self.weight_per_component)
        else:
            weights = np.ones_like(mask)
        return image, downsample(mask), downsample(weights)
