"""Which pooling of a run's anomaly maps separates its test images best: the image AUROC of the
run's own image score, of the largest map value, and of the mean of the k largest values
(docs/benchmarks.md, "PatchCore: what else was tried"). Reading the test split to choose a
pooling makes the best column optimistic: it is a bound, not a setting.

    python benchmarks/score_pooling.py RUN [RUN ...] [--top 10,100,400,1600]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import maps_on_test_split


def main() -> None:
    from defectkit.evaluate.metrics import roc_auc

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--top", default="10,100,400,1600", help="k of the top-k means, map pixels")
    args = parser.parse_args()
    tops = [int(k) for k in args.top.split(",")]
    columns = ["image score", "map max"] + [f"top-{k} mean" for k in tops]
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    table = []
    for run in args.runs:
        labels, raw, maps = maps_on_test_split(run)
        ranked = -np.sort(-maps.reshape(len(maps), -1), axis=1)
        row = [roc_auc(labels, raw), roc_auc(labels, ranked[:, 0])]
        row += [roc_auc(labels, ranked[:, :k].mean(1)) for k in tops]
        table.append(row)
        print(f"| {run} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    if len(table) > 1:
        print("| mean | " + " | ".join(f"{v:.4f}" for v in np.mean(table, axis=0)) + " |")


if __name__ == "__main__":
    main()
