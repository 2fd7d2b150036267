"""Requests/s and latency of the inference service under concurrent load, PyTorch vs ONNX backend.

For each backend it starts the service (``defectkit.serve.serve``) in a subprocess on a free
loopback port, waits for ``/health``, sends a few warm-up requests, then at each concurrency
level runs ``--requests`` requests (or as many as fit in ``--max-seconds``) from that many
client threads, one image per request (``POST /predict``, no heatmap), each thread on its own
keep-alive connection. The images are PNGs of smooth random pictures at the run's own input
size (``--size`` for others), so the numbers are the service's: upload, decode, the batched
model, JSON. Reported per level: requests/s, p50 and p99 latency, errors, and the mean batch
the service formed (from ``/health``). Client and server share the machine's cores.

Without ``--run`` a small synthetic segdec run (preset ``small``, 128x128, 2 epochs) is
trained in a temporary folder first. The run's ``model.onnx`` is exported when missing.

    python benchmarks/serve_load.py --run runs/demo --concurrency 1,4,16 --requests 200
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from common import append_result, provenance


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_small_run(folder: Path) -> Path:
    from defectkit.data.synthetic import generate
    from defectkit.evaluate.run_eval import evaluate_run
    from defectkit.methods.registry import get_method
    from defectkit.methods.trainer import fit

    data = generate(folder / "synthetic", n_train_good=16, n_train_defective=8, n_test_good=8, n_test_defective=8, size=(128, 128), seed=0)
    method = get_method("segdec")
    run = folder / "run"
    config = method.Config(dataset="synthetic", data_root=str(data), preset="small", input_size=(128, 128), dilate=3, epochs=2, batch_size=4, validate_every=0)
    fit(config, run, log=lambda m: print(m, file=sys.stderr))
    evaluate_run(run)
    return run


def png_bodies(n: int, channels: int, width: int, height: int) -> list[bytes]:
    import cv2

    rng = np.random.default_rng(0)
    shape = (8, 8) if channels == 1 else (8, 8, 3)
    out = []
    for _ in range(n):
        image = np.clip(cv2.resize(rng.integers(0, 256, shape).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".png", image)[1].tobytes())
    return out


def multipart(png: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\nContent-Type: image/png\r\n\r\n'.encode()
    return head + png + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def start_server(model: Path, port: int, max_batch: int, batch_wait_ms: float, threads: int | None = None) -> subprocess.Popen:
    code = (f"from defectkit.serve import serve; serve({str(model)!r}, host='127.0.0.1', port={port}, "
            f"max_batch={max_batch}, batch_wait_ms={batch_wait_ms}, threads={threads!r}, log_level='warning')")
    process = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the service for {model} exited with code {process.returncode}")
        try:
            if get_json(port, "/health")["status"] == "ok":
                return process
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"the service for {model} did not answer /health within 180 s")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()  # uvicorn shuts down gracefully on SIGTERM
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def load(port: int, bodies: list[tuple[bytes, str]], concurrency: int, requests: int, max_seconds: float) -> dict:
    """``requests`` requests (or what fits in ``max_seconds``) from ``concurrency`` threads."""
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()

    def take() -> int | None:
        with lock:
            if state["next"] >= requests or time.perf_counter() - started > max_seconds:
                return None
            state["next"] += 1
            return state["next"] - 1

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while (i := take()) is not None:
            body, kind = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": kind})
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and len(json.loads(payload)["results"]) == 1
                message = None if ok else f"{response.status}: {payload[:200]!r}"
            except Exception as exc:  # a dropped connection counts as an error; reconnect
                message = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - t0
            with lock:
                (errors.append(message) if message else latencies.append(elapsed))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies) + len(errors), "seconds": seconds,
            "rps": len(latencies) / seconds if seconds else 0.0,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run folder (default: train a small synthetic run in a temporary folder)")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit per concurrency level")
    parser.add_argument("--warmup", type=int, default=10, help="requests before the first level")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT of the images (default: the run's input size)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="the server's compute threads, both backends (default: the library's own, one per core)")
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()

    import torch

    import defectkit
    from defectkit.infer.export import export_onnx

    temp = None
    if args.run:
        run = Path(args.run)
    else:
        temp = tempfile.TemporaryDirectory(prefix="serve-load-")
        print(f"no --run: training a small synthetic run in {temp.name}", file=sys.stderr, flush=True)
        run = train_small_run(Path(temp.name))
    model = run / "model.onnx"
    if not model.is_file():
        export_onnx(run, model)
    predictor = defectkit.load(model)
    width, height = (int(v) for v in args.size.split("x")) if args.size else predictor.meta["input"]["network_size"]
    bodies = [multipart(png, f"load_{i:02d}.png") for i, png in enumerate(png_bodies(16, predictor.channels, width, height))]
    levels = [int(c) for c in args.concurrency.split(",")]
    machine = {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
               "threads": args.threads or torch.get_num_threads()}
    print(f"machine: {machine['nproc']} CPUs ({machine['affinity']} usable), torch {torch.__version__}, server with {machine['threads']} compute threads"
          f"{'' if args.threads else ' (its default)'}; {predictor.method}, images {width}x{height}, max_batch {args.max_batch}, batch_wait_ms {args.batch_wait_ms:g}", flush=True)

    rows = []
    try:
        for backend in args.backends.split(","):
            port = free_port()
            process = start_server(run if backend == "torch" else model, port, args.max_batch, args.batch_wait_ms, args.threads)
            try:
                load(port, bodies, 1, args.warmup, args.max_seconds)
                for concurrency in levels:
                    before = get_json(port, "/health")["batching"]
                    row = {"backend": backend, **load(port, bodies, concurrency, args.requests, args.max_seconds)}
                    after = get_json(port, "/health")["batching"]
                    batches = after["batches"] - before["batches"]
                    row["mean_batch"] = (after["images"] - before["images"]) / batches if batches else 0.0
                    rows.append(row)
                    print(f"{backend} x{concurrency}: {row['requests']} requests, {row['rps']:.1f}/s, p50 {row['p50_ms']:.1f} ms, "
                          f"p99 {row['p99_ms']:.1f} ms, errors {row['errors']}, mean batch {row['mean_batch']:.2f}"
                          + (f" (first error: {row['first_error']})" if row["first_error"] else ""), flush=True)
            finally:
                stop_server(process)
    finally:
        if temp is not None:
            temp.cleanup()

    print()
    print("| backend | concurrency | requests | requests/s | p50 ms | p99 ms | errors | mean batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['concurrency']} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['mean_batch']:.2f} |")
    append_result(args.results, {"benchmark": "serve_load", **provenance(), **machine, "method": predictor.method, "size": f"{width}x{height}",
                                 "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms, "rows": rows})


if __name__ == "__main__":
    main()
