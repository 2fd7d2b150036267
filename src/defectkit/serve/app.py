"""The inference service: ``create_app(model_path)`` is a FastAPI app, ``serve(model_path)`` runs it.

Endpoints:

* ``POST /predict`` (``?heatmap=none|overlay|map``): images as multipart uploads (field
  ``files``, repeated; ``file`` is accepted too); one result per image, in upload order.
* ``GET /health``: status, backend, model id, uptime, requests served, rejected, busy and
  failed, the pixels in flight, batching counters. 200 with ``"status": "ok"``; 503 with
  ``"status": "unhealthy"`` and the ``problem`` once the model has given a non-finite score
  (a load balancer should take the instance out; restart it with sound weights).
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
parameter, 408 (and the connection closed) for a body that has not fully arrived
``body_timeout_s`` after the request began: a client that stalls mid-upload holds nothing for
long. A request is checked whole before any image of it is scored: one bad file refuses the
request. Headers over uvicorn's limit (h11: 16 KB unparsed; in practice a request head over
about 256 KB) get uvicorn's own 400 and a one-line warning.

Memory is bounded by the decoded pixels, not by the upload: a blank 6300x6300 PNG is 150 KB
but 40 M pixels. Before anything is decoded a request reserves its images' pixels (read from
their headers) in a budget shared by all requests, ``max_pixels_in_flight`` (default 4 x
``max_pixels``, so the largest request fits alone). A request that does not fit waits its turn
(first come, first served) for up to ``queue_timeout_s`` and then gets 503 ``busy`` with
``Retry-After``. A run folder's request without a heatmap reserves one image at a time, for
its decode and preprocessing only (the network input is small); an ONNX model's request, or
one asking for a heatmap, holds all its pixels until it is answered, so it must fit the
budget whole (413 otherwise). Measured peak cost per reserved pixel: see docs/benchmarks.md
(the service fault test).

A model that gives NaN or an infinite score is never turned into a decision: that request gets
503 with a detail naming the file, the service marks itself unhealthy and refuses (503) every
later request, and ``/health`` answers 503. A model that already scores a plain grey image so
is refused at start (DataError, one line).

A client that goes away (mid-upload or before its answer) is logged as one line, never a
traceback.

Requests that arrive together are scored in shared batches (:mod:`defectkit.serve.batcher`);
the model runs in one thread of its own, uploads are decoded and heatmaps encoded in the
server's thread pool, and the event loop never waits on either.

FastAPI and uvicorn are imported inside these functions, so ``import defectkit`` stays fast.
"""

# no "from __future__ import annotations" here: FastAPI reads the endpoints' annotations, which
# name classes imported inside create_app
import asyncio
import errno
import logging
import math
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .images import BadInput, check_content_type, decode, header_size, heatmap_png

FIELDS = ("files", "file")  # multipart field names that carry images
MAX_FILES = 64  # images in one request
REQUEST_PIXELS_FACTOR = 4  # a request's images together hold at most this many times max_pixels
IN_FLIGHT_FACTOR = 4  # default max_pixels_in_flight, in max_pixels: the largest request fits alone
RETRY_AFTER_S = 1  # what a 503 busy answer tells the client to wait

log = logging.getLogger("uvicorn.error")  # uvicorn's own logger: its format, its level


class ClientGone(Exception):
    """The client closed the connection; there is nobody to answer."""


def _positive(name: str, value, integer: bool = False, zero: bool = False):
    """``value`` checked as a positive (or, with ``zero``, non-negative) finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero) or (integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} {'of 0 or more' if zero else 'above 0'}, got {value!r}")
    return int(number) if integer else number


def _page() -> str:
    from importlib.resources import files

    return (files("defectkit.serve") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(model_path: str | Path, device: str = "cpu", max_upload_mb: float = 20.0, max_pixels: int = 40_000_000,
               max_batch: int = 8, batch_wait_ms: float = 5.0, threads: int | None = None, max_pixels_in_flight: int | None = None,
               body_timeout_s: float = 30.0, queue_timeout_s: float = 10.0, weights: str = "model.safetensors"):
    """A FastAPI app scoring images with a run folder (PyTorch) or an exported ``.onnx`` model.
    Every limit is checked here (ConfigError) before the model is loaded."""
    from contextlib import asynccontextmanager
    from typing import Literal

    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .. import __version__
    from .batcher import Batcher, PixelBudget
    from .model import NonFiniteScore, ServedModel, finite
    from .schemas import HealthResponse, PredictResponse

    max_upload_mb = _positive("max_upload_mb", max_upload_mb)
    max_pixels = _positive("max_pixels", max_pixels, integer=True)
    max_batch = _positive("max_batch", max_batch, integer=True)
    batch_wait_ms = _positive("batch_wait_ms", batch_wait_ms, zero=True)
    body_timeout_s = _positive("body_timeout_s", body_timeout_s)
    queue_timeout_s = _positive("queue_timeout_s", queue_timeout_s, zero=True)
    if threads is not None:
        threads = _positive("threads", threads, integer=True)
    in_flight = IN_FLIGHT_FACTOR * max_pixels if max_pixels_in_flight is None else _positive("max_pixels_in_flight", max_pixels_in_flight, integer=True)
    if in_flight < max_pixels:
        raise ConfigError(f"max_pixels_in_flight ({in_flight:,}) must be at least max_pixels ({max_pixels:,}), or the largest image accepted could never be decoded")
    max_upload = int(max_upload_mb * 1024 * 1024)
    request_pixels = REQUEST_PIXELS_FACTOR * max_pixels

    model = ServedModel(model_path, device=device, threads=threads, weights=weights)
    batcher = Batcher(model.predict_batch, model.executor, max_batch=max_batch, wait_s=batch_wait_ms / 1000)
    budget = PixelBudget(in_flight)
    page = _page()
    started = time.time()
    counts = {"served": 0, "rejected": 0, "busy": 0, "failed": 0, "images": 0, "timed_out": 0, "disconnected": 0}
    health = {"problem": None}  # set for good when the model gives a non-finite score

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
    app.state.model, app.state.batcher, app.state.counts, app.state.budget = model, batcher, counts, budget

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

    def who(request: Request) -> str:
        client = request.client
        return f"{client[0]}:{client[1]}" if client else "unknown"

    def gone(request: Request, when: str):
        """One log line for a client that left; its (unsent) answer is an empty 499-style close."""
        from fastapi.responses import Response

        counts["disconnected"] += 1
        log.info("client %s disconnected during %s %s (%s)", who(request), request.method, request.url.path, when)
        return Response(status_code=499)

    def unhealthy(detail: str):
        return JSONResponse({"detail": detail}, status_code=503, headers={"Connection": "close"})

    @app.get("/health", response_model=HealthResponse, summary="Liveness, model id and counters",
             responses={503: {"model": HealthResponse, "description": "unhealthy: the model gave a non-finite score"}})
    async def health_check():
        body = {"status": "unhealthy" if health["problem"] else "ok", "problem": health["problem"], "backend": model.backend,
                "method": model.method, "model_id": model.model_id, "uptime_s": round(time.time() - started, 3),
                "requests_served": counts["served"], "requests_rejected": counts["rejected"], "requests_busy": counts["busy"],
                "requests_failed": counts["failed"], "requests_timed_out": counts["timed_out"], "clients_disconnected": counts["disconnected"],
                "images_scored": counts["images"],
                "pixels": {"in_flight": budget.used, "max_in_flight": budget.capacity, "peak_in_flight": budget.peak, "requests_waiting": budget.waiting},
                "batching": batcher.stats}
        if health["problem"]:
            return JSONResponse(HealthResponse(**body).model_dump(), status_code=503)
        return body

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body_timeout_s
        while True:  # request.stream() has no timeout: a stalled client would hold the request for ever
            try:
                message = await asyncio.wait_for(request.receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                counts["timed_out"] += 1
                log.info("client %s did not send its body within %g s: answered 408 and closed", who(request), body_timeout_s)
                raise BadInput(408, f"the request body did not arrive within {body_timeout_s:g} s") from None
            if message["type"] == "http.disconnect":
                raise ClientGone("while sending the body")
            body += message.get("body", b"")
            if len(body) > max_upload:
                raise BadInput(413, f"upload is over the limit of {max_upload_mb:g} MB per request")
            if not message.get("more_body", False):
                break
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

    def check_all(uploads: list[tuple[str, str | None, bytes]]) -> list[int]:
        """Pixels of every upload from its header (no decoding); 4xx for the first bad one."""
        sizes = []
        for name, content_type, data in uploads:
            check_content_type(name, content_type)
            width, height = header_size(name, data, max_pixels)
            sizes.append(width * height)
        total = sum(sizes)
        if total > request_pixels:
            raise BadInput(413, f"the request's {len(uploads)} images hold {total:,} pixels, over the limit of {request_pixels:,} per request; send fewer per request")
        return sizes

    def decode_prepare(name: str, data: bytes, keep: bool):
        """(shape, prepared input, the picture when ``keep``): the picture is dropped as soon as it is prepared."""
        image = decode(name, data, model.channels)
        return image.shape[:2], model.prepare(image), image if keep else None

    def results(names: list[str], decoded: list, predictions: list, heatmap: str) -> list[dict[str, Any]]:
        out = []
        for name, (shape, _, image), p in zip(names, decoded, predictions):
            height, width = int(shape[0]), int(shape[1])
            row = {"filename": name, "score": p.score, "decision": "defective" if p.decision else "good", "defective": bool(p.decision),
                   "threshold": p.threshold, "logit": p.logit, "width": width, "height": height}
            if heatmap != "none":
                row["heatmap_png"] = heatmap_png(heatmap, image, model.full_heatmap(p, width, height), model.heatmap_scale)
            out.append(finite(row))
        return out

    async def unless_gone(request: Request, awaitable):
        """``awaitable``'s result, or ClientGone (and it cancelled) when the client leaves first.
        Only for waits that hold nothing (the pixel budget): work already started is finished."""
        work = asyncio.ensure_future(awaitable)

        async def watch():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not work.done():
                work.cancel()
                try:
                    await work
                except asyncio.CancelledError:
                    pass
                raise ClientGone("while waiting for room to decode its images")
        return work.result()

    def busy(pixels: int):
        counts["busy"] += 1
        return JSONResponse({"detail": f"busy: {budget.used:,} of {budget.capacity:,} decoded pixels are in flight and this request's {pixels:,} "
                             f"did not fit within {queue_timeout_s:g} s; retry later"}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

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
        if health["problem"]:
            return unhealthy(f"the service is unhealthy: {health['problem']}; restart it with sound weights")
        try:
            uploads = await read_uploads(request)
            sizes = await run_in_threadpool(check_all, uploads)
        except ClientGone as exc:
            return gone(request, str(exc))
        except BadInput as exc:
            response = refuse(exc)
            if exc.status == 408:  # the rest of the body may still come: nothing can follow on this connection
                response.headers["Connection"] = "close"
            return response
        names = [name for name, _, _ in uploads]
        keep = heatmap != "none"
        # hold: the full pictures live until the answer (ONNX input, or a heatmap to draw), so the
        # request reserves all its pixels at once; else each image only while it is decoded and prepared
        hold = keep or model.holds_full_images
        if hold and sum(sizes) > budget.capacity:
            return refuse(BadInput(413, f"the request's {len(uploads)} images hold {sum(sizes):,} pixels, over the {budget.capacity:,} pixels in flight "
                                        f"this service allows{' for a request with a heatmap' if keep else ''}; send fewer per request"))
        reserved = 0
        try:
            decoded = []
            try:
                if hold:
                    if not await unless_gone(request, budget.acquire(sum(sizes), queue_timeout_s)):
                        return busy(sum(sizes))
                    reserved = sum(sizes)
                for (name, _, data), pixels in zip(uploads, sizes):
                    if not hold:
                        if not await unless_gone(request, budget.acquire(pixels, queue_timeout_s)):
                            return busy(pixels)
                        reserved = pixels
                    decoded.append(await run_in_threadpool(decode_prepare, name, data, keep))
                    if not hold:
                        budget.release(reserved)
                        reserved = 0
            except ClientGone as exc:
                return gone(request, str(exc))
            except BadInput as exc:
                return refuse(exc)
            del uploads  # the compressed bytes are not needed any more
            outcomes = await batcher.submit([prepared for _, prepared, _ in decoded], return_exceptions=True)
            for name, outcome in zip(names, outcomes):
                if isinstance(outcome, NonFiniteScore):
                    problem = f"{name}: the model gave a non-finite score ({outcome.value}); no decision can be made from it"
                    if not health["problem"]:
                        health["problem"] = problem
                        log.error("the model gave a non-finite score (%s) for %s: the service is unhealthy from now on; /health answers 503", outcome.value, name)
                    counts["failed"] += 1
                    return unhealthy(f"{problem}; the service is unhealthy now")
                if isinstance(outcome, BaseException):
                    raise outcome
            try:
                rows = await run_in_threadpool(results, names, decoded, outcomes, heatmap)
            except Exception as exc:
                raise RuntimeError(f"drawing the heatmap failed: {exc}") from exc
        except Exception as exc:  # the model failed on a valid image: say so, keep serving
            counts["failed"] += 1
            return JSONResponse({"detail": f"scoring failed: {type(exc).__name__}: {exc}"}, status_code=500)
        finally:
            if reserved:
                budget.release(reserved)
        if await request.is_disconnected():
            return gone(request, "before its answer was sent")
        counts["served"] += 1
        counts["images"] += len(rows)
        return {"model_id": model.model_id, "backend": model.backend, "method": model.method, "threshold": finite(model.threshold), "results": rows}

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, or a ConfigError saying why not (one line, before
    the model is loaded, where uvicorn would log a traceback or exit 1)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"port must be a whole number from 1 to 65535, got {port!r}")
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"host must be an address or a host name, got {host!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait for TIME_WAIT
        sock.bind((host, port))
    except (socket.gaierror, UnicodeError) as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: no such address or host name ({exc})") from None
    except OSError as exc:
        sock.close()
        why = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", max_upload_mb: float = 20.0,
          max_pixels: int = 40_000_000, max_batch: int = 8, batch_wait_ms: float = 5.0, threads: int | None = None,
          log_level: str = "info", max_pixels_in_flight: int | None = None, body_timeout_s: float = 30.0,
          queue_timeout_s: float = 10.0, announce=None, weights: str = "model.safetensors") -> None:
    """Run the service with uvicorn until interrupted (loopback only unless ``host`` says otherwise).
    A bad option, a busy port or a broken model is a DefectkitError before anything is served;
    ``announce()`` is called once all of that has passed."""
    import uvicorn

    sock = listen(host, port)
    try:
        app = create_app(model_path, device=device, max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_batch=max_batch,
                         batch_wait_ms=batch_wait_ms, threads=threads, max_pixels_in_flight=max_pixels_in_flight,
                         body_timeout_s=body_timeout_s, queue_timeout_s=queue_timeout_s, weights=weights)
        if announce is not None:
            announce()
        config = uvicorn.Config(app, log_level=log_level, h11_max_incomplete_event_size=16 * 1024)  # h11's default, stated: larger heads get 400
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
