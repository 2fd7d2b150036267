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


# Pixel metrics pool every pixel of the test split; past this many the maps are compared at a
# power-of-two fraction of the input size, so evaluation stays cheap at the papers' sizes.
PIXEL_BUDGET = 1 << 25  # e.g. a KolektorSDD fold's 133 test images at 256x704


def pixel_size(n_images: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) pixel metrics are computed at: the input size, halved until within budget."""
    width, height = input_size
    factor = 1
    while n_images * (width // factor) * (height // factor) > PIXEL_BUDGET and min(width, height) // factor > 8:
        factor *= 2
    return width // factor, height // factor


def resize_to(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 map at ``size`` = (width, height): area average when shrinking, bilinear when enlarging."""
    import cv2

    array = np.asarray(array, dtype=np.float32)
    if (array.shape[1], array.shape[0]) == tuple(size):
        return array
    shrink = size[0] <= array.shape[1] and size[1] <= array.shape[0]
    return cv2.resize(array, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def mask_at(sample, size: tuple[int, int]) -> np.ndarray:
    """The sample's defect mask at ``size``: a pixel is defective when at least half of what it covers is."""
    from ..data.imageio import load_mask

    return resize_to((load_mask(sample) > 0).astype(np.float32), size) >= 0.5


def score_samples(scorer, samples) -> tuple[np.ndarray, np.ndarray, dict]:
    """(labels, raw scores, pixel metrics) of ``samples``; the pixel metrics are empty unless
    some defective sample has a mask (good images count as all-good; defective images without
    a mask are left out of them)."""
    labels = np.array([s.is_defective for s in samples])
    with_pixels = any(s.is_defective and s.has_mask for s in samples)
    size = pixel_size(sum(s.has_mask or not s.is_defective for s in samples), scorer.config.input_size)
    raw_parts, masks, maps = [], [], []
    for batch, raw, batch_maps in scorer.iter_samples(samples):
        raw_parts.append(raw)
        if with_pixels:
            for sample, heat in zip(batch, batch_maps):
                if sample.has_mask or not sample.is_defective:
                    maps.append(resize_to(heat, size))
                    masks.append(mask_at(sample, size))
    pixels = {**M.pixel_metrics(masks, maps), "pixel_size": list(size), "pixel_images": len(masks)} if with_pixels else {}
    return labels, np.concatenate(raw_parts), pixels


def read_test_split(config, data_root=None) -> tuple[dict, list]:
    """(all splits, test samples) of a run's config, read the way training read them."""
    from ..methods.segdec import read_parts

    parts = read_parts(config, data_root)
    test = parts.get("test")
    if not test:
        raise DataError(f"dataset {config.dataset}: no test split to evaluate on")
    return parts, test


def evaluate_run(run_dir: str | Path, data_root: str | Path | None = None, device: str = "cpu", weights: str = runs.MODEL) -> dict:
    """Score the run's test split with its weights and write the evaluation files, for any method.

    Pixel AUROC, pixel AP and AUPRO are added as :func:`score_samples` says."""
    from ..methods.registry import method_of_run

    run_dir = runs.require_run(Path(run_dir), weights)
    method = method_of_run(run_dir)
    scorer = method.load_scorer(run_dir, device=device, weights=weights)
    config = scorer.config
    parts, test = read_test_split(config, data_root)
    labels, raw, pixel_result = score_samples(scorer, test)
    result = M.image_metrics(labels, raw)  # rank metrics on raw scores (logits for segdec: the exact probabilities' ranking)
    threshold = method.decision_threshold(scorer, parts, result)
    decision = threshold["value"]
    if scorer.raw_is_logit:
        # thresholds are reported as probabilities, with the logit beside (a probability can round to 1.0)
        for key, logit in (("threshold", result["threshold"]), ("threshold_fn0", result["threshold_fn0"]), ("decision_threshold", decision)):
            result[key] = float(scorer.to_score(logit))
            result[f"{key}_logit"] = float(logit)
    else:
        result["decision_threshold"] = float(decision)
        result.update({f"threshold_{k}": v for k, v in threshold.items() if k in ("quantile", "images")})
    result.update(pixel_result)
    result.update(threshold_source=threshold["source"], method=method.name, dataset=config.dataset, split=config.split, fold=config.fold, weights=weights)
    runs.write_json(run_dir / runs.METRICS, result)
    scores = scorer.to_score(raw)
    runs.write_csv(
        run_dir / runs.PREDICTIONS,
        ["image", "name", "label", "score", "logit", "decision"],
        (
            [str(s.image_path), s.name, int(s.is_defective), repr(float(p)), repr(float(z)) if scorer.raw_is_logit else "", int(z >= decision)]
            for s, p, z in zip(test, scores, raw)
        ),
    )
    if len(set(labels.tolist())) == 2:
        plot_curves(labels, raw, run_dir, f"{config.dataset} test")
    return result
