"""The inference service: ``create_app(model_path)`` is a FastAPI app, ``serve(model_path)`` runs it.

Endpoints:

* ``POST /predict`` (``?heatmap=none|overlay|map``): images as multipart uploads (field
  ``files``, repeated; ``file`` is accepted too); one result per image, in upload order.
* ``GET /health``: status, backend, model id, uptime, requests served and rejected, batching
  counters.
* ``GET /model``: what the model is (method, preset, input size, channels, backend, threshold
  and its source, the run's test metrics or the export's sidecar fields).
* ``GET /``: a web page to drop images on; ``/docs`` and ``/openapi.json``: FastAPI's own.

Every bad upload gets a 4xx answer ``{"detail": "<file>: <what is wrong>"}`` and the service
goes on: 400 for a request without images (empty, no file part, malformed multipart), 413 for
a body over ``max_upload_mb`` (checked against Content-Length first, then counted while it is
read, so an oversized body is never buffered whole), an image over ``max_pixels`` (read from
its header before decoding) or a request whose images hold more than ``4 x max_pixels`` in
all, 415 for a body that is not multipart/form-data, a part whose content type is not an image
and a file that is no image, 422 for an empty, truncated or corrupt image and a bad query
parameter. A request is checked whole before any image of it is scored: one bad file refuses
the request.

Requests that arrive together are scored in shared batches (:mod:`defectkit.serve.batcher`);
the model runs in one thread of its own, uploads are decoded and heatmaps encoded in the
server's thread pool, and the event loop never waits on either.

FastAPI and uvicorn are imported inside these functions, so ``import defectkit`` stays fast.
"""

# no "from __future__ import annotations" here: FastAPI reads the endpoints' annotations, which
# name classes imported inside create_app
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .images import BadInput, check_content_type, decode, header_size, heatmap_png

FIELDS = ("files", "file")  # multipart field names that carry images
MAX_FILES = 64  # images in one request
REQUEST_PIXELS_FACTOR = 4  # a request's images together hold at most this many times max_pixels


def _page() -> str:
    from importlib.resources import files

    return (files("defectkit.serve") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(model_path: str | Path, device: str = "cpu", max_upload_mb: float = 20.0, max_pixels: int = 40_000_000,
               max_batch: int = 8, batch_wait_ms: float = 5.0, threads: int | None = None):
    """A FastAPI app scoring images with a run folder (PyTorch) or an exported ``.onnx`` model."""
    from contextlib import asynccontextmanager
    from typing import Literal

    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .. import __version__
    from .batcher import Batcher
    from .model import ServedModel, finite
    from .schemas import HealthResponse, PredictResponse

    if not max_upload_mb > 0:
        raise ConfigError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if int(max_pixels) < 1:
        raise ConfigError(f"max_pixels must be positive, got {max_pixels}")
    if int(max_batch) < 1:
        raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
    if not batch_wait_ms >= 0:
        raise ConfigError(f"batch_wait_ms must be 0 or more, got {batch_wait_ms}")
    max_upload = int(max_upload_mb * 1024 * 1024)
    max_pixels = int(max_pixels)

    model = ServedModel(model_path, device=device, threads=threads)
    batcher = Batcher(model.predict_batch, model.executor, max_batch=max_batch, wait_s=batch_wait_ms / 1000)
    page = _page()
    started = time.time()
    counts = {"served": 0, "rejected": 0, "failed": 0, "images": 0}

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="defectkit inference",
        version=__version__,
        lifespan=lifespan,
        description=f"Surface-defect scores, decisions and heatmaps from a {model.method} model ({model.backend} backend, model id {model.model_id}). "
        "POST images to /predict as multipart uploads in field `files`.",
    )
    app.state.model, app.state.batcher, app.state.counts = model, batcher, counts

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc):
        counts["rejected"] += 1
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    def refuse(exc: BadInput):
        counts["rejected"] += 1
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    @app.get("/health", response_model=HealthResponse, summary="Liveness, model id and counters")
    async def health():
        return {"status": "ok", "backend": model.backend, "method": model.method, "model_id": model.model_id,
                "uptime_s": round(time.time() - started, 3), "requests_served": counts["served"], "requests_rejected": counts["rejected"],
                "requests_failed": counts["failed"], "images_scored": counts["images"], "batching": batcher.stats}

    @app.get("/model", summary="What the model is: method, input, threshold, metrics")
    async def model_info() -> dict[str, Any]:
        return model.info

    async def read_uploads(request: Request) -> list[tuple[str, str | None, bytes]]:
        """(name, content type, bytes) of each uploaded image; the body is read with a bound."""
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        kind = request.headers.get("content-type", "")
        length = request.headers.get("content-length")
        if length is not None:
            try:
                length_value = int(length)
            except ValueError:
                raise BadInput(400, f"invalid Content-Length header {length!r}") from None
            if length_value > max_upload:
                raise BadInput(413, f"upload of {length_value / 2**20:.1f} MB is over the limit of {max_upload_mb:g} MB per request")
            if length_value == 0:
                raise BadInput(400, "empty request: send images as multipart/form-data in field 'files'")
        if not kind.lower().startswith("multipart/form-data"):
            shown = kind.split(";")[0] or "none"
            raise BadInput(415, f"request content type is {shown}; send images as multipart/form-data in field 'files'")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload:
                raise BadInput(413, f"upload is over the limit of {max_upload_mb:g} MB per request")
        if not body:
            raise BadInput(400, "empty request: send images as multipart/form-data in field 'files'")

        async def replay():
            yield bytes(body)

        try:
            form = await MultiPartParser(request.headers, replay(), max_files=MAX_FILES, max_fields=100).parse()
        except MultiPartException as exc:
            raise BadInput(400, f"malformed multipart upload: {exc.message}") from None
        uploads = []
        try:
            for key, value in form.multi_items():
                if not isinstance(value, UploadFile):
                    if key in FIELDS:
                        raise BadInput(415, f"field '{key}' holds text, not a file; upload image files in field 'files'")
                    continue  # other text fields are ignored
                name = value.filename or f"upload #{len(uploads) + 1}"
                if key not in FIELDS:
                    raise BadInput(400, f"{name}: sent in field '{key}'; send images in field 'files'")
                uploads.append((name, value.content_type, await value.read()))
        finally:
            await form.close()
        if not uploads:
            raise BadInput(400, "no images in the request: send them as multipart/form-data in field 'files'")
        return uploads

    def decode_all(uploads: list[tuple[str, str | None, bytes]], channels: int):
        """Every upload checked (cheap checks of all first) and then decoded."""
        total = 0
        for name, content_type, data in uploads:
            check_content_type(name, content_type)
            width, height = header_size(name, data, max_pixels)
            total += width * height
        if total > REQUEST_PIXELS_FACTOR * max_pixels:
            raise BadInput(413, f"the request's {len(uploads)} images hold {total:,} pixels, over the limit of {REQUEST_PIXELS_FACTOR * max_pixels:,} per request; send fewer per request")
        return [decode(name, data, channels) for name, _, data in uploads]

    def results(names: list[str], images: list, predictions: list, heatmap: str) -> list[dict[str, Any]]:
        out = []
        for name, image, p in zip(names, images, predictions):
            row = {"filename": name, "score": p.score, "decision": "defective" if p.decision else "good", "defective": bool(p.decision),
                   "threshold": p.threshold, "logit": p.logit, "width": int(image.shape[1]), "height": int(image.shape[0])}
            if heatmap != "none":
                row["heatmap_png"] = heatmap_png(heatmap, image, p.heatmap, model.heatmap_scale)
            out.append(finite(row))
        return out

    @app.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_unset=True,  # heatmap_png only when asked for
        summary="Score one or more images",
        description="Multipart upload: one or more image files in field `files` (or `file`). One result per image, in upload order. "
        "`heatmap=overlay` adds the heatmap drawn over the image, `map` the heatmap alone as 8-bit gray (255 = the top of the scale), both as base64 PNG.",
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "image files (PNG, JPEG, BMP, TIFF, ...)"}}}}}}},
        responses={400: {"description": "no images in the request"}, 413: {"description": "upload or image too large"},
                   415: {"description": "not multipart, or a part that is not an image"}, 422: {"description": "empty, truncated or corrupt image; bad query"}},
    )
    async def predict(request: Request, heatmap: Literal["none", "overlay", "map"] = Query("none", description="none, overlay (heatmap over the image) or map (heatmap alone)")):
        try:
            uploads = await read_uploads(request)
            images = await run_in_threadpool(decode_all, uploads, model.channels)
        except BadInput as exc:
            return refuse(exc)
        try:
            predictions = await batcher.submit(images)
            rows = await run_in_threadpool(results, [name for name, _, _ in uploads], images, predictions, heatmap)
        except Exception as exc:  # the model failed on a valid image: say so, keep serving
            counts["failed"] += 1
            return JSONResponse({"detail": f"scoring failed: {type(exc).__name__}: {exc}"}, status_code=500)
        counts["served"] += 1
        counts["images"] += len(rows)
        return {"model_id": model.model_id, "backend": model.backend, "method": model.method, "threshold": finite(model.threshold), "results": rows}

    return app


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", max_upload_mb: float = 20.0,
          max_pixels: int = 40_000_000, max_batch: int = 8, batch_wait_ms: float = 5.0, threads: int | None = None,
          log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted (loopback only unless ``host`` says otherwise)."""
    import uvicorn

    app = create_app(model_path, device=device, max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_batch=max_batch, batch_wait_ms=batch_wait_ms, threads=threads)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
