"""Evaluating a run folder on its test split: metrics.json, predictions.csv and curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import runs
from ..errors import DataError
from . import metrics as M


def plot_curves(labels: np.ndarray, scores: np.ndarray, run_dir: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision, recall, _ = M.precision_recall_curve(labels, scores)
    fpr, tpr, _ = M.roc_curve(labels, scores)
    for name, x, y, xlabel, ylabel, value in (
        (runs.PR_CURVE, recall, precision, "recall", "precision", f"AP {M.average_precision(labels, scores):.4f}"),
        (runs.ROC_CURVE, fpr, tpr, "false positive rate", "true positive rate", f"AUROC {M.roc_auc(labels, scores):.4f}"),
    ):
        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
        ax.plot(x, y, drawstyle="steps-post" if name == runs.PR_CURVE else "default")
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=f"{title}: {value}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        tmp = run_dir / f".{name}.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        tmp.replace(run_dir / name)


def evaluate_run(run_dir: str | Path, data_root: str | Path | None = None, device: str = "cpu", weights: str = runs.MODEL) -> dict:
    """Score the run's test split with its final weights and write the evaluation files."""
    from ..data.datasets import read_dataset
    from ..infer.predictor import load_model
    from ..methods.segdec import score_samples, sigmoid, split_samples

    run_dir = runs.require_run(Path(run_dir), weights)
    model, config = load_model(run_dir, device=device, weights=weights)
    root = data_root if data_root is not None else config.data_root
    parts = split_samples(read_dataset(config.dataset, root, config.split, config.fold), config.seed)
    test = parts.get("test")
    if not test:
        raise DataError(f"dataset {config.dataset}: no test split to evaluate on")
    pre = config.preprocessing()
    labels = np.array([s.is_defective for s in test])
    logits = score_samples(model, test, pre, device, config.eval_batch_size)
    result = M.image_metrics(labels, logits)  # rank metrics on logits: the exact probabilities' ranking
    validation = parts.get("validation")
    if validation and any(s.is_defective for s in validation):
        val_logits = score_samples(model, validation, pre, device, config.eval_batch_size)
        decision = M.best_f1_threshold([s.is_defective for s in validation], val_logits)["threshold"]
        source = "validation (best F1)"
    else:
        decision, source = result["threshold"], "test (best F1; no validation split with defects)"
    # thresholds are reported as probabilities, with the logit beside (a probability can round to 1.0)
    for key, logit in (("threshold", result["threshold"]), ("threshold_fn0", result["threshold_fn0"]), ("decision_threshold", decision)):
        result[key] = float(sigmoid(logit))
        result[f"{key}_logit"] = float(logit)
    result.update(threshold_source=source, dataset=config.dataset, split=config.split, fold=config.fold, weights=weights)
    runs.write_json(run_dir / runs.METRICS, result)
    runs.write_csv(
        run_dir / runs.PREDICTIONS,
        ["image", "name", "label", "score", "logit", "decision"],
        (
            [str(s.image_path), s.name, int(s.is_defective), repr(float(sigmoid(z))), repr(float(z)), int(z >= decision)]
            for s, z in zip(test, logits)
        ),
    )
    if len(set(labels.tolist())) == 2:
        plot_curves(labels, logits, run_dir, f"{config.dataset} test")
    return result
