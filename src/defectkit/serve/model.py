"""The model a service answers with: a run folder (PyTorch) or an exported ``.onnx`` (onnxruntime).

The predictor is built and always used in one thread of its own (``executor``), so a PyTorch
model or an onnxruntime session never sees two threads. ``info`` is what ``GET /model``
shows: method, preset, input size, channels, backend, threshold with its source, and the
run's test metrics (a run folder) or the export's sidecar fields (an ONNX model).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import runs
from ..errors import ConfigError, DataError
from ..files import sha256


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
    def __init__(self, model_path: str | Path, device: str = "cpu", threads: int | None = None):
        self.path = Path(model_path)
        self.backend = "onnx" if self.path.suffix == ".onnx" else "torch"
        if self.backend == "onnx" and device != "cpu":
            raise ConfigError(f"{self.path.name}: an ONNX model runs on the CPU (onnxruntime's CPU provider); device must be 'cpu', got {device!r}")
        if self.backend == "torch" and not self.path.exists():
            raise DataError(f"{self.path}: no such run folder or .onnx model")
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
            self.weights = self.path / runs.MODEL
            self.model_id = sha256(self.weights)[:16]
        self.info = finite(self._describe())

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
        return defectkit.load(self.path, device=self.device)

    def predict_batch(self, images: list) -> list:
        """Run in ``executor`` only (the batcher does)."""
        return self.predictor.predict_batch(images)

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
                        export={k: meta.get(k) for k in ("defectkit", "format_version", "opset", "run", "weights", "export_seconds", "max_score_difference_to_torch", "model_sha256")})
            return info
        width, height = p.pre.input_size
        metrics_path = self.path / runs.METRICS
        metrics = runs.read_json(metrics_path) if metrics_path.is_file() else None
        stored = runs.stored_threshold(self.path)  # threshold.json wins over metrics.json, as for every predictor
        if isinstance(stored, dict) and stored.get("source"):
            threshold.update(source=stored["source"], policy=stored.get("policy"), file=runs.THRESHOLD)
        elif isinstance(metrics, dict) and metrics.get("threshold_source"):
            threshold.update(source=metrics["threshold_source"], file=runs.METRICS)
        else:
            threshold["source"] = "default: probability 0.5 (the run has not been evaluated)"
        info.update(preset=getattr(p.config, "preset", None), input_size={"width": width, "height": height}, threshold=threshold, metrics=metrics)
        return info
