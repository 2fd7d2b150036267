"""The inference service: ``create_app(model_path)`` (a FastAPI app) and ``serve(model_path)`` (uvicorn).

``model_path`` is a run folder (PyTorch) or a model written by ``defectkit export`` (``.onnx``,
onnxruntime, no torch). FastAPI and uvicorn (the ``serve`` extra) are imported only when one of
these is called. See :mod:`defectkit.serve.app` for the endpoints and status codes.
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
