"""defectkit: visual surface-defect detection for industrial inspection."""

__version__ = "0.1.0"


def load(run_dir, device: str = "cpu", weights: str = "model.safetensors"):
    """A predictor for a trained run folder, ``defectkit.load(RUN_DIR).predict(image)``, or for
    a model exported by ``defectkit export`` (a ``.onnx`` file: onnxruntime, no torch)."""
    from pathlib import Path

    if Path(run_dir).suffix == ".onnx":
        from .infer.onnx_predictor import OnnxPredictor

        return OnnxPredictor(run_dir)
    from .infer.predictor import load as _load

    return _load(run_dir, device=device, weights=weights)
