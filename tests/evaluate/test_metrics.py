"""Tests for defectkit.evaluate.metrics against scikit-learn, brute force and hand results."""

import json
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from defectkit.evaluate import metrics as M

skm = pytest.importorskip("sklearn.metrics")
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy 1.26 has only trapz


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _random_case(seed, ties):
    """Labels with both classes and scores that are continuous or heavily tied."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]  # both classes present
    rng.shuffle(labels)
    base = rng.normal(size=n) + labels * rng.uniform(-0.5, 2.5)
    if ties == "continuous":
        scores = base
    elif ties == "round1":
        scores = np.round(base, 1)
    else:  # integers 0..3
        scores = rng.integers(0, 4, n) + labels * rng.integers(0, 2, n)
        scores = np.clip(scores, 0, 3)
    return labels, scores


TIES = ["continuous", "round1", "int0to3"]
SEEDS = range(60)


def _brute_best_f1(labels, scores):
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=float)
    best = None
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = int(np.sum(pred & labels))
        fp = int(np.sum(pred & ~labels))
        fn = int(np.sum(~pred & labels))
        f1 = 2 * tp / (2 * tp + fp + fn)
        if best is None or f1 > best[1]:  # strict: the highest threshold wins ties
            best = (t, f1, tp, fp, fn, int(np.sum(~pred & ~labels)))
    return best


def _blob_case(seed, shapes, quantise):
    """Masks made of smooth random blobs and noisy maps that partly follow them."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for shape in shapes:
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=1.5)
        mask = field > np.quantile(field, 0.8)
        if seed % 4 == 0:  # a few isolated pixels: single-pixel regions
            mask[rng.integers(0, shape[0], 2), rng.integers(0, shape[1], 2)] = True
        amap = (mask * rng.uniform(0, 1.5) + rng.normal(size=shape) * 0.6).astype(np.float32)
        if quantise:
            amap = np.round(amap, 1).astype(np.float32)
        masks.append(mask)
        maps.append(amap)
    return masks, maps


def _reference_aupro(masks, maps, limit):
    """Independent, slow AUPRO: explicit loops over thresholds and over regions."""
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(np.asarray(m, bool), structure=np.ones((3, 3)))
        regions.extend((i, lab == k) for k in range(1, n + 1))
    negatives = np.concatenate([np.asarray(a)[~np.asarray(m, bool)] for m, a in zip(masks, maps)])
    thresholds = np.unique(np.concatenate([np.ravel(a) for a in maps]))[::-1]
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        fprs.append(np.mean(negatives >= t))
        pros.append(np.mean([np.mean(np.asarray(maps[i])[r] >= t) for i, r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= limit
    x, y = fprs[keep], pros[keep]
    if x[-1] < limit:
        j = int(np.argmax(fprs > limit))
        x = np.append(x, limit)
        y = np.append(y, np.interp(limit, fprs[j - 1 : j + 1], pros[j - 1 : j + 1]))
    return _trapezoid(y, x) / limit


# --------------------------------------------------------------------------------------------
# Image level against scikit-learn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", TIES)
def test_ap_and_auroc_equal_sklearn(ties):
    for seed in SEEDS:
        labels, scores = _random_case(seed, ties)
        assert M.average_precision(labels, scores) == pytest.approx(
            skm.average_precision_score(labels, scores), rel=1e-12, abs=1e-12
        ), seed
        assert M.roc_auc(labels, scores) == pytest.approx(
            skm.roc_auc_score(labels, scores), rel=1e-12, abs=1e-12
        ), seed


@pytest.mark.parametrize("ties", TIES)
def test_curves_equal_sklearn(ties):
    for seed in range(20):
        labels, scores = _random_case(seed, ties)
        fpr, tpr, thr = M.roc_curve(labels, scores)
        fpr2, tpr2, thr2 = skm.roc_curve(labels, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, fpr2, rtol=1e-12)
        np.testing.assert_allclose(tpr, tpr2, rtol=1e-12)
        np.testing.assert_array_equal(thr, thr2)
        prec, rec, thr = M.precision_recall_curve(labels, scores)
        prec2, rec2, thr2 = skm.precision_recall_curve(labels, scores)
        np.testing.assert_allclose(prec, prec2, rtol=1e-12)
        np.testing.assert_allclose(rec, rec2, rtol=1e-12)
        np.testing.assert_array_equal(thr, thr2)


def test_ties_are_one_threshold():
    # All four scores tied: one operating point, so AP is the base rate and AUROC one half.
    assert M.average_precision([0, 1, 0, 1], [2, 2, 2, 2]) == 0.5
    assert M.roc_auc([0, 1, 0, 1], [2, 2, 2, 2]) == 0.5
    fpr, tpr, thr = M.roc_curve([0, 1, 0, 1], [2, 2, 2, 2])
    np.testing.assert_array_equal(thr, [np.inf, 2.0])
    np.testing.assert_array_equal(fpr, [0.0, 1.0])


def test_hand_cases():
    # scikit-learn's documented example.
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    # Inverted pair: the only step reaches recall 1 at precision 1/2.
    assert M.average_precision([1, 0], [0.0, 1.0]) == 0.5
    # A tie across classes counts one half: pairs (1 beats 0), (tie), (1 beats 0), (tie).
    assert M.roc_auc([0, 1, 0, 1], [1, 1, 0, 2]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    # Booleans and 0./1. floats are accepted as labels.
    assert M.roc_auc(np.array([False, True]), [0.2, 0.1]) == 0.0
    assert M.roc_auc(np.array([0.0, 1.0]), [0.1, 0.2]) == 1.0


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_single_class_gives_nan_without_warning(labels):
    scores = [0.3, 0.1, 0.2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(M.average_precision(labels, scores))
        assert math.isnan(M.roc_auc(labels, scores))
        out = M.image_metrics(labels, scores)
    assert math.isnan(out["ap"]) and math.isnan(out["auroc"])
    assert out["n_images"] == 3 and out["n_defective"] == sum(labels)


# --------------------------------------------------------------------------------------------
# Operating points
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", TIES)
def test_best_f1_equals_brute_force(ties):
    for seed in range(40):
        labels, scores = _random_case(seed, ties)
        got = M.best_f1_threshold(labels, scores)
        t, f1, tp, fp, fn, tn = _brute_best_f1(labels, scores)
        assert got["threshold"] == t, seed
        assert got["f1"] == pytest.approx(f1, rel=1e-12)
        assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (tp, fp, fn, tn)
        assert got["precision"] == pytest.approx(tp / (tp + fp))
        assert got["recall"] == pytest.approx(tp / (tp + fn))


def test_best_f1_ties_take_highest_threshold():
    # F1 is 2/3 at thresholds 4 and 1 (and lower in between): 4 must be chosen.
    got = M.best_f1_threshold([1, 0, 0, 1], [4, 3, 2, 1])
    assert got == {
        "threshold": 4.0,
        "f1": pytest.approx(2 / 3),
        "precision": 1.0,
        "recall": 0.5,
        "tp": 1,
        "fp": 0,
        "fn": 1,
        "tn": 2,
    }


def test_best_f1_uses_greater_or_equal():
    # Threshold 0.5 flags both 0.5 scores; the good image at 0.5 is a false positive.
    got = M.best_f1_threshold([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])
    assert got["threshold"] == 0.5
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (2, 1, 0, 1)
    assert got["f1"] == pytest.approx(0.8)


def test_fp_at_zero_fn_by_hand():
    labels = [0, 1, 0, 1, 0, 0]
    scores = [0.9, 0.5, 0.4, 0.7, 0.5, 0.1]
    # Lowest defective score is 0.5; good images at 0.9 and 0.5 (tie) are >= it.
    assert M.fp_at_zero_fn(labels, scores) == {"threshold": 0.5, "fp": 2}
    assert M.fp_at_zero_fn([1, 1, 0], [0.2, 0.3, 0.1]) == {"threshold": 0.2, "fp": 0}
    assert M.fp_at_zero_fn([1, 1], [0.2, 0.3]) == {"threshold": 0.2, "fp": 0}
    no_defects = M.fp_at_zero_fn([0, 0], [0.2, 0.3])
    assert math.isnan(no_defects["threshold"]) and no_defects["fp"] == 0


def test_image_metrics_consistent_and_json_safe():
    labels, scores = _random_case(7, "round1")
    out = M.image_metrics(labels, scores)
    assert set(out) == {
        "ap", "auroc", "threshold", "f1", "precision", "recall", "tp", "fp", "fn", "tn",
        "fp_at_fn0", "threshold_fn0", "n_images", "n_defective",
    }  # fmt: skip
    for key, value in out.items():
        assert type(value) in (float, int), key
    json.dumps(out)
    assert out["ap"] == M.average_precision(labels, scores)
    assert out["auroc"] == M.roc_auc(labels, scores)
    best = M.best_f1_threshold(labels, scores)
    assert {k: out[k] for k in best} == best
    zero_fn = M.fp_at_zero_fn(labels, scores)
    assert (out["fp_at_fn0"], out["threshold_fn0"]) == (zero_fn["fp"], zero_fn["threshold"])
    assert out["n_images"] == len(labels) and out["n_defective"] == int(np.sum(labels))
    assert out["tp"] + out["fn"] == out["n_defective"]
    assert out["fp"] + out["tn"] == out["n_images"] - out["n_defective"]


def test_image_metrics_without_defects():
    out = M.image_metrics([0, 0, 0, 0], [0.1, 0.4, 0.4, 0.2])
    assert out["tp"] == 0 and out["fn"] == 0 and out["f1"] == 0.0
    assert out["threshold"] == 0.4 and out["fp"] == 2 and out["tn"] == 2
    assert out["fp_at_fn0"] == 0 and math.isnan(out["threshold_fn0"])


def test_combine_folds_arithmetic():
    a = M.image_metrics([0, 0, 1, 1, 0], [0.1, 0.6, 0.5, 0.9, 0.2])
    b = M.image_metrics([1, 0, 0, 1], [0.3, 0.2, 0.7, 0.8])
    out = M.combine_folds([a, b])
    assert out["ap"] == pytest.approx((a["ap"] + b["ap"]) / 2)
    assert out["auroc"] == pytest.approx((a["auroc"] + b["auroc"]) / 2)
    assert out["f1"] == pytest.approx((a["f1"] + b["f1"]) / 2)
    for key in ("tp", "fp", "fn", "tn", "fp_at_fn0", "n_images", "n_defective"):
        assert out[key] == a[key] + b[key], key
    assert out["n_images"] == 9 and out["n_defective"] == 4
    assert out["folds"] == [a, b] and out["n_folds"] == 2
    # Hand numbers, so the test does not merely mirror the implementation.
    fold = {"ap": 0.5, "auroc": 0.75, "f1": 0.25, "tp": 1, "fp": 2, "fn": 3, "tn": 4,
            "fp_at_fn0": 5, "n_images": 10, "n_defective": 4}  # fmt: skip
    other = dict(fold, ap=1.0, auroc=0.25, f1=0.75, fp_at_fn0=0, n_images=6)
    out = M.combine_folds([fold, other])
    assert (out["ap"], out["auroc"], out["f1"]) == (0.75, 0.5, 0.5)
    assert (out["fp_at_fn0"], out["n_images"], out["tp"], out["tn"]) == (5, 16, 2, 8)
    json.dumps(out)


def test_combine_folds_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        M.combine_folds([])
    with pytest.raises(ValueError, match="fold 0 lacks keys"):
        M.combine_folds([{"ap": 1.0}])


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, scores, message",
    [
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "binary"),
        ([-1, 1], [0.1, 0.2], "binary"),
        ([0, 1], [0.1, float("nan")], "finite"),
        ([], [], "empty"),
        ([0, 1], ["a", "b"], "numeric"),
    ],
)
def test_image_inputs_rejected(labels, scores, message):
    for fn in (M.average_precision, M.roc_auc, M.best_f1_threshold, M.image_metrics):
        with pytest.raises(ValueError, match=message):
            fn(labels, scores)


def test_pixel_inputs_rejected():
    masks = [np.zeros((4, 5), bool), np.zeros((3, 3), bool)]
    maps = [np.zeros((4, 5)), np.zeros((3, 4))]
    with pytest.raises(ValueError, match=r"image 1: mask shape \(3, 3\) .* \(3, 4\)"):
        M.aupro(masks, maps)
    with pytest.raises(ValueError, match="number of images: 2 != 1"):
        M.pixel_auroc(masks, maps[:1])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        M.pixel_ap(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"masks\[1\] must be binary"):
        M.pixel_auroc([np.zeros((2, 2)), np.full((2, 2), 0.5)], [np.zeros((2, 2))] * 2)
    bad_map = np.zeros((2, 2, 2))
    bad_map[1, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"maps\[1\].*NaN"):
        M.pixel_auroc(np.zeros((2, 2, 2)), bad_map)
    for limit in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fpr_limit"):
            M.aupro(np.ones((1, 2, 2)), np.ones((1, 2, 2)), fpr_limit=limit)


# --------------------------------------------------------------------------------------------
# Pixel level
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantise", [False, True])
def test_pixel_auroc_and_ap_equal_sklearn_on_flattened(quantise):
    for seed in range(6):
        masks, maps = _blob_case(seed, [(20, 24)] * 3, quantise)
        y = np.concatenate([m.ravel() for m in masks])
        s = np.concatenate([a.ravel() for a in maps])
        stacked_masks, stacked_maps = np.stack(masks), np.stack(maps)
        assert M.pixel_auroc(stacked_masks, stacked_maps) == pytest.approx(
            skm.roc_auc_score(y, s), rel=1e-12
        )
        assert M.pixel_ap(stacked_masks, stacked_maps) == pytest.approx(
            skm.average_precision_score(y, s), rel=1e-12
        )
        # 0/1 integer masks and float64 maps give the same answer.
        assert M.pixel_auroc(stacked_masks.astype(np.uint8), stacked_maps.astype(np.float64)) == (
            M.pixel_auroc(stacked_masks, stacked_maps)
        )


def test_pixel_metrics_on_differently_sized_images():
    masks, maps = _blob_case(3, [(16, 20), (9, 31), (25, 12)], quantise=False)
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert M.pixel_auroc(masks, maps) == pytest.approx(skm.roc_auc_score(y, s), rel=1e-12)
    assert M.pixel_ap(masks, maps) == pytest.approx(skm.average_precision_score(y, s), rel=1e-12)
    combined = M.pixel_metrics(masks, maps, fpr_limit=0.2)
    assert combined == {
        "pixel_auroc": M.pixel_auroc(masks, maps),
        "pixel_ap": M.pixel_ap(masks, maps),
        "aupro": M.aupro(masks, maps, fpr_limit=0.2),
    }


@pytest.mark.parametrize("limit", [0.3, 1.0, 0.05, 0.123])
def test_aupro_equals_brute_force_reference(limit):
    for seed in range(5):
        shapes = [(14, 15)] * 3 if seed % 2 else [(12, 17), (9, 9), (15, 11)]
        masks, maps = _blob_case(seed, shapes, quantise=seed >= 3)
        expected = _reference_aupro(masks, maps, limit)
        got = M.aupro(masks if seed % 2 == 0 else np.stack(masks), maps, fpr_limit=limit)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (seed, limit)


def test_aupro_known_values():
    mask = np.zeros((2, 6, 7), bool)
    mask[0, 1:3, 1:4] = True
    mask[1, 4:6, 0] = True
    mask[1, 0, 6] = True
    rng = np.random.default_rng(0)
    noise = rng.random(mask.shape)
    perfect = np.where(mask, 1.0 + noise, noise)  # every defect pixel above every good one
    assert M.aupro(mask, perfect) == pytest.approx(1.0)
    assert M.aupro(mask, mask.astype(np.float32)) == pytest.approx(1.0)
    assert M.aupro(mask, mask.astype(np.float32), fpr_limit=1.0) == pytest.approx(1.0)
    # A constant map is one point (1, 1): the curve is the diagonal, area limit^2 / 2.
    constant = np.full(mask.shape, 0.7, dtype=np.float32)
    assert M.aupro(mask, constant) == pytest.approx(0.15)
    assert M.aupro(mask, constant, fpr_limit=1.0) == pytest.approx(0.5)
    # The inverse of a perfect map: PRO stays 0 until FPR reaches 1.
    assert M.aupro(mask, -perfect) == pytest.approx(0.0)


def test_aupro_averages_regions_not_pixels():
    # One row: region A = pixel 0 (size 1), region B = pixels 2..4 (size 3).
    mask = np.array([[[1, 0, 1, 1, 1, 0, 0]]], bool)
    amap = np.array([[[0.9, 0.3, 0.8, 0.1, 0.1, 0.2, 0.05]]])
    # Thresholds 0.9, 0.8 reach PRO 1/2 and 2/3 at FPR 0; PRO 1 only from FPR 2/3.
    assert M.aupro(mask, amap, fpr_limit=0.3) == pytest.approx(2 / 3)
    assert M.aupro(mask, amap, fpr_limit=1.0) == pytest.approx(2 / 3 * 2 / 3 + 1 / 3)
    # Interpolation at the limit: FPR 1/3 -> 2/3 at constant PRO 2/3 after threshold 0.3.
    assert M.aupro(mask, amap, fpr_limit=0.5) == pytest.approx(2 / 3)


def test_aupro_uses_8_connectivity_within_each_image():
    # A 2-pixel bar and a pixel touching it only diagonally: one region of 3 pixels under
    # 8-connectivity (PRO 1/3 when only the diagonal pixel is found; 4-connectivity: 1/2).
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, 0:2] = True
    mask[0, 1, 2] = True
    amap = np.zeros((1, 4, 4))
    amap[0, 1, 2] = 1.0
    # Curve (0, 0) -> (0, 1/3) -> (1, 1).
    assert M.aupro(mask, amap, fpr_limit=1.0) == pytest.approx(2 / 3)
    # Regions touching across the boundary of two stacked images stay separate: image 0's
    # last row has a 1-pixel defect, image 1's first two rows a 2-pixel one below it.
    mask = np.zeros((2, 3, 3), bool)
    mask[0, 2, 1] = True
    mask[1, 0:2, 1] = True
    amap = np.zeros((2, 3, 3))
    amap[0, 2, 1] = 1.0
    # Per image: PRO (1 + 0) / 2 = 1/2 at FPR 0 (a merged region would give 1/3).
    assert M.aupro(mask, amap, fpr_limit=1.0) == pytest.approx((0.5 + 1) / 2)
    assert M.aupro(list(mask), list(amap), fpr_limit=1.0) == pytest.approx((0.5 + 1) / 2)


def test_pixel_metrics_nan_with_one_class():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mask in (np.zeros((2, 3, 3), bool), np.ones((2, 3, 3), bool)):
            amap = np.random.default_rng(0).random(mask.shape)
            out = M.pixel_metrics(mask, amap)
            assert all(math.isnan(v) for v in out.values()), out
            assert math.isnan(M.aupro(mask, amap))
