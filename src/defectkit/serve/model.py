"""The model a service answers with: a run folder (PyTorch) or an exported ``.onnx`` (onnxruntime).

The predictor is built and always used in one thread of its own (``executor``), so a PyTorch
model or an onnxruntime session never sees two threads. ``info`` is what ``GET /model``
shows: method, preset, input size, channels, backend, threshold with its source, and the
run's test metrics (a run folder) or the export's sidecar fields (an ONNX model).

Memory: an upload is turned into what the model takes as soon as it is decoded
(:meth:`ServedModel.prepare`). For a run folder that is the network input (the library's own
``network_input``, so the scores are the predictor's), and the full-size picture can be dropped
at once; the full-resolution heatmap is only drawn when a request asks for it
(:meth:`ServedModel.full_heatmap`). An ONNX graph preprocesses inside, so it is given the
decoded picture and returns the full-size heatmap (``holds_full_images``).

A score that is not finite (NaN weights, an overflow) is never turned into a decision:
:class:`NonFiniteScore` is raised instead, and a model that scores a blank image so is refused
when it is loaded.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import runs
from ..errors import ConfigError, DataError
from ..files import sha256
from ..infer.predictor import NonFiniteScore


def check_device(device: str) -> None:
    """A device PyTorch knows and this machine has (``accel.resolve``: a ConfigError otherwise)."""
    from ..methods.accel import resolve

    resolve(device, "fp32")


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class ServedModel:
    """The predictor, its one thread, and the steps the service runs around it."""

    def __init__(self, model_path: str | Path, device: str = "cpu", threads: int | None = None, weights: str = runs.MODEL):
        self.path = Path(model_path)
        self.weights_name = weights
        self.backend = "onnx" if self.path.suffix == ".onnx" else "torch"
        if self.backend == "onnx" and device != "cpu":
            raise ConfigError(f"{self.path.name}: an ONNX model runs on the CPU (onnxruntime's CPU provider); device must be 'cpu', got {device!r}")
        if self.backend == "torch" and not self.path.exists():
            raise DataError(f"{self.path}: no such run folder or .onnx model")
        if self.backend == "torch":
            check_device(device)
        self.device = device
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="defectkit-model")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        self.predictor = self.executor.submit(self._load, threads).result()
        p = self.predictor
        self.channels, self.method, self.heatmap_scale = p.channels, p.method, p.heatmap_scale
        self.threshold, self.threshold_raw = p.threshold, p.threshold_raw
        if self.backend == "onnx":
            self.weights = self.path
            self.model_id = p.meta["model_sha256"][:16]  # the predictor checked it against the file
        else:
            self.weights = self.path / weights
            self.model_id = sha256(self.weights)[:16]
        self.holds_full_images = self.backend == "onnx"  # the graph takes the whole picture and gives a full-size heatmap
        if self.backend == "onnx":
            self.input_size = tuple(p.meta["input"]["network_size"])
        else:
            self.input_size = tuple(p.pre.input_size)
        self.info = finite(self._describe())
        self._probe()

    def _probe(self) -> None:
        """Score a mid-grey image once: weights that give NaN or infinity refuse to serve at all."""
        import numpy as np

        width, height = self.input_size
        shape = (height, width) if self.channels == 1 else (height, width, 3)
        try:
            self.executor.submit(self.predict_batch, [self.prepare(np.full(shape, 128, np.uint8))]).result()
        except NonFiniteScore as exc:
            self.close()
            raise DataError(f"{self.weights}: the model gave a non-finite score ({exc.value}) for a plain grey test image; the weights are broken (NaN or infinite values, or they overflow): retrain or restore them") from None

    def _load(self, threads: int | None):
        """The predictor, with ``threads`` compute threads (default: the library's own: one per core).
        Fewer than the cores leaves some to decoding uploads and answering requests."""
        if self.backend == "onnx":
            from ..infer.onnx_predictor import OnnxPredictor

            return OnnxPredictor(self.path, threads=threads)
        import defectkit

        if threads:
            import torch

            torch.set_num_threads(threads)
        return defectkit.load(self.path, device=self.device, weights=self.weights_name)

    def prepare(self, image):
        """What :meth:`predict_batch` takes for a decoded uint8 picture; runs in any thread.
        A run folder's network input is small, so the picture need not be kept for scoring."""
        return image if self.backend == "onnx" else self.predictor.network_input(image)

    def predict_batch(self, prepared: list) -> list:
        """Predictions of :meth:`prepare`'d images; run in ``executor`` only (the batcher does).

        A run folder's predictions carry the network-size map (:meth:`full_heatmap` draws it at
        the picture's size): the score and decision are computed as
        :meth:`defectkit.infer.predictor.Predictor.predict_batch` computes them, from the same
        network input. Both predictors raise :class:`NonFiniteScore` rather than decide on NaN."""
        import numpy as np

        p = self.predictor
        return p.predict_inputs(np.stack(prepared)) if self.backend == "torch" else p.predict_batch(prepared)

    def full_heatmap(self, prediction, width: int, height: int):
        """The heatmap at the picture's size (as the predictor draws it); any thread."""
        if prediction.heatmap.shape == (height, width):
            return prediction.heatmap
        from ..data.preprocess import heatmap_to_image

        return heatmap_to_image(prediction.heatmap, height, width, self.predictor.pre.input_size, self.predictor.pre.resize)

    def close(self) -> None:
        self.executor.shutdown(wait=False)

    def _describe(self) -> dict[str, Any]:
        p = self.predictor
        threshold = {"score": p.threshold, "raw": p.threshold_raw, "raw_is_logit": p.raw_is_logit,
                     "rule": "defective when the raw score (the logit, for methods with one) >= threshold.raw"}
        info: dict[str, Any] = {"model_id": self.model_id, "backend": self.backend, "method": self.method, "path": self.path.name,
                                "weights": self.weights.name, "channels": self.channels, "colour": "gray" if self.channels == 1 else "RGB",
                                "heatmap_scale": self.heatmap_scale, "device": self.device if self.backend == "torch" else "cpu"}
        if self.backend == "onnx":
            meta = p.meta
            width, height = meta["input"]["network_size"]
            threshold["source"] = "the ONNX sidecar (the run's threshold when it was exported)"
            info.update(preset=None, input_size={"width": width, "height": height}, threshold=threshold, metrics=None,
                        precision=meta.get("precision", "fp32"), quantization=meta.get("quantization"),
                        export={k: meta.get(k) for k in ("defectkit", "format_version", "opset", "run", "weights", "export_seconds", "max_score_difference_to_torch", "model_sha256")})
            return info
        width, height = p.pre.input_size
        metrics_path = self.path / runs.METRICS
        metrics = runs.read_json(metrics_path) if metrics_path.is_file() else None
        record = p.threshold_source  # threshold.json, else metrics.json, as for every predictor
        threshold.update(source=record.get("source"), policy=record.get("policy"), file=record.get("file"))
        info.update(preset=getattr(p.config, "preset", None), input_size={"width": width, "height": height}, threshold=threshold, metrics=metrics,
                    precision="fp32")
        return info
