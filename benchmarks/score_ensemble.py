"""Would an ensemble of runs detect better than its members? Each run's test scores (its
predictions.csv) min-max normalised over the test split and averaged, as the PatchCore paper's
ensemble code does. That normalisation reads the test split, so the figure is an upper bound
that a production threshold could not use; if it does not beat the best member, no ensemble will.

    python benchmarks/score_ensemble.py RUN_A RUN_B [RUN_C ...]     # runs scored on the same images
    python benchmarks/score_ensemble.py 'runs/lite0-f{}' 'runs/lite1-f{}' --folds 0,1,2
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def scores(run: Path) -> dict[str, tuple[float, int]]:
    with open(run / "predictions.csv", newline="") as handle:
        return {row["image"]: (float(row["score"]), int(row["label"])) for row in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders; with --folds, patterns with {} for the fold")
    parser.add_argument("--folds", default=None, help="comma list filled into the patterns' {}")
    args = parser.parse_args()

    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    folds = args.folds.split(",") if args.folds else [None]
    rows = []
    for fold in folds:
        paths = [Path(p.format(fold) if fold is not None else p) for p in args.runs]
        members = [scores(path) for path in paths]
        images = sorted(members[0])
        if any(sorted(m) != images for m in members[1:]):
            raise SystemExit(f"fold {fold}: the runs were not scored on the same images")
        labels = np.array([members[0][i][1] for i in images])
        normalised = []
        for member in members:
            s = np.array([member[i][0] for i in images])
            normalised.append((s - s.min()) / (s.max() - s.min()))
        candidates = {path.name: n for path, n in zip(paths, normalised)} | {"ensemble (mean)": np.mean(normalised, 0)}
        for name, s in candidates.items():
            rows.append((fold, name, roc_auc_score(labels, s), average_precision_score(labels, s)))
    print("| fold | scores | image AUROC | AP |")
    print("|---|---|---|---|")
    for fold, name, auroc, ap in rows:
        print(f"| {fold if fold is not None else '-'} | {name} | {auroc:.3f} | {ap:.3f} |")


if __name__ == "__main__":
    main()
