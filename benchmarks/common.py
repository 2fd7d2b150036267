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
