"""The service under hostile traffic on a real uvicorn server (a subprocess of ``defectkit serve``):
good, bad, huge-header, stalled, abandoned and huge-but-tiny-compressed uploads from 8 clients at
once. It must keep /health at 200, answer every good image with the predictor's score, refuse
the bad ones with 4xx, close stalled uploads with 408, stay under its memory bound and log no
traceback. The scenario is benchmarks/serve_faults.py's, run shorter and smaller."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_faults.py"


def scenario_module():
    spec = importlib.util.spec_from_file_location("serve_faults", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from defectkit.data.synthetic import generate
    from defectkit.evaluate.run_eval import evaluate_run
    from defectkit.methods.registry import get_method
    from defectkit.methods.trainer import fit

    root = tmp_path_factory.mktemp("faults")
    data = generate(root / "synthetic", n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3, size=(64, 128), seed=2)
    method = get_method("segdec")
    fit(method.Config(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(64, 128), dilate=3, epochs=1, batch_size=4, validate_every=0),
        root / "run", log=lambda m: None)
    evaluate_run(root / "run")
    return root / "run", sorted((data / "test").rglob("*.png")), root


def test_service_survives_hostile_traffic(tiny_run):
    faults = scenario_module()
    run, good, root = tiny_run
    side = 2000  # four per huge request: 16 M pixels decoded from a few KB
    scenario = faults.Scenario(run, good, huge_side=side)
    options = {"max_pixels": side * side, "max_pixels_in_flight": 2 * side * side, "body_timeout_s": 1, "queue_timeout_s": 30, "max_upload_mb": 2}
    server = faults.Server(run, faults.free_port(), options, root / "server.log")
    try:
        # huge requests from 3 of the 8 clients at once: without the pixel budget they alone would
        # hold 3 x 16 M pixels, several times the bound
        mix = ("huge", "good", "bad", "good", "huge_header", "stalled", "good", "abandoned", "huge", "good", "huge", "good")
        result = scenario.run(server, seconds=6, clients=8, body_timeout_s=options["body_timeout_s"], mix=mix)
    finally:
        log = server.stop()
    outcomes = result["outcomes"]
    kinds = {o["kind"] for o in outcomes}
    assert kinds == set(faults.KINDS), kinds  # every kind was sent at least once
    wrong = [o for o in outcomes if not o["ok"]]
    assert wrong == [], wrong[:5]
    assert any(o["kind"] == "huge" and o["status"] == 200 for o in outcomes)
    assert all(o["status"] == 408 for o in outcomes if o["kind"] == "stalled")
    health = result["health"]
    assert len(health) >= 10 and all(h[0] == 200 for h in health), [h for h in health if h[0] != 200][:5]
    pixels = result["final_health"]["pixels"]
    assert pixels["in_flight"] == 0 and 0 < pixels["peak_in_flight"] <= options["max_pixels_in_flight"]
    assert result["final_health"]["requests_timed_out"] >= 1 and result["final_health"]["clients_disconnected"] >= 1
    assert result["peak_rss"] < result["bound"], f"peak RSS {result['peak_rss'] / 2**20:.0f} MB over the bound {result['bound'] / 2**20:.0f} MB"
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    gone = [line for line in log.splitlines() if "disconnected during POST /predict" in line]
    assert gone and all("while sending the body" in line or "before its answer" in line for line in gone)
    assert "did not send its body within 1 s: answered 408" in log
