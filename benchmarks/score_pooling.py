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


def main() -> None:
    from defectkit.data.partition import read_parts
    from defectkit.evaluate.metrics import roc_auc
    from defectkit.methods.registry import method_of_run

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
        method = method_of_run(run)
        test = read_parts(method.read_config(run)[0], None, of_run=True)["test"]
        method = method.load(run)
        labels = np.array([s.is_defective for s in test])
        raw, maps = [], []
        for _, scores, heatmaps in method.iter_samples(test):
            raw.append(scores)
            maps.extend(heatmaps)
        ranked = -np.sort(-np.stack(maps).reshape(len(maps), -1), axis=1)
        row = [roc_auc(labels, np.concatenate(raw)), roc_auc(labels, ranked[:, 0])]
        row += [roc_auc(labels, ranked[:, :k].mean(1)) for k in tops]
        table.append(row)
        print(f"| {run} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    if len(table) > 1:
        print("| mean | " + " | ".join(f"{v:.4f}" for v in np.mean(table, axis=0)) + " |")


if __name__ == "__main__":
    main()
