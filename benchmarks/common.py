"""What every benchmark script records beside its numbers: machine, date and command."""

from __future__ import annotations

import json
import platform
import shlex
import sys
from datetime import datetime, timezone


def provenance() -> dict:
    import torch

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }


def append_result(path: str, record: dict) -> None:
    """One JSON line per finished benchmark, for docs/benchmarks.md."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def maps_on_test_split(run):
    """(labels, image scores, anomaly maps N x H x W) of a run's own model on its test split."""
    import numpy as np

    from defectkit.data.partition import read_parts
    from defectkit.methods.registry import method_of_run

    method = method_of_run(run)
    test = read_parts(method.read_config(run)[0], None, of_run=True)["test"]
    method = method.load(run)
    raw, maps = [], []
    for _, scores, heatmaps in method.iter_samples(test):
        raw.append(scores)
        maps.extend(heatmaps)
    return np.array([s.is_defective for s in test]), np.concatenate(raw), np.stack(maps)
