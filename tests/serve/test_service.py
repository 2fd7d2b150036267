"""The inference service: answers like ``defectkit.load(...).predict`` for both backends, refuses
every bad upload with a clear 4xx and keeps serving, batches concurrent requests, and its web
page works in a real browser."""

from __future__ import annotations

import base64
import io
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
with warnings.catch_warnings():  # starlette's note about httpx2: the client works all the same
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import defectkit
from defectkit.data.synthetic import generate
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.infer.export import export_onnx
from defectkit.methods.trainer import fit
from defectkit.methods.registry import get_method
from defectkit.serve import create_app

TOLERANCE = {"torch": 1e-6, "onnx": 1e-4}


def quiet(_):
    pass


def png(image: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".png", image if image.ndim == 2 else image[:, :, ::-1])
    assert ok
    return buffer.tobytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with (almost) no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def decode_png(text: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text))) as im:
        assert im.format == "PNG"
        return np.asarray(im)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny evaluated segdec run, its ONNX export and test images (files and a few of other sizes and colour)."""
    import cv2

    root = tmp_path_factory.mktemp("serve")
    data = generate(root / "synthetic", n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3, size=(64, 128), seed=2)
    method = get_method("segdec")
    run = root / "run"
    fit(method.Config(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(64, 128), dilate=3, epochs=1,
                                 batch_size=4, validate_every=0), run, log=quiet)
    evaluate_run(run)
    model = export_onnx(run, root / "model.onnx", log=quiet)
    files = sorted((data / "test").rglob("*.png"))
    gray = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE)
    extra = root / "extra"
    extra.mkdir()
    rng = np.random.default_rng(0)
    colour = np.clip(cv2.resize(rng.integers(0, 256, (6, 4, 3)).astype(np.float32), (75, 200), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    cv2.imwrite(str(extra / "wide.png"), cv2.resize(gray, (150, 90)))
    cv2.imwrite(str(extra / "colour.png"), colour)
    cv2.imwrite(str(extra / "photo.jpg"), cv2.resize(gray, (48, 100)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return {"run": run, "onnx": model, "files": files + sorted(extra.iterdir())}


@pytest.fixture(scope="module", params=["torch", "onnx"])
def served(request, trained):
    """(backend, TestClient, predictor) for the run folder and for its ONNX export."""
    path = trained["run"] if request.param == "torch" else trained["onnx"]
    with TestClient(create_app(path)) as client:
        yield request.param, client, defectkit.load(path)


@pytest.fixture(scope="module")
def torch_client(trained):
    with TestClient(create_app(trained["run"])) as client:
        yield client


@pytest.fixture(scope="module")
def strict_client(trained):
    """Small limits: 50 KB per request, 5000 pixels per image (so 20000 per request)."""
    with TestClient(create_app(trained["onnx"], max_upload_mb=0.05, max_pixels=5000)) as client:
        yield client


def upload(paths, field="files"):
    return [(field, (p.name, p.read_bytes(), "image/jpeg" if p.suffix == ".jpg" else "image/png")) for p in paths]


def test_health_and_model(served, trained):
    backend, client, predictor = served
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == backend and health["uptime_s"] >= 0
    info = client.get("/model").json()
    assert info["model_id"] == health["model_id"] and len(info["model_id"]) == 16
    weights = trained["run"] / "model.safetensors" if backend == "torch" else trained["onnx"]
    import hashlib

    assert hashlib.sha256(weights.read_bytes()).hexdigest().startswith(info["model_id"])
    assert info["backend"] == backend and info["method"] == "segdec" and info["channels"] == 1
    assert info["input_size"] == {"width": 64, "height": 128}
    assert info["threshold"]["score"] == pytest.approx(predictor.threshold) and info["threshold"]["raw"] == pytest.approx(predictor.threshold_raw)
    if backend == "torch":
        assert info["preset"] == "tiny"
        assert info["threshold"]["source"] == "validation (best F1)"  # threshold.json's, set on the validation part
        assert info["metrics"]["ap"] == pytest.approx(defectkit.runs.read_json(trained["run"] / "metrics.json")["ap"])
    else:
        assert info["export"]["max_score_difference_to_torch"] < 1e-4 and info["export"]["opset"] == 18
    assert client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert client.get("/docs").status_code == 200


def test_threshold_json_is_the_threshold(trained, tmp_path):
    """A production threshold stored in threshold.json (``defectkit threshold --policy``) is the one served."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    defectkit.runs.write_json(run / "threshold.json", {"value": 0.0, "score": 0.5, "policy": "zero-fn", "source": "policy zero-fn on the test split"})
    with TestClient(create_app(run)) as client:
        threshold = client.get("/model").json()["threshold"]
        assert threshold["raw"] == 0.0 and threshold["score"] == pytest.approx(0.5)
        assert threshold["source"] == "policy zero-fn on the test split" and threshold["policy"] == "zero-fn"
        results = client.post("/predict", files=upload(trained["files"][:4])).json()["results"]
        assert all(r["threshold"] == pytest.approx(0.5) and r["defective"] == (r["logit"] >= 0.0) for r in results)


def test_predict_answers_like_the_predictor(served, trained):
    backend, client, predictor = served
    paths = trained["files"]
    expected = [predictor.predict(p) for p in paths]
    # one image, with the heatmap drawn over it; the single-image field name `file` works too
    response = client.post("/predict", params={"heatmap": "overlay"}, files=upload(paths[:1], field="file"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == client.get("/health").json()["model_id"] and body["threshold"] == pytest.approx(predictor.threshold)
    (one,) = body["results"]
    assert one["filename"] == paths[0].name and abs(one["score"] - expected[0].score) < TOLERANCE[backend]
    overlay = decode_png(one["heatmap_png"])
    assert overlay.shape == (one["height"], one["width"], 3) == (128, 64, 3)
    # all images at once (sizes and colours mixed in one batch), with the bare map
    response = client.post("/predict?heatmap=map", files=upload(paths))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [p.name for p in paths]
    for path, r, e in zip(paths, results, expected):
        assert abs(r["score"] - e.score) < TOLERANCE[backend], path.name
        assert (r["height"], r["width"]) == e.heatmap.shape
        assert r["defective"] == (r["logit"] >= predictor.threshold_raw) and r["decision"] == ("defective" if r["defective"] else "good")
        assert r["defective"] == e.decision or abs(e.score - predictor.threshold) < 1e-5
        heatmap = decode_png(r["heatmap_png"])
        assert heatmap.dtype == np.uint8 and heatmap.shape == e.heatmap.shape
        np.testing.assert_allclose(heatmap / 255.0, np.clip(e.heatmap / predictor.heatmap_scale, 0, 1), atol=1 / 255 + TOLERANCE[backend] * 10)
    # without a heatmap there is none
    plain = client.post("/predict", files=upload(paths[:2])).json()["results"]
    assert all("heatmap_png" not in r and "logit" in r for r in plain)


def multipart_without_files() -> tuple[bytes, str]:
    boundary = "xyzzy"
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{boundary}--\r\n").encode(), boundary


def bad_requests(good: bytes) -> dict:
    """name -> (request kwargs, expected status, text the message must hold)."""
    empty_form, boundary = multipart_without_files()
    return {
        "not an image": (dict(files=[("files", ("notes.png", b"these are not pixels", "image/png"))]), 415, "notes.png: not an image"),
        "truncated": (dict(files=[("files", ("cut.png", good[: len(good) // 2], "image/png"))]), 422, "cut.png: the image cannot be decoded: truncated"),
        "truncated jpeg": (dict(files=[("files", ("cut.jpg", jpeg_of(good)[:-300], "image/jpeg"))]), 422, "cut.jpg: the image cannot be decoded"),
        "over max_pixels (header only)": (dict(files=[("files", ("huge.png", png_header(8000, 8000), "image/png"))]), 413, "huge.png: image is 8000x8000"),
        "decompression bomb": (dict(files=[("files", ("bomb.png", png_header(20000, 20000), "image/png"))]), 413, "bomb.png: image has too many pixels"),
        "json body": (dict(content=b'{"image": "x"}', headers={"content-type": "application/json"}), 415, "content type is application/json"),
        "text part": (dict(files=[("files", ("readme.txt", b"hello", "text/plain"))]), 415, "readme.txt: content type text/plain is not an image"),
        "text in files field": (dict(data={"files": "hello"}, files=[("other", ("x.png", b"", "image/png"))]), 415, "field 'files' holds text"),
        "empty request": (dict(), 400, "empty request"),
        "no files": (dict(content=empty_form, headers={"content-type": f"multipart/form-data; boundary={boundary}"}), 400, "no images in the request"),
        "empty file": (dict(files=[("files", ("zero.png", b"", "image/png"))]), 422, "zero.png: the file is empty"),
        "wrong field": (dict(files=[("image", ("a.png", good, "image/png"))]), 400, "a.png: sent in field 'image'"),
        "malformed multipart": (dict(content=b"--nope\r\ngarbage", headers={"content-type": "multipart/form-data"}), 400, "malformed multipart"),
        "over max_upload_mb": (dict(content=b"\0" * (21 * 2**20), headers={"content-type": "multipart/form-data; boundary=x"}), 413, "over the limit of 20 MB"),
        "bad heatmap option": (dict(params={"heatmap": "jet"}, files=[("files", ("a.png", good, "image/png"))]), 422, "heatmap: Input should be"),
    }


def jpeg_of(png_bytes: bytes) -> bytes:
    import cv2

    image = cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.mark.parametrize("case", list(bad_requests(png(np.zeros((8, 8), np.uint8)))))
def test_bad_input_is_refused_and_the_next_request_served(case, torch_client, trained):
    good_path = trained["files"][0]
    kwargs, status, message = bad_requests(good_path.read_bytes())[case]
    before = torch_client.get("/health").json()
    response = torch_client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail
    after = torch_client.get("/health").json()
    assert after["requests_rejected"] == before["requests_rejected"] + 1
    ok = torch_client.post("/predict", files=upload([good_path]))
    assert ok.status_code == 200 and ok.json()["results"][0]["filename"] == good_path.name


def test_limits_are_enforced(strict_client, trained):
    import cv2

    gray = cv2.imread(str(trained["files"][0]), cv2.IMREAD_GRAYSCALE)
    small = png(cv2.resize(gray, (50, 50)))
    noise = png(np.random.default_rng(0).integers(0, 256, (70, 70), dtype=np.uint8))  # 4900 pixels, ~5 KB
    # over the upload limit, declared up front
    big = strict_client.post("/predict", files=[("files", ("big.png", b"\0" * 60_000, "image/png"))])
    assert big.status_code == 413 and "over the limit of 0.05 MB" in big.json()["detail"]

    # over the upload limit without Content-Length (chunked): counted while reading
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"s.png\"\r\nContent-Type: image/png\r\n\r\n"
        for _ in range(20):
            yield noise

    streamed = strict_client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and "over the limit" in streamed.json()["detail"]
    too_many_pixels = strict_client.post("/predict", files=[("files", ("large.png", png(cv2.resize(gray, (100, 100))), "image/png"))])
    assert too_many_pixels.status_code == 413 and "large.png: image is 100x100 = 10,000 pixels" in too_many_pixels.json()["detail"]
    # each image fits, the request does not (9 x 2500 > 4 x 5000)
    crowd = strict_client.post("/predict", files=[("files", (f"s{i}.png", small, "image/png")) for i in range(9)])
    assert crowd.status_code == 413 and "per request" in crowd.json()["detail"]
    fine = strict_client.post("/predict", files=[("files", (f"s{i}.png", small, "image/png")) for i in range(8)])
    assert fine.status_code == 200 and len(fine.json()["results"]) == 8


@pytest.fixture(scope="module")
def live(trained):
    """The app on a real uvicorn server on a free loopback port (batching waits up to 150 ms)."""
    import uvicorn

    app = create_app(trained["run"], batch_wait_ms=150)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(15)
    sock.close()


def test_concurrent_requests_are_batched(live, trained):
    import httpx

    paths = trained["files"][:8]
    predictor = defectkit.load(trained["run"])
    expected = {p.name: predictor.predict(p).score for p in paths}
    barrier = threading.Barrier(len(paths))
    answers: dict[str, dict] = {}

    def one(path):
        with httpx.Client(base_url=live, timeout=60) as client:
            barrier.wait()
            response = client.post("/predict", files=upload([path]))
            answers[path.name] = response.json() if response.status_code == 200 else {"error": response.text}

    threads = [threading.Thread(target=one, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(answers) == set(expected)
    for name, answer in answers.items():
        (result,) = answer["results"]
        assert result["filename"] == name and abs(result["score"] - expected[name]) < 1e-6
    batching = httpx.get(f"{live}/health").json()["batching"]
    assert batching["largest_batch"] > 1 and batching["images"] >= len(paths)


def test_web_page(browser, live, trained, tmp_path):
    predictor = defectkit.load(trained["run"])
    # the image the model is surest about, so the expected decision cannot hinge on rounding
    path = max(trained["files"], key=lambda p: abs(predictor.predict(p).logit - predictor.threshold_raw))
    expected = "defective" if predictor.predict(path).decision else "good"
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(live + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('segdec')")
    page.set_input_files("#files", str(path))
    badge = page.wait_for_selector(".card .badge.good, .card .badge.defective", timeout=20_000)
    assert badge.text_content().strip().lower() == expected
    assert path.name in page.text_content(".card .name")
    assert "vs threshold" in page.text_content(".card .score")
    image = page.wait_for_selector("img.overlay")
    page.wait_for_function("document.querySelector('img.overlay').complete")
    assert image.evaluate("img => img.naturalWidth") == predictor.predict(path).heatmap.shape[1]
    page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)
    # a file the service refuses shows its message, and the page keeps working
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    page.set_input_files("#files", str(bad))
    page.wait_for_selector(".card.error .msg")
    assert "notes.png: not an image" in page.text_content(".card.error .msg")
    page.close()
    assert [p for p in problems if "415" not in p] == []  # the refused upload's 415 is the only error logged


def test_import_stays_light(trained):
    """``import defectkit.serve`` loads neither FastAPI nor torch; the ONNX backend serves without torch."""
    code = (
        "import sys; import defectkit.serve as s; heavy = [m for m in ('fastapi', 'uvicorn', 'torch') if m in sys.modules]; "
        f"app = s.create_app({str(trained['onnx'])!r}); print(heavy, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False"


def one_line_error(argv, capsys) -> str:
    """``defectkit ARGV`` in this process: exit code 2 and exactly one line on stderr, returned."""
    from defectkit.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("options, message", [
    (["--port", "99999"], "port must be a whole number from 1 to 65535, got 99999"),
    (["--port", "0"], "port must be a whole number from 1 to 65535"),
    (["--host", "no.such.host.invalid"], "cannot listen on no.such.host.invalid"),
    (["--device", "tpu"], "tpu"),
    (["--max-pixels", "0"], "max_pixels must be a whole number above 0"),
    (["--max-upload-mb", "-1"], "max_upload_mb must be a number above 0"),
    (["--max-batch", "0"], "max_batch must be a whole number above 0"),
    (["--batch-wait-ms", "-5"], "batch_wait_ms must be a number of 0 or more"),
    (["--threads", "0"], "threads must be a whole number above 0"),
    (["--body-timeout-s", "0"], "body_timeout_s must be a number above 0"),
    (["--queue-timeout-s", "nan"], "queue_timeout_s must be a number of 0 or more"),
    (["--max-pixels-in-flight", "1000"], "max_pixels_in_flight (1,000) must be at least max_pixels"),
])
def test_serve_refuses_bad_options_in_one_line(options, message, trained, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    port_option = [] if "--port" in options else ["--port", str(port)]
    assert message in one_line_error(["serve", str(trained["run"]), *port_option, *options], capsys)


def test_serve_refuses_a_port_in_use(trained, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = one_line_error(["serve", str(trained["run"]), "--port", str(port)], capsys)
    assert err == f"error: cannot listen on 127.0.0.1:{port}: the port is already in use"


def test_serve_refuses_nan_weights(trained, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    tensors = load_file(str(run / "model.safetensors"))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name][...] = float("nan")
    save_file(tensors, str(run / "model.safetensors"))
    defectkit.runs.write_json(run / "threshold.json", {"value": 0.0, "source": "test"})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    err = one_line_error(["serve", str(run), "--port", str(port)], capsys)
    assert "model.safetensors" in err and "NaN" in err


def test_nan_score_answers_503_and_turns_health_unhealthy(trained, tmp_path):
    """Weights that turn NaN after the start (here: set so in memory) never give a decision."""
    import torch

    app = create_app(trained["run"])
    with TestClient(app) as client:
        paths = trained["files"][:2]
        assert client.post("/predict", files=upload(paths)).status_code == 200
        with torch.no_grad():
            for parameter in app.state.model.predictor.trained.model.parameters():
                parameter.fill_(float("nan"))
        response = client.post("/predict", files=upload(paths))
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert detail.startswith(f"{paths[0].name}: the model gave a non-finite score (nan)") and "unhealthy" in detail
        health = client.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "unhealthy" and paths[0].name in body["problem"] and body["requests_failed"] == 1
        later = client.post("/predict", files=upload(paths[:1]))
        assert later.status_code == 503 and "the service is unhealthy" in later.json()["detail"]


def test_probe_refuses_weights_that_overflow(trained, tmp_path):
    """Finite weights that overflow to NaN pass the library's file check; the start-up probe refuses them."""
    import shutil

    from safetensors.torch import load_file, save_file

    from defectkit.errors import DataError

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    tensors = {k: (v.fill_(3e38) if v.is_floating_point() else v) for k, v in load_file(str(run / "model.safetensors")).items()}
    save_file(tensors, str(run / "model.safetensors"))
    defectkit.runs.write_json(run / "threshold.json", {"value": 0.0, "source": "test"})
    with pytest.raises(DataError, match=r"model\.safetensors: the model gave a non-finite score .* for a plain grey test image"):
        create_app(run)


def test_busy_budget_answers_503_with_retry_after(trained):
    app = create_app(trained["onnx"], queue_timeout_s=0.2)
    budget = app.state.budget
    with TestClient(app) as client:
        path = trained["files"][0]
        budget.used = budget.capacity  # every pixel taken (as by requests decoding huge images)
        response = client.post("/predict", files=upload([path]))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["detail"].startswith("busy: ")
        budget.used = 0
        ok = client.post("/predict", files=upload([path]))
        assert ok.status_code == 200
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["requests_busy"] == 1 and health["pixels"]["in_flight"] == 0


def test_a_heatmap_request_must_fit_the_budget_whole(trained):
    """With a heatmap the full pictures live until the answer, so the request reserves all its pixels."""
    import cv2

    app = create_app(trained["run"], max_pixels=10_000, max_pixels_in_flight=20_000)
    small = png(cv2.resize(cv2.imread(str(trained["files"][0]), cv2.IMREAD_GRAYSCALE), (90, 90)))  # 8100 pixels
    files = [("files", (f"s{i}.png", small, "image/png")) for i in range(3)]
    with TestClient(app) as client:
        assert client.post("/predict", files=files).status_code == 200  # one image at a time fits
        response = client.post("/predict?heatmap=map", files=files)
        assert response.status_code == 413 and "24,300 pixels, over the 20,000 pixels in flight" in response.json()["detail"]


def test_pixel_budget_is_first_come_first_served():
    import asyncio

    from defectkit.serve.batcher import PixelBudget

    async def scenario():
        budget = PixelBudget(10)
        assert await budget.acquire(8, 1)
        order = []

        async def take(name, pixels, timeout):
            ok = await budget.acquire(pixels, timeout)
            order.append((name, ok))
            return ok

        big = asyncio.ensure_future(take("big", 10, 0.1))  # waits at the head, then gives up
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(take("small", 2, 5))  # fits, but queues behind big
        await asyncio.sleep(0.02)
        assert order == [] and budget.used == 8
        await big
        await small  # big gave up: small is let through at once
        assert order == [("big", False), ("small", True)] and budget.used == 10
        budget.release(8)
        budget.release(2)
        assert budget.used == 0 and budget.peak == 10

    finished = []

    def in_thread():  # playwright's sync API (the web page test) leaves a loop running in the main thread
        asyncio.run(scenario())
        finished.append(True)  # not reached when an assertion in the scenario failed

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(30)
    assert finished == [True]


def test_body_timeout_and_disconnect_on_real_server(trained, caplog):
    """A stalled body gets 408 and a closed connection; a client that hangs up mid-body is one log line."""
    import logging

    import uvicorn

    app = create_app(trained["run"], body_timeout_s=0.5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        port = sock.getsockname()[1]
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(head)
            answer = b""
            while chunk := stalled.recv(4096):  # ends when the server closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 0.5 s" in answer
        with socket.create_connection(("127.0.0.1", port), timeout=10) as leaving:
            leaving.sendall(head)
        deadline = time.monotonic() + 10
        while not any("disconnected during POST /predict (while sending the body)" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
