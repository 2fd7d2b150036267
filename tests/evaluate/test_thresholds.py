"""Production thresholds: each policy against a brute-force search over every candidate
threshold, and `defectkit threshold` storing one that predict and eval then use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import defectkit
from defectkit.data.synthetic import generate
from defectkit.errors import DataError
from defectkit.evaluate.metrics import MetricInputError, parse_policy, policy_threshold
from defectkit.evaluate.run_eval import evaluate_run, set_threshold
from defectkit.methods.registry import get_method, load_method
from defectkit.methods.trainer import fit
from defectkit.runs import read_csv


def counts(y, s, t):
    flagged = s >= t
    return int((flagged & y).sum()), int((flagged & ~y).sum())


def brute_force(y, s, policy):
    """The policy's threshold by trying every observed score and one above them all (float64)."""
    name, x = parse_policy(policy)
    candidates = sorted(set(s.tolist()), reverse=True)  # highest first
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    table = [(t, *counts(y, s, t)) for t in candidates]
    if name == "best-f1":
        f1 = [2 * tp / (2 * tp + fp + (n_pos - tp)) for _, tp, fp in table]
        return table[int(np.argmax(f1))][0]
    if name == "zero-fn":
        return next(t for t, tp, _ in table if tp == n_pos)
    if name == "recall":
        return next(t for t, tp, _ in table if tp / n_pos >= x - 1e-12)
    ok = [t for t, _, fp in table if fp / n_neg <= x + 1e-12]
    return ok[-1] if ok else np.nextafter(candidates[0], np.inf)


POLICIES = ["best-f1", "zero-fn", "recall=0.9", "recall=0.5", "recall=1", "max-fpr=0.01", "max-fpr=0.1", "max-fpr=0", "max-fpr=1"]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("policy", POLICIES)
def test_policies_match_a_brute_force_search(seed, policy):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 200))
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    s = np.round(rng.normal(size=n) + 1.5 * y, 1 if seed % 2 else 6)  # ties on odd seeds
    got = policy_threshold(y, s, policy)
    expected = brute_force(y, s, policy)
    assert got["threshold"] == expected
    tp, fp = counts(y, s, got["threshold"])
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (tp, fp, int(y.sum()) - tp, int((~y).sum()) - fp)
    if policy == "zero-fn":
        assert got["fn"] == 0 and got["threshold"] == s[y].min()


def test_max_fpr_guarantee_and_best_recall():
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1], bool)
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.85, 0.92, 0.99])
    got = policy_threshold(y, s, "max-fpr=0.1")  # one false alarm of ten allowed
    assert got["fp"] == 1 and got["threshold"] == 0.92 and got["tp"] == 2  # 0.85 would flag 0.9 and 0.95
    assert policy_threshold(y, s, "max-fpr=0")["threshold"] == 0.99  # above every good image


@pytest.mark.parametrize("text", ["f1", "max-fpr", "recall=", "recall=1.5", "max-fpr=-0.1", "recall=abc", "zero-fn=1", "max-fpr=nan"])
def test_bad_policies_are_named(text):
    with pytest.raises(MetricInputError, match="policy"):
        parse_policy(text)


def test_policies_needing_defects_say_so():
    with pytest.raises(MetricInputError, match="no"):
        policy_threshold([0, 0, 0], [0.1, 0.2, 0.3], "zero-fn")
    assert policy_threshold([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], "max-fpr=0.25")["threshold"] == 0.4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny evaluated segdec run on synthetic data (no validation split) and its data."""
    data = generate(tmp_path_factory.mktemp("tiny") / "syn", n_train_good=6, n_train_defective=3, n_test_good=4, n_test_defective=4, size=(64, 128), seed=3)
    method = get_method("segdec")
    run = tmp_path_factory.mktemp("runs") / "run"
    config = method.Config(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(64, 128), dilate=3, epochs=2, batch_size=4,
                           validate_every=0, validation_share=0)
    fit(config, run, log=lambda _: None)
    evaluate_run(run)
    return run, data


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


def test_zero_fn_on_the_test_split_is_stored_and_used(run, run_cli):
    code, out, err = run_cli("threshold", run, "--policy", "zero-fn")
    assert code == 0, err
    assert "test split" in err  # the warning: no validation split
    stored = json.loads((run / "threshold.json").read_text())
    rows = read_csv(run / "predictions.csv")
    logits = np.array([float(r["logit"]) for r in rows])
    labels = np.array([r["label"] == "1" for r in rows])
    assert stored["value"] == logits[labels].min() and stored["fn"] == 0 and stored["split"] == "test"
    assert all(int(r["decision"]) == int(float(r["logit"]) >= stored["value"]) for r in rows)
    assert not any(int(r["decision"]) == 0 and r["label"] == "1" for r in rows)  # no missed defect
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["decision_threshold_logit"] == stored["value"] and "zero-fn" in metrics["threshold_source"]
    predictor = defectkit.load(run)
    assert predictor.threshold_raw == stored["value"]
    assert predictor.threshold == pytest.approx(stored["score"])
    # evaluation keeps the stored threshold instead of recomputing best F1
    assert evaluate_run(run)["decision_threshold_logit"] == stored["value"]


def test_dry_run_stores_nothing(run, run_cli):
    before = (run / "metrics.json").read_bytes()
    code, out, _ = run_cli("threshold", run, "--policy", "recall=0.5", "--dry-run")
    assert code == 0 and "nothing stored" in out
    assert not (run / "threshold.json").exists() and (run / "metrics.json").read_bytes() == before


def test_validation_split_is_scored_by_the_model(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained[1], data)
    # a validation split of other images (copies of the test images would be refused as a leak),
    # with its own masks/ (masks shared by stem with the test images would be ambiguous)
    other = generate(data.parent / "other", n_train_good=0, n_train_defective=0, n_test_good=4, n_test_defective=4, size=(64, 128), seed=105)
    shutil.copytree(other / "test", data / "validation")
    shutil.copytree(other / "masks", data / "validation" / "masks")
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    result = set_threshold(run, "max-fpr=0.25", data_root=data, log=lambda _: None)
    assert result["split"] == "validation"
    # the folder reader sees the validation copy: the scores are the model's own on it
    scorer = load_method(run)
    from defectkit.data.datasets import read_dataset

    validation = [s for s in read_dataset("folder", data, None, None) if s.split == "validation"]
    expected = policy_threshold([s.is_defective for s in validation], scorer.raw_scores(validation), "max-fpr=0.25")
    assert result["value"] == expected["threshold"] and result["fp"] <= 1


def test_missing_validation_split_is_an_error_when_asked_for(run):
    with pytest.raises(DataError, match="no validation split"):
        set_threshold(run, "zero-fn", split="validation")


def test_unevaluated_run_needs_eval_for_the_test_split(run):
    (run / "predictions.csv").unlink()
    with pytest.raises(DataError, match="defectkit eval"):
        set_threshold(run, "best-f1", split="test")


def rewrite_logits(run, logits):
    """predictions.csv with these logits (and scores) for its rows, in order: a crafted ranking."""
    from defectkit.evaluate.run_eval import PREDICTION_COLUMNS
    from defectkit.runs import write_csv

    rows = read_csv(run / "predictions.csv")
    for row, z in zip(rows, logits):
        row["logit"], row["score"] = repr(float(z)), repr(float(1 / (1 + np.exp(-z))))
    write_csv(run / "predictions.csv", list(PREDICTION_COLUMNS), ([r[k] for k in PREDICTION_COLUMNS] for r in rows))
    return [r["label"] == "1" for r in rows]


def test_an_extreme_policy_result_is_said_plainly_and_stored_as_asked(run, run_cli):
    labels = rewrite_logits(run, [0.0] * 8)
    defective = [i for i, bad in enumerate(labels) if bad]
    logits = [2.0 if bad else 1.0 for bad in labels]
    logits[defective[0]] = -1.0  # one defect scores below every good part: zero-fn must flag them all
    rewrite_logits(run, logits)
    code, out, err = run_cli("threshold", run, "--policy", "zero-fn")
    assert code == 0, err
    text = " ".join(out.split())
    assert "warning: this threshold flags 100.0% of the good parts of the test split (4 of 4) as defective" in text
    assert "--policy max-fpr=0.05" in text and "stored in" in text
    stored = json.loads((run / "threshold.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert stored["value"] == -1.0 and (metrics["decision_fp"], metrics["decision_fn"], metrics["decision_tp"], metrics["decision_tn"]) == (4, 0, 4, 0)

    code, out, _ = run_cli("threshold", run, "--policy", "max-fpr=0", "--dry-run")  # now only the three defects above every good part
    text = " ".join(out.split())
    assert code == 0 and "warning: this threshold misses 25.0% of the defective parts of the test split (1 of 4)" in text
    assert "passed as good" in text and "recall=0.99 or zero-fn" in text and "flags" not in text.split("warning")[1]
    rewrite_logits(run, [2.0 if bad else 1.0 for bad in labels])  # separable: best F1 catches every defect, flags no good part
    code, out, _ = run_cli("threshold", run, "--policy", "best-f1", "--dry-run")
    assert code == 0 and "warning" not in out


def test_small_thresholds_keep_their_digits(run, run_cli, tmp_path):
    from defectkit.cli import threshold_text

    assert threshold_text(6.4e-07) == "6.4e-07" and threshold_text(0.458409123) == "0.458409" and float(threshold_text(6.4e-07)) == 6.4e-07
    assert threshold_text(0.99, 4.59512) == "0.99 (logit 4.59512)"
    labels = rewrite_logits(run, [0.0] * 8)
    rewrite_logits(run, [-14.26 + (3.0 if bad else 0.0) for bad in labels])  # scores about 6.4e-07 and 1.3e-05
    code, out, err = run_cli("threshold", run, "--policy", "zero-fn")
    assert code == 0, err
    stored = json.loads((run / "threshold.json").read_text())
    assert f"{stored['score']:.6g}" in out and "(logit -11.26)" in out and f"{stored['score']:.6g}".startswith("1.28777e-05")
