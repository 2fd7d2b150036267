"""``benchmarks/gpu_check.sh --dry-run`` runs every step of the GPU check to its end on the CPU
(tiny sizes, data it writes itself), so the script works the day a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_fills_every_row(tmp_path):
    results = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--work", str(tmp_path / "work"), "--results", str(results)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["benchmark"] == "gpu_check" and record["dry_run"] is True
    steps = [row["step"] for row in record["rows"]]
    assert steps == ["CUDA tests", "throughput", "KSDD protocol", "scoring", "scoring", "scoring"]
    assert not any("FAILED" in row["result"] for row in record["rows"])
    text = {row["step"]: row["result"] for row in record["rows"]}
    assert " passed" in text["CUDA tests"] and "peak" in text["throughput"]
    assert "projected 3 folds x 50 epochs" in text["KSDD protocol"] and "(135 images)" in text["KSDD protocol"]  # fold 0 of 33_33
    assert [row["setting"].split()[0] for row in record["rows"][3:]] == ["ear", "riad", "patchcore"]
    assert "| step | setting | result | step s |" in done.stdout


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the message on machines without a GPU")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--results", str(tmp_path / "r.jsonl")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable}, cwd=tmp_path)
    assert done.returncode == 2 and "no CUDA GPU here; use --dry-run" in done.stderr and not (tmp_path / "r.jsonl").exists()
