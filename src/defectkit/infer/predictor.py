"""``defectkit.load(RUN_DIR).predict(image)``: score, decision and full-resolution heatmap, for any method.

The run folder's method decides what the numbers mean (``Method.score_text``): a method with
a logit gives a defect probability (with its logit) and a probability map; the others an
anomaly score and their anomaly map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import runs
from ..errors import DataError


class NonFiniteScore(DataError):
    """The model gave NaN or an infinity for an image: no decision can be made from it."""

    def __init__(self, value: float, where: str = "an image"):
        super().__init__(f"{where}: the model gave a non-finite score ({value}); no decision can be made from it")
        self.value = value


@dataclass
class Prediction:
    score: float  # the method's score: a defect probability (methods with a logit) or an anomaly score
    decision: bool  # raw score (the logit, as probabilities can round to 1.0) >= the run's threshold
    heatmap: np.ndarray  # HxW float32 at the input image's resolution: defect probability, or anomaly map
    threshold: float  # the decision threshold in the units of ``score``
    logit: float | None  # the logit; None for methods whose score is no probability


def to_array(image: Any, channels: int) -> np.ndarray:
    """uint8 HxW (gray) or HxWx3 (RGB) from a path, a NumPy array or a PIL image."""
    from ..data.imageio import read_image

    if isinstance(image, (str, Path)):
        return read_image(image, channels)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("L" if channels == 1 else "RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 1.0 + 1e-6):
            raise DataError(f"float images must hold values in [0, 1]; got {array.min():.3g}..{array.max():.3g}")
        array = np.round(array * 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return array if channels == 1 else np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = array[:, :, :3]
        return rgb if channels == 3 else np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    raise DataError(f"cannot use an image array of shape {array.shape}; expected HxW or HxWx3")


class Predictor:
    """Scores images of any size and kind with a run's trained method; ``threshold_raw`` is in raw-score units."""

    def __init__(self, method, threshold_raw: float, device: str = "cpu", threshold_source: dict | None = None):
        self.trained, self.config, self.device, self.method = method, method.config, device, method.name
        self.raw_is_logit = method.raw_is_logit
        self.threshold_raw = float(threshold_raw)
        self.threshold_source = threshold_source or {}  # where the threshold comes from (Method.run_threshold)
        self.threshold = float(method.to_score(self.threshold_raw))
        self.threshold_logit = self.threshold_raw if self.raw_is_logit else None
        self.pre = method.pre
        self.channels = self.pre.channels  # 1 gray, 3 RGB: how callers should read images
        self.heatmap_scale = method.heatmap_scale(self.threshold_raw)

    def network_input(self, image: Any) -> np.ndarray:
        """What the network takes for one image (any kind :func:`to_array` reads)."""
        from ..data.preprocess import network_input

        return network_input(to_array(image, self.pre.channels), self.pre.input_size, self.pre.resize)

    def predict_inputs(self, x: np.ndarray, names: list[str] | None = None) -> list[Prediction]:
        """Predictions of a stack of :meth:`network_input`'s, heatmaps at the network's size.
        A non-finite score is :class:`NonFiniteScore` (naming ``names[i]``), never a decision."""
        raws, maps = self.trained.score_batch(x)
        out = []
        for i, (z, small) in enumerate(zip(raws, maps)):
            score = float(self.trained.to_score(z))
            if not (math.isfinite(float(z)) and math.isfinite(score)):
                raise NonFiniteScore(float(z), names[i] if names else f"image {i} of the batch")
            out.append(Prediction(score, bool(z >= self.threshold_raw), small, self.threshold, float(z) if self.raw_is_logit else None))
        return out

    def predict_batch(self, images: list) -> list[Prediction]:
        from ..data.preprocess import heatmap_to_image

        arrays = [to_array(im, self.pre.channels) for im in images]
        x = np.stack([self.network_input(a) for a in arrays])
        names = [str(im) if isinstance(im, (str, Path)) else f"image {i} of the batch" for i, im in enumerate(images)]
        out = self.predict_inputs(x, names)
        for array, p in zip(arrays, out):
            p.heatmap = heatmap_to_image(p.heatmap, array.shape[0], array.shape[1], self.pre.input_size, self.pre.resize)
        return out

    def predict(self, image: Any) -> Prediction:
        """One image: a path, a NumPy array (uint8, or float in [0, 1]) or a PIL image."""
        return self.predict_batch([image])[0]


def load(run_dir: str | Path, device: str = "cpu", weights: str = runs.MODEL) -> Predictor:
    """A predictor from a run folder of any method, with the decision threshold recorded for
    ``weights`` (threshold.json, else the evaluated one in metrics.json; ``Method.run_threshold``):
    a run without one is refused."""
    from ..methods.registry import load_method

    method = load_method(run_dir, device=device, weights=weights)
    threshold = method.run_threshold(run_dir, weights)
    return Predictor(method, threshold["value"], device, threshold)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, scale: float = 1.0) -> np.ndarray:
    """RGB uint8 picture of the heatmap (jet colours, ``scale`` at the top) over the image."""
    import cv2

    heatmap = heatmap / scale if scale != 1.0 else heatmap
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    colours = cv2.cvtColor(cv2.applyColorMap(np.clip(heatmap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(base, 1 - alpha, colours, alpha, 0)
