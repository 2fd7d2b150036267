"""Evaluating a run folder on its test split: metrics.json, predictions.csv and curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import runs
from ..errors import DataError
from . import metrics as M


def write_curves(labels: np.ndarray, scores: np.ndarray, run_dir: Path, title: str) -> None:
    """pr_curve.svg and roc_curve.svg of the evaluated split (the report draws the same charts)."""
    from .. import charts

    for name, svg in ((runs.PR_CURVE, charts.pr_chart(labels, scores, title)), (runs.ROC_CURVE, charts.roc_chart(labels, scores, title))):
        runs.atomic_write(run_dir / name, charts.standalone(svg).encode("utf-8"))


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


def score_samples(method, samples) -> tuple[np.ndarray, np.ndarray, dict]:
    """(labels, raw scores, pixel metrics) of ``samples``; the pixel metrics are empty unless
    some defective sample has a mask (good images count as all-good; defective images without
    a mask are left out of them)."""
    from ..data.imageio import image_size
    from ..data.preprocess import heatmap_to_image

    labels = np.array([s.is_defective for s in samples])
    with_pixels = any(s.is_defective and s.has_mask for s in samples)
    size = pixel_size(sum(s.has_mask or not s.is_defective for s in samples), method.config.input_size)
    raw_parts, masks, maps = [], [], []
    for batch, raw, batch_maps in method.iter_samples(samples):  # its progress is shown there
        raw_parts.append(raw)
        if with_pixels:
            for sample, heat in zip(batch, batch_maps):
                if sample.has_mask or not sample.is_defective:
                    if method.pre.resize == "pad":  # the part of the map on the image, as predict crops it
                        width, height = image_size(sample.image_path)
                        heat = heatmap_to_image(heat, height, width, method.pre.input_size, "pad")
                    maps.append(resize_to(heat, size))
                    masks.append(mask_at(sample, size))
    pixels = {}
    if with_pixels:
        values = M.pixel_metrics(masks, maps)
        if all(np.isfinite(v) for v in values.values()):
            pixels = {**values, "pixel_size": list(size), "pixel_images": len(masks)}
        else:  # undefined, not NaN: no mask has a defective pixel at this size
            pixels = {"pixel_metrics": f"undefined: no defective pixel in the {len(masks)} test masks at {size[0]}x{size[1]}"}
    return labels, np.concatenate(raw_parts), pixels


def read_test_split(config, data_root=None) -> tuple[dict, list]:
    """(all splits, test samples) of a run's config, read the way training read them."""
    from ..data.partition import read_parts

    parts = read_parts(config, data_root, of_run=True)
    test = parts.get("test")
    if not test:
        raise DataError(f"dataset {config.dataset}: no test split to evaluate on")
    return parts, test


def evaluate_run(run_dir: str | Path, data_root: str | Path | None = None, device: str = "cpu", weights: str = runs.MODEL, log=print) -> dict:
    """Score the run's test split with its weights and write the evaluation files, for any method.

    Pixel AUROC, pixel AP and AUPRO are added as :func:`score_samples` says. A test split
    without both good and defective images, or a non-finite score, is refused: its metrics
    would be undefined, and a NaN score compares as "good"."""
    from ..methods.registry import load_method

    run_dir = runs.require_run(Path(run_dir), weights)
    method = load_method(run_dir, device=device, weights=weights)
    config = method.config
    parts, test = read_test_split(config, data_root)
    n_defective = sum(s.is_defective for s in test)
    if n_defective in (0, len(test)):
        raise DataError(f"dataset {config.dataset} at {config.data_root}: the test split has {len(test)} images, all {'good' if not n_defective else 'defective'}; AP, AUROC and a threshold need good and defective images")
    labels, raw, pixel_result = score_samples(method, test)
    broken = np.flatnonzero(~np.isfinite(raw))
    if broken.size:
        raise DataError(f"{test[broken[0]].image_path}: the model ({run_dir / weights}) gave a non-finite score ({raw[broken[0]]}) for {broken.size} of {len(test)} test images; nothing written")
    result = M.image_metrics(labels, raw)  # rank metrics on raw scores (logits: the exact probabilities' ranking)
    try:  # threshold.json (fixed when training ended, or by `defectkit threshold`) wins
        stored = runs.stored_threshold(run_dir, weights)
    except runs.StaleRecord as exc:
        log(f"warning: {exc}; evaluating at the method's own threshold meanwhile")
        stored = None
    threshold = stored or method.decision_threshold(parts, result)
    decision = threshold["value"]
    if method.raw_is_logit:
        # thresholds are reported as probabilities, with the logit beside (a probability can round to 1.0)
        for key, logit in (("threshold", result["threshold"]), ("threshold_fn0", result["threshold_fn0"]), ("decision_threshold", decision)):
            result[key] = float(method.to_score(logit))
            result[f"{key}_logit"] = float(logit)
    else:
        result["decision_threshold"] = float(decision)
        result.update({f"threshold_{k}": v for k, v in threshold.items() if k in ("quantile", "images")})
    result.update(decision_counts(labels, raw, decision))
    result.update(pixel_result)
    result.update(threshold_source=threshold["source"], method=method.name, dataset=config.dataset, split=config.split, fold=config.fold, **runs.weights_record(run_dir, weights))
    runs.write_json(run_dir / runs.METRICS, result)
    scores = method.to_score(raw)
    runs.write_csv(
        run_dir / runs.PREDICTIONS,
        list(PREDICTION_COLUMNS),
        (
            [str(s.image_path), s.name, int(s.is_defective), repr(float(p)), repr(float(z)) if method.raw_is_logit else "", int(z >= decision)]
            for s, p, z in zip(test, scores, raw)
        ),
    )
    if len(set(labels.tolist())) == 2:
        write_curves(labels, raw, run_dir, f"{config.dataset} test")
    return result


PREDICTION_COLUMNS = ("image", "name", "label", "score", "logit", "decision")


def decision_counts(labels, raw, value: float) -> dict[str, int]:
    """The confusion counts of the decisions the run makes (raw >= its decision threshold):
    what predict and serve will do on these images, unlike the best-F1 figures."""
    labels, flagged = np.asarray(labels, bool), np.asarray(raw) >= value
    return {"decision_tp": int(np.sum(flagged & labels)), "decision_fp": int(np.sum(flagged & ~labels)),
            "decision_fn": int(np.sum(~flagged & labels)), "decision_tn": int(np.sum(~flagged & ~labels))}


def read_predictions(run_dir: Path) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
    """(rows, labels, scores, raw scores) of the run's predictions.csv; raw is the logit where
    the method has one (probabilities can round to 1.0 and tie), else the score."""
    path = Path(run_dir) / runs.PREDICTIONS
    if not path.is_file():
        raise DataError(f"{path}: missing; run `defectkit eval {run_dir}` first")
    rows = runs.read_csv(path)
    missing = [c for c in PREDICTION_COLUMNS if rows and c not in rows[0]]
    if missing or not rows:
        raise DataError(f"{path}: {'no predictions' if not rows else 'missing column(s) ' + ', '.join(missing)}; run `defectkit eval {run_dir}` again")
    try:
        labels = np.array([int(r["label"]) for r in rows], dtype=bool)
        scores = np.array([float(r["score"]) for r in rows])
        raw = np.array([float(r["logit"]) if r["logit"] else s for r, s in zip(rows, scores)])
    except ValueError as exc:
        raise DataError(f"{path}: not a predictions file ({exc}); run `defectkit eval {run_dir}` again") from None
    return rows, labels, scores, raw


THRESHOLD_SPLITS = ("auto", "validation", "test")


def policy_scores(run_dir: Path, policy: str, split: str = "auto", data_root=None, device: str = "cpu", log=print,
                  weights: str = runs.MODEL) -> tuple[str, np.ndarray, np.ndarray]:
    """(split used, labels, raw scores) to choose a threshold on: the validation split scored
    by the run's model, or the test split's scores from predictions.csv (with a warning:
    thresholds chosen on the test split make its metrics optimistic)."""
    from ..methods.registry import method_of_run

    if split not in THRESHOLD_SPLITS:
        raise DataError(f"--split must be one of {', '.join(THRESHOLD_SPLITS)}; got {split!r}")
    method = method_of_run(run_dir)
    name, _ = M.parse_policy(policy)
    if split in ("auto", "validation"):
        from ..data.partition import read_parts

        validation = read_parts(method.read_config(run_dir)[0], data_root, of_run=True).get("validation") or []
        labels = np.array([s.is_defective for s in validation], dtype=bool)
        usable = labels.size and (name == "max-fpr" or labels.any()) and (name != "max-fpr" or not labels.all())
        if usable:
            return "validation", labels, method.load(run_dir, device=device, weights=weights).raw_scores(validation)
        what = "no validation split" if not labels.size else f"the validation split has no {'good' if name == 'max-fpr' else 'defective'} image"
        if split == "validation":
            raise DataError(f"{run_dir}: {what} for policy {policy}; use --split test")
        log(f"warning: {what}; choosing the threshold on the test split, so the test metrics in metrics.json become optimistic")
    runs.evaluation(run_dir, weights)  # predictions.csv holds these weights' scores
    _, labels, _, raw = read_predictions(run_dir)  # the test split's scores
    return "test", labels, raw


def set_threshold(run_dir: str | Path, policy: str, split: str = "auto", data_root=None, device: str = "cpu", write: bool = True, log=print,
                  weights: str = runs.MODEL) -> dict:
    """Choose the run's decision threshold by a production policy and (``write``) store it in
    threshold.json, where ``defectkit.load``, export and serve read it; metrics.json's decision
    threshold and predictions.csv's decisions are updated to match."""
    from ..methods.base import to_score
    from ..methods.registry import method_of_run

    run_dir = runs.require_run(Path(run_dir), weights)
    method = method_of_run(run_dir)
    method.read_config(run_dir)  # a threshold for a run that cannot be loaded would be of no use
    used, labels, raw = policy_scores(run_dir, policy, split, data_root, device, log, weights)
    chosen = M.policy_threshold(labels, raw, policy)
    is_logit = method.raw_is_logit
    value = chosen.pop("threshold")
    score = float(to_score(value, is_logit))
    result = {
        "value": value, "score": score, "policy": policy, "split": used,
        "source": f"policy {policy} on the {used} split ({chosen['n_images']} images, {chosen['n_defective']} defective)",
        **{k: v for k, v in chosen.items() if k != "policy"},
        **runs.weights_record(run_dir, weights),
    }
    if write:
        store_threshold(run_dir, result, weights)
    return result


def store_threshold(run_dir: Path, result: dict, weights: str = runs.MODEL) -> None:
    """Store a :func:`set_threshold` result in threshold.json; metrics.json's decision threshold
    and counts and predictions.csv's decisions follow when they are of these weights."""
    from ..methods.registry import method_of_run

    is_logit = method_of_run(run_dir).raw_is_logit
    value, score = result["value"], result["score"]
    try:  # the evaluation files follow only when they are of these weights
        stored = runs.evaluation(run_dir, weights)
    except DataError:
        stored = None
    runs.write_json(run_dir / runs.THRESHOLD, result)
    if stored is None:
        return
    stored.update(decision_threshold=score, threshold_source=result["source"], **({"decision_threshold_logit": value} if is_logit else {}))
    if (run_dir / runs.PREDICTIONS).is_file():
        rows, labels, _, raw = read_predictions(run_dir)
        stored.update(decision_counts(labels, raw, value))
        for row, z in zip(rows, raw):
            row["decision"] = int(z >= value)
        runs.write_csv(run_dir / runs.PREDICTIONS, list(PREDICTION_COLUMNS), ([row[k] for k in PREDICTION_COLUMNS] for row in rows))
    runs.write_json(run_dir / runs.METRICS, stored)
