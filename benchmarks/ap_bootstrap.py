"""How precisely a run's test split measures AP and image AUROC: a stratified bootstrap of
predictions.csv (the good and the defective images each drawn with replacement), printed as a
table.

    python benchmarks/ap_bootstrap.py RUN [RUN ...] [--draws 2000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    from defectkit.evaluate.metrics import average_precision, roc_auc
    from defectkit.evaluate.run_eval import read_predictions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    print("| run | images (defective) | test AP | bootstrap std | 5-95% | image AUROC | bootstrap std | 5-95% |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        _, labels, _, raw = read_predictions(run)
        rng = np.random.default_rng(0)
        good, bad = np.flatnonzero(~labels), np.flatnonzero(labels)
        samples = [np.concatenate([rng.choice(good, good.size), rng.choice(bad, bad.size)]) for _ in range(args.draws)]
        cells = []
        for metric in (average_precision, roc_auc):
            draws = [metric(labels[i], raw[i]) for i in samples]
            low, high = np.percentile(draws, [5, 95])
            cells.append(f"{metric(labels, raw):.4f} | {np.std(draws):.4f} | {low:.3f}-{high:.3f}")
        print(f"| {run} | {labels.size} ({bad.size}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
