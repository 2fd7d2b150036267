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
