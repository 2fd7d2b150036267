"""Scoring with an exported ONNX model through onnxruntime, without importing torch.

``defectkit.load("model.onnx").predict(image)`` answers like the run's own predictor (same
:class:`~defectkit.infer.predictor.Prediction`): the preprocessing is inside the graph and
the threshold in the sidecar. Images of one call are grouped by size, since a batch of the
graph shares one size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..files import sha256
from .export import FORMAT_VERSION, sidecar_path
from .predictor import NonFiniteScore, Prediction, to_array


class OnnxPredictor:
    def __init__(self, model_path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise DataError("onnxruntime is not installed: pip install 'defectkit[onnx]'") from None
        self.path = Path(model_path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such ONNX model")
        meta_path = sidecar_path(self.path)
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise DataError(f"{meta_path}: missing; it holds the threshold and input spec (export writes it beside the model)") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{meta_path}: not valid JSON ({exc})") from None
        if self.meta.get("format") != "defectkit-onnx" or self.meta.get("format_version", 0) > FORMAT_VERSION:
            raise DataError(f"{meta_path}: not a defectkit ONNX sidecar this version can read")
        if self.meta.get("model_sha256") != sha256(self.path):
            raise DataError(f"{meta_path}: describes another model than {self.path.name} (sha256 differs); export again")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        level = self.meta.get("quantization", {}).get("graph_optimization_level")  # int8 models score alike in any batch at it
        if level is not None:
            if level not in ("basic", "extended", "all"):
                raise DataError(f"{meta_path}: unknown graph_optimization_level {level!r} (basic, extended or all)")
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types
            raise DataError(f"{self.path}: onnxruntime cannot load it: {exc}") from None
        self.method = self.meta["method"]
        self.channels = int(self.meta["input"]["channels"])
        self.resize = self.meta["input"].get("resize", "stretch")
        self.network_size = tuple(self.meta["input"]["network_size"])
        from ..data.preprocess import RESIZE_MODES

        if self.resize not in RESIZE_MODES:
            raise DataError(f"{meta_path}: unknown input resize {self.resize!r} ({' or '.join(RESIZE_MODES)})")
        self.threshold_raw = float(self.meta["threshold"]["raw"])
        self.threshold = float(self.meta["threshold"]["score"])
        # sidecars of format 1 say it only in words
        self.raw_is_logit = bool(self.meta.get("raw_is_logit", str(self.meta.get("outputs", {}).get("raw", "")).startswith("N: decision logit")))
        self.threshold_logit = self.threshold_raw if self.raw_is_logit else None
        self.heatmap_scale = float(self.meta["heatmap_scale"])

    def predict_batch(self, images: list) -> list[Prediction]:
        """One prediction per image; a non-finite score is :class:`NonFiniteScore`, never a decision."""
        from ..data.preprocess import pad_to_aspect

        arrays = [to_array(im, self.channels) for im in images]
        sizes = [a.shape[:2] for a in arrays]
        if self.resize == "pad":  # the graph stretches; on this canvas that keeps the aspect ratio
            arrays = [pad_to_aspect(a, self.network_size) for a in arrays]
        out: list[Prediction | None] = [None] * len(arrays)
        groups: dict[tuple, list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault(array.shape, []).append(i)
        for shape, members in groups.items():
            stack = np.stack([arrays[i] for i in members])
            batch = stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2)
            score, raw, heatmap = self.session.run(None, {"image": np.ascontiguousarray(batch)})
            for j, i in enumerate(members):
                if not (np.isfinite(score[j]) and np.isfinite(raw[j])):
                    raise NonFiniteScore(float(raw[j]), str(images[i]) if isinstance(images[i], (str, Path)) else f"image {i} of the batch")
                logit = float(raw[j]) if self.raw_is_logit else None
                height, width = sizes[i]
                out[i] = Prediction(float(score[j]), bool(raw[j] >= self.threshold_raw), np.ascontiguousarray(heatmap[j][:height, :width], dtype=np.float32),
                                    self.threshold, logit)
        return out

    def predict(self, image: Any) -> Prediction:
        """One image: a path, a NumPy array (uint8, or float in [0, 1]) or a PIL image."""
        return self.predict_batch([image])[0]
