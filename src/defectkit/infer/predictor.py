"""``defectkit.load(RUN_DIR).predict(image)``: score, decision and full-resolution heatmap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import runs
from ..errors import DataError


@dataclass
class Prediction:
    score: float  # probability that the image shows a defect
    decision: bool  # logit >= the run's decision threshold (as a logit: probabilities can round to 1.0)
    heatmap: np.ndarray  # HxW float32 defect probability at the input image's resolution
    threshold: float  # the decision threshold as a probability
    logit: float


def load_model(run_dir: Path, device: str = "cpu", weights: str = runs.MODEL):
    """(model in eval mode on ``device``, its TrainConfig) from a run folder."""
    from ..methods.segdec import read_run_config, resolve_device
    from ..models.registry import model_from_config

    run_dir = runs.require_run(Path(run_dir), weights)
    config, model_section = read_run_config(run_dir)
    model = model_from_config(model_section["name"], model_section["config"])
    runs.load_weights(model, run_dir / weights)
    return model.to(resolve_device(device)).eval(), config


def _to_array(image: Any, channels: int) -> np.ndarray:
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
    def __init__(self, model, config, threshold_logit: float, device: str = "cpu"):
        from ..methods.segdec import sigmoid

        self.model, self.config, self.device = model, config, device
        self.threshold_logit = float(threshold_logit)
        self.threshold = float(sigmoid(self.threshold_logit))
        self.pre = config.preprocessing()

    def predict_batch(self, images: list) -> list[Prediction]:
        import cv2
        import torch

        from ..data.preprocess import image_to_tensor_layout, resize

        arrays = [_to_array(im, self.pre.channels) for im in images]
        x = np.stack([image_to_tensor_layout(resize(a, self.pre.input_size)) for a in arrays])
        with torch.inference_mode():
            logit, seg = self.model(torch.from_numpy(x).to(self.device))
            logits = logit.double().cpu().numpy()
            maps = torch.sigmoid(seg[:, 0]).float().cpu().numpy()
        from ..methods.segdec import sigmoid

        out = []
        for array, z, small in zip(arrays, logits, maps):
            heatmap = cv2.resize(small, (array.shape[1], array.shape[0]), interpolation=cv2.INTER_LINEAR)
            out.append(Prediction(float(sigmoid(z)), bool(z >= self.threshold_logit), heatmap.astype(np.float32), self.threshold, float(z)))
        return out

    def predict(self, image: Any) -> Prediction:
        """One image: a path, a NumPy array (uint8, or float in [0, 1]) or a PIL image."""
        return self.predict_batch([image])[0]


def load(run_dir: str | Path, device: str = "cpu", weights: str = runs.MODEL) -> Predictor:
    """A predictor from a run folder; the decision threshold comes from its metrics.json
    (``decision_threshold_logit``), or probability 0.5 (logit 0) before the run was evaluated."""
    run_dir = Path(run_dir)
    model, config = load_model(run_dir, device, weights)
    threshold_logit = 0.0
    if (run_dir / runs.METRICS).is_file():
        threshold_logit = runs.read_json(run_dir / runs.METRICS).get("decision_threshold_logit", threshold_logit)
    return Predictor(model, config, threshold_logit, device)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture of the heatmap (jet colours) over the image."""
    import cv2

    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    colours = cv2.cvtColor(cv2.applyColorMap(np.clip(heatmap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(base, 1 - alpha, colours, alpha, 0)
