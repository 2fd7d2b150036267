"""Where a run's image scores come from: the image AUROC of the largest anomaly-map value with
and without a border strip, and the share of good and defective test images whose largest
value lies within 8 pixels of the border (docs/benchmarks.md, PatchCore's border padding).

    python benchmarks/score_border.py RUN [RUN ...] [--margins 0,8,16,24]
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
    parser.add_argument("--margins", default="0,8,16,24", help="border strips left out, input pixels")
    args = parser.parse_args()
    margins = [int(m) for m in args.margins.split(",")]
    print("| run | image score AUROC | " + " | ".join(f"map max, {m} px left out" for m in margins) + " | good at the border | defective at the border |")
    print("|---|---|" + "---|" * len(margins) + "---|---|")
    for run in args.runs:
        labels, raw, maps = maps_on_test_split(run)
        h, w = maps.shape[1:]
        cells = [f"{roc_auc(labels, maps[:, m:h - m, m:w - m].reshape(len(maps), -1).max(1)):.3f}" for m in margins]
        y, x = np.unravel_index(maps.reshape(len(maps), -1).argmax(1), (h, w))
        edge = (y < 8) | (y >= h - 8) | (x < 8) | (x >= w - 8)
        print(f"| {run} | {roc_auc(labels, raw):.3f} | " + " | ".join(cells) + f" | {edge[~labels].mean():.0%} | {edge[labels].mean():.0%} |")


if __name__ == "__main__":
    main()
