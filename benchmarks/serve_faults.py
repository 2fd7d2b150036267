"""The inference service under hostile traffic: does it stay up, answer right and stay in memory?

Starts ``defectkit serve`` in a subprocess on a free loopback port (small limits: a 1 s body
timeout, ``--max-pixels`` 16 M, ``--max-pixels-in-flight`` 32 M) and runs ``--clients``
threads for ``--seconds``, each on raw sockets, cycling through a mix of requests:

* good: a test image of the run (one in three with ``heatmap=overlay``): must be 200 with the
  score ``defectkit.load(run).predict_batch`` gives the same pixels;
* bad: a corrupt PNG, a text file, an empty file: must be 4xx;
* huge header: a 1 MB header line: must be 4xx (uvicorn's 400);
* stalled: headers and a part of the body, then silence: must be 408 and a closed connection;
* abandoned: part of the body, then the client hangs up (the server logs one line);
* huge: four blank 4000x4000 PNGs (22 KB compressed each, 64 M pixels decoded): 200, or
  503 busy with Retry-After when the pixel budget stays full.

A poller asks ``/health`` every 0.2 s (must always be 200). At the end: the server's peak RSS
(VmHWM), which must stay under its start RSS + ``max_pixels_in_flight`` x 20 bytes + 200 MB
(bodies, allocator), and its log, which must hold no traceback. Prints a table; ``--record``
appends it to results.jsonl.

    python benchmarks/serve_faults.py --run runs/demo --seconds 60
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

BYTES_PER_PIXEL = 20  # the bound's cost per reserved pixel (gray model; measured 10-17, docs/benchmarks.md)
SLACK_MB = 200  # request bodies in flight, the allocator's own slack
KINDS = ("good", "bad", "huge_header", "stalled", "abandoned", "huge")
HUGE_SIDE = 4000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png(image: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".png", image if image.ndim == 2 else image[:, :, ::-1])
    assert ok
    return buffer.tobytes()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
             for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def vm(pid: int, key: str) -> int:
    """VmHWM / VmRSS of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class Server:
    """``defectkit serve`` in a subprocess, its log in a file."""

    def __init__(self, model: Path, port: int, options: dict, log_path: Path):
        self.port, self.log_path, self.options = port, log_path, options
        args = ["serve", str(model), "--port", str(port)] + [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        self.log = open(log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-c", "import sys; from defectkit.cli import main; sys.exit(main(sys.argv[1:]))", *args],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if self.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in 120 s")
            time.sleep(0.1)
        self.start_rss = vm(self.process.pid, "VmRSS")

    def get(self, path: str, timeout: float = 10) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def peak_rss(self) -> int:
        return vm(self.process.pid, "VmHWM")

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        return self.log_path.read_text()


def read_response(sock: socket.socket) -> tuple[int | None, dict, bytes, bool]:
    """(status, headers, body, closed after it) of one HTTP/1.1 response read off a raw socket;
    status None when the connection closed (or was reset) before any."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None, {}, data, True
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return None, {}, data, True
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    closed = False
    try:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            body += chunk
        if not closed and headers.get("connection", "").lower() == "close":
            sock.settimeout(5)
            closed = sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    except TimeoutError:
        closed = False
    return status, headers, body, closed


def request_head(path: str, kind: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n{extra}Connection: close\r\n\r\n").encode()


class Scenario:
    """The request mix and what each kind must get; ``run`` drives it and returns the tally."""

    def __init__(self, run_dir: Path, good_paths: list[Path], huge_side: int = HUGE_SIDE):
        import cv2

        import defectkit

        predictor = defectkit.load(run_dir)
        images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE if predictor.channels == 1 else cv2.IMREAD_COLOR) for p in good_paths]
        images = [im if im.ndim == 2 else im[:, :, ::-1] for im in images]
        self.good = [(p.name, png(im)) for p, im in zip(good_paths, images)]
        self.expected = {name: p.score for (name, _), p in zip(self.good, predictor.predict_batch(images))}
        self.huge_side = huge_side
        blank = png(np.zeros((huge_side, huge_side), np.uint8))
        self.huge = multipart([(f"blank{i}.png", blank) for i in range(4)])
        good_bytes = self.good[0][1]
        self.bad = [multipart([("cut.png", good_bytes[: len(good_bytes) // 2])]), multipart([("notes.png", b"these are not pixels")]),
                    multipart([("zero.png", b"")])]
        self.huge_pixels = 4 * huge_side * huge_side
        self.huge_compressed = len(blank)

    def one(self, port: int, kind: str, i: int, body_timeout_s: float) -> dict:
        """Send one request of ``kind``; the outcome with ``ok`` saying whether it is what the service owes."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=max(60.0, 4 * body_timeout_s))
        started = time.perf_counter()
        try:
            if kind == "good":
                name, data = self.good[i % len(self.good)]
                body, content_type = multipart([(name, data)])
                path = "/predict?heatmap=overlay" if i % 3 == 0 else "/predict"
                sock.sendall(request_head(path, content_type, len(body)) + body)
                status, _, answer, _ = read_response(sock)
                ok = status == 200 and abs(json.loads(answer)["results"][0]["score"] - self.expected[name]) < 1e-5
                return {"kind": kind, "status": status, "ok": ok, "seconds": time.perf_counter() - started}
            if kind == "bad":
                body, content_type = self.bad[i % len(self.bad)]
                sock.sendall(request_head("/predict", content_type, len(body)) + body)
                status, _, _, _ = read_response(sock)
                return {"kind": kind, "status": status, "ok": status is not None and 400 <= status < 500}
            if kind == "huge_header":
                try:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 1_000_000 + b"\r\n\r\n")
                except (ConnectionResetError, BrokenPipeError):
                    pass  # the server answered and closed before all of it was sent; its answer is still there to read
                status, _, _, _ = read_response(sock)
                return {"kind": kind, "status": status, "ok": status is not None and 400 <= status < 500}
            if kind in ("stalled", "abandoned"):
                body, content_type = self.good[i % len(self.good)][1], "multipart/form-data; boundary=x"
                sock.sendall(request_head("/predict", content_type, 100_000) + b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"s.png\"\r\n\r\n" + body[:200])
                if kind == "abandoned":
                    time.sleep(0.05)
                    return {"kind": kind, "status": None, "ok": True}
                status, _, _, closed = read_response(sock)
                return {"kind": kind, "status": status, "ok": status == 408 and closed, "seconds": time.perf_counter() - started}
            if kind == "huge":
                body, content_type = self.huge
                sock.sendall(request_head("/predict", content_type, len(body)) + body)
                status, headers, answer, _ = read_response(sock)
                if status == 200:
                    ok = all(np.isfinite(r["score"]) and (r["width"], r["height"]) == (self.huge_side, self.huge_side) for r in json.loads(answer)["results"])
                else:
                    ok = status == 503 and "retry-after" in headers
                return {"kind": kind, "status": status, "ok": ok, "seconds": time.perf_counter() - started}
            raise ValueError(kind)
        except Exception as exc:  # a timeout or a reset where an answer was owed
            return {"kind": kind, "status": None, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            sock.close()

    def run(self, server: Server, seconds: float, clients: int, body_timeout_s: float, mix: tuple[str, ...] | None = None) -> dict:
        mix = mix or ("good", "bad", "good", "huge_header", "good", "stalled", "good", "huge", "abandoned", "good")
        outcomes: list[dict] = []
        health: list = []
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def client(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                outcome = self.one(server.port, mix[i % len(mix)], i, body_timeout_s)
                with lock:
                    outcomes.append(outcome)
                i += clients

        def poll() -> None:
            while time.monotonic() < stop + 1:
                started = time.perf_counter()
                try:
                    status, body = server.get("/health", timeout=10)
                    health.append((status, time.perf_counter() - started, body["pixels"]["in_flight"]))
                except Exception as exc:
                    health.append((f"{type(exc).__name__}: {exc}", time.perf_counter() - started, None))
                time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)] + [threading.Thread(target=poll)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = server.get("/health")[1]
        return {"outcomes": outcomes, "health": health, "final_health": final, "peak_rss": server.peak_rss(), "start_rss": server.start_rss,
                "bound": server.start_rss + server.options["max_pixels_in_flight"] * BYTES_PER_PIXEL + SLACK_MB * 2**20}


def table(result: dict) -> list[dict]:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for o in result["outcomes"]:
        by_kind[o["kind"]][o["status"]] += 1
    rows = []
    for kind in KINDS:
        seen = [o for o in result["outcomes"] if o["kind"] == kind]
        statuses = by_kind[kind]
        times = sorted(o["seconds"] for o in seen if o.get("seconds") is not None and o["status"] == 200)
        rows.append({"kind": kind, "sent": len(seen), "2xx": sum(v for s, v in statuses.items() if s and 200 <= s < 300),
                     "4xx": sum(v for s, v in statuses.items() if s and 400 <= s < 500), "503": statuses.get(503, 0),
                     "no answer": statuses.get(None, 0), "as owed": sum(o["ok"] for o in seen),
                     "p50 s": float(np.percentile(times, 50)) if times else None, "p99 s": float(np.percentile(times, 99)) if times else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run folder (default: a tiny synthetic segdec run, trained first)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--record", action="store_true", help="append the result to benchmarks/results.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run
        if run is None:
            from defectkit.data.synthetic import generate
            from defectkit.evaluate.run_eval import evaluate_run
            from defectkit.methods.registry import get_method
            from defectkit.methods.trainer import fit

            data = generate(tmp / "synthetic", n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3, size=(64, 128), seed=2)
            method = get_method("segdec")
            run = tmp / "run"
            fit(method.Config(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(64, 128), dilate=3, epochs=1, batch_size=4, validate_every=0),
                run, log=lambda m: None)
            evaluate_run(run)
            good = sorted((data / "test").rglob("*.png"))
        else:
            from defectkit import runs

            good = [Path(r["image"]) for r in runs.read_csv(run / runs.PREDICTIONS)][:8]
        scenario = Scenario(run, good)
        options = {"max_pixels": HUGE_SIDE * HUGE_SIDE, "max_pixels_in_flight": 2 * HUGE_SIDE * HUGE_SIDE, "body_timeout_s": 1, "queue_timeout_s": 20, "max_upload_mb": 2}
        server = Server(run, free_port(), options, tmp / "server.log")
        try:
            result = scenario.run(server, args.seconds, args.clients, options["body_timeout_s"])
        finally:
            log = server.stop()
        rows = table(result)
        print(f"{args.seconds:g} s, {args.clients} clients, options {options}; huge request: 4 x {HUGE_SIDE}x{HUGE_SIDE} blank PNG "
              f"({scenario.huge_compressed / 1024:.0f} KB each, {scenario.huge_pixels / 1e6:.0f} M pixels)")
        print("| kind | sent | 2xx | 4xx | 503 | no answer | as owed | p50 s | p99 s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            p50 = f"{r['p50 s']:.3f}" if r["p50 s"] is not None else "-"
            p99 = f"{r['p99 s']:.3f}" if r["p99 s"] is not None else "-"
            print(f"| {r['kind']} | {r['sent']} | {r['2xx']} | {r['4xx']} | {r['503']} | {r['no answer']} | {r['as owed']} | {p50} | {p99} |")
        health = result["health"]
        print(f"/health: {len(health)} polls, {sum(h[0] == 200 for h in health)} answered 200, slowest {max(h[1] for h in health):.3f} s; "
              f"peak pixels in flight {result['final_health']['pixels']['peak_in_flight']:,} of {options['max_pixels_in_flight']:,}")
        print(f"server RSS: {result['start_rss'] / 2**20:.0f} MB at start, peak {result['peak_rss'] / 2**20:.0f} MB (bound {result['bound'] / 2**20:.0f} MB)")
        print(f"server log: {log.count('Traceback')} tracebacks, {log.count('disconnected during')} disconnect lines, {log.count('answered 408')} body timeouts")
        if args.record:
            sys.path.insert(0, str(Path(__file__).parent))
            from common import append_result, provenance

            append_result(str(Path(__file__).parent / "results.jsonl"), {"benchmark": "serve_faults", **provenance(), "seconds": args.seconds, "clients": args.clients,
                                                                     "options": options, "rows": rows, "peak_rss_mb": result["peak_rss"] / 2**20,
                                                                     "start_rss_mb": result["start_rss"] / 2**20, "bound_mb": result["bound"] / 2**20,
                                                                     "health_polls": len(health), "health_200": sum(h[0] == 200 for h in health)})


if __name__ == "__main__":
    main()
