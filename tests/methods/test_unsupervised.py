"""EAR and RIAD end to end on tiny synthetic data: training on good images only, resume,
the decision threshold, scoring, and the same run folder for eval / predict / load."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import defectkit
from defectkit import runs
from defectkit.data.synthetic import generate
from defectkit.errors import ConfigError, DataError
from defectkit.evaluate.metrics import best_f1_threshold
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.data.partition import read_parts
from defectkit.methods.ear import ATTENTION_FILE, Ear, EarConfig
from defectkit.methods.registry import load_method
from defectkit.methods.riad import Riad, RiadConfig, inpaint
from defectkit.methods.trainer import fit

CONFIGS = {"ear": EarConfig, "riad": RiadConfig}



@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    return generate(root, n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3, size=(32, 32), seed=1)


def tiny_config(method, data_root, **overrides):
    # no validation part: these tests are about the held-out good images (one test below has a validation split)
    settings = dict(dataset="synthetic", data_root=str(data_root), preset="tiny", input_size=(32, 32), epochs=2, batch_size=3, eval_batch_size=4, validation_share=0)
    settings.update(overrides)
    return CONFIGS[method](**settings)


def quiet(_):
    pass


def weights_of(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """One finished, evaluated run per method (shared by the read-only tests)."""
    out = {}
    for method in CONFIGS:
        run = tmp_path_factory.mktemp(method) / "run"
        fit(tiny_config(method, tiny_data), run, log=quiet)
        out[method] = (run, evaluate_run(run))
    return out


# ---- config ----


def test_mean_filter_is_21_at_256_pixels_and_scales_with_the_shorter_side():
    sizes = {(256, 256): 21, (256, 704): 21, (704, 256): 21, (128, 128): 11, (64, 64): 5, (32, 32): 3, (512, 512): 43, (8, 8): 1}
    assert {s: RiadConfig(input_size=s).filter_size for s in sizes} == sizes
    assert EarConfig(input_size=(64, 64), mean_filter=9).filter_size == 9


def test_config_defaults_and_errors():
    c = EarConfig()
    assert (c.learning_rate, c.weight_decay, c.batch_size, c.epochs, c.channels, c.input_size) == (1e-4, 1e-5, 4, 300, 1, (256, 256))
    assert (c.mask_rule, c.mask_share, c.fill, c.inference_skips, c.threshold_quantile, c.holdout) == ("share", 0.1, "zeros", None, 0.99, 0.1)
    assert RiadConfig().ks == (2, 4, 8, 16) and RiadConfig().n_masks == 3
    assert RiadConfig.from_dict(RiadConfig(ks=[4, 8]).to_dict()) == RiadConfig(ks=(4, 8))
    with pytest.raises(ConfigError, match="unknown training option"):
        EarConfig.from_dict({"ks": [2]})
    with pytest.raises(ConfigError, match="fill must be"):
        EarConfig(fill="noise")
    with pytest.raises(ConfigError, match="threshold_quantile"):
        RiadConfig(threshold_quantile=0)
    assert EarConfig(inference_skips="0011").inference_skips == EarConfig(inference_skips=[0, 0, 1, 1]).inference_skips == (False, False, True, True)
    with pytest.raises(ConfigError, match="inference_skips"):
        EarConfig(inference_skips="01x1")
    with pytest.raises(ConfigError, match="multiples of 8"):
        RiadConfig(input_size=(30, 32))
    assert RiadConfig.from_dict({"learning_rate": "1e-3"}).learning_rate == 1e-3  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(ConfigError, match="epochs: expected a valid integer"):
        RiadConfig(epochs="ten")


# ---- masks and reconstructions ----


def test_ear_mask_is_deterministic_per_image_and_covers_the_share(tiny_data):
    from defectkit.methods.attention_pretrain import load_attention

    config = tiny_config("ear", tiny_data, input_size=(64, 32))
    method = Ear(config, "cpu")
    method.attention = load_attention()
    x = torch.rand(3, 1, 32, 64, generator=torch.Generator().manual_seed(0))
    masks = method.masks(x)
    assert masks.shape == (3, 32, 64) and masks.dtype == torch.bool
    assert masks.sum(dim=(1, 2)).tolist() == [round(0.1 * 32 * 64)] * 3
    assert torch.equal(method.masks(x), masks)  # same images, same masks
    assert torch.equal(method.masks(x[1:2]), masks[1:2])  # does not depend on the rest of the batch
    assert not torch.equal(masks[0], masks[1])  # follows the image
    # the masked pixels are those of highest attention
    attention = method.attention.attention_map(x[:1])[0, 0]
    cells = torch.nn.functional.interpolate(attention[None, None], scale_factor=4, mode="bilinear", align_corners=False)[0, 0]
    assert cells[masks[0]].min() >= cells[~masks[0]].max() - 1e-6
    config.mask_rule, config.mask_threshold = "threshold", 0.5
    by_threshold = method.masks(x)
    assert not torch.equal(by_threshold, masks) and torch.equal(method.masks(x), by_threshold)
    rgb = x.repeat(1, 3, 1, 1)  # a gray image in three channels gets the gray image's mask
    assert torch.equal(method.masks(rgb), by_threshold)


def test_random_mask_rule_has_the_same_area_but_ignores_attention(tiny_data):
    from defectkit.methods.attention_pretrain import load_attention

    config = tiny_config("ear", tiny_data, input_size=(64, 32))
    method = Ear(config, "cpu")
    method.attention = load_attention()
    x = torch.rand(3, 1, 32, 64)
    by_attention = method.masks(x)
    config.mask_rule = "random"
    masks = method.masks(x)
    assert masks.sum(dim=(1, 2)).tolist() == by_attention.sum(dim=(1, 2)).tolist()  # same area
    assert not torch.equal(masks, by_attention)
    assert torch.equal(method.masks(x.clone()), masks)  # a fixed function of the image ...
    assert torch.equal(method.masks(x[2:]), masks[2:])  # ... whatever the batch
    assert not torch.equal(masks[0], masks[1])
    config.seed = 1
    assert not torch.equal(method.masks(x), masks)  # and of the seed


def test_excision_fills_zeros_or_mosaic_only_inside_the_mask(tiny_data):
    x = torch.rand(1, 1, 32, 32)
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 8:16, 8:16] = True
    method = Ear(tiny_config("ear", tiny_data), "cpu")
    zeros = method.excised(x, masks)
    assert zeros[0, 0][masks[0]].abs().max() == 0 and torch.equal(zeros[0, 0][~masks[0]], x[0, 0][~masks[0]])
    method.config.fill = "mosaic"
    mosaic = method.excised(x, masks)
    assert torch.allclose(mosaic[0, 0, 8:16, 8:16], x[0, 0, 8:16, 8:16].mean().expand(8, 8))


def test_riad_inpainting_takes_each_pixel_from_the_pass_that_hid_it():
    from defectkit.methods.masks import riad_masks

    x = torch.rand(2, 1, 16, 16) + 0.5
    masks = riad_masks(16, 16, 4, 3, generator=0)
    # a "net" that adds 1: a hidden pixel sees 0 in its own pass, so it must come out as exactly 1
    assert torch.equal(inpaint(lambda z: z + 1, x, masks), torch.ones_like(x))
    assert torch.equal(inpaint(lambda z: z, x, masks), torch.zeros_like(x))


def test_riad_test_masks_are_seeded_and_scores_repeat(trained, tiny_data):
    run, _ = trained["riad"]
    scorer = load_method(run)
    images = np.stack([scorer.pre.image(s) for s in read_parts(scorer.config)["test"]])
    raw, maps = scorer.score_batch(images)
    again = load_method(run).score_batch(images[::-1].copy())[0][::-1]
    np.testing.assert_allclose(again, raw, rtol=1e-6)  # a fresh scorer, another batch order: the same scores
    np.testing.assert_allclose(scorer.score_batch(images[2:3])[0], raw[2:3], rtol=1e-6)
    assert maps.shape == (len(images), 32, 32)
    np.testing.assert_allclose(maps.reshape(len(images), -1).max(1), raw, rtol=1e-6)  # image score = max of the map
    masks = scorer.test_masks[scorer.config.ks.index(8)]
    assert masks.shape == (3, 32, 32) and masks.sum(0).eq(1).all()  # disjoint and covering
    other = Riad(RiadConfig(seed=1, input_size=(32, 32)), "cpu")
    other.setup(run, None)
    assert not torch.equal(other.test_masks[2], masks)


def test_inference_skips_of_each_method(trained):
    ear, riad = load_method(trained["ear"][0]), load_method(trained["riad"][0])
    assert ear.model.active_skips() == (False, False, True, True)
    assert riad.model.active_skips() == (True, True, True, True)


# ---- training ----


def test_training_uses_good_images_only(tiny_data, tmp_path):
    """The same good images with or without defective ones beside them train the same weights."""
    without = tmp_path / "without"
    shutil.copytree(tiny_data, without)
    shutil.rmtree(without / "train" / "defective")
    (without / "synthetic.json").unlink()  # now a plain folder dataset
    for method in CONFIGS:
        lines, totals = [], set()
        fit(tiny_config(method, tiny_data), tmp_path / f"{method}-all", log=lines.append, on_step=lambda e, d, n, _: totals.add(n))
        assert any("ignoring 3 defective training image(s)" in line for line in lines)
        assert any("holding out 1 of 6 good training images" in line for line in lines)
        assert totals == {5}
        quiet_lines = []
        fit(tiny_config(method, without, dataset="folder"), tmp_path / f"{method}-good", log=quiet_lines.append)
        assert not any("ignoring" in line for line in quiet_lines)
        assert_same_weights(weights_of(tmp_path / f"{method}-all" / runs.MODEL), weights_of(tmp_path / f"{method}-good" / runs.MODEL))


def test_training_needs_good_images(tmp_path):
    root = generate(tmp_path / "defective_only", n_train_good=0, n_train_defective=3, n_test_good=2, n_test_defective=2, size=(32, 32))
    with pytest.raises(DataError, match="no good image to train riad on"):
        fit(tiny_config("riad", root), tmp_path / "run", log=quiet)


# ---- decision threshold ----


def test_threshold_is_a_quantile_of_held_out_good_scores(tiny_data, tmp_path):
    config = tiny_config("riad", tiny_data, epochs=1, holdout=0.5, threshold_quantile=0.9)
    fit(config, tmp_path / "run", log=quiet)
    scorer = load_method(tmp_path / "run")
    parts = read_parts(config)
    train, held = scorer.split_training(parts)
    assert (len(train), len(held), len(parts["train"]) - len(train) - len(held)) == (3, 3, 3)
    scores = scorer.raw_scores(held)
    stored = json.loads((tmp_path / "run" / runs.THRESHOLD).read_text())
    assert stored["value"] == pytest.approx(np.quantile(scores, 0.9))
    assert stored["value"] > scores.min()  # never the minimum score
    assert stored["source"] == "quantile 0.9 of 3 held-out training good images"
    metrics = evaluate_run(tmp_path / "run")
    assert metrics["decision_threshold"] == stored["value"] and metrics["threshold_source"] == stored["source"]
    assert (metrics["threshold_quantile"], metrics["threshold_images"]) == (0.9, 3)
    assert defectkit.load(tmp_path / "run").threshold == stored["value"]


def test_threshold_without_holdout_uses_the_training_good_images(tiny_data, tmp_path):
    config = tiny_config("riad", tiny_data, epochs=1, holdout=0.0)
    lines = []
    fit(config, tmp_path / "run", log=lines.append)
    assert not any("holding out" in line for line in lines)
    scorer = load_method(tmp_path / "run")
    good = [s for s in read_parts(config)["train"] if not s.is_defective]
    stored = json.loads((tmp_path / "run" / runs.THRESHOLD).read_text())
    assert stored["value"] == pytest.approx(np.quantile(scorer.raw_scores(good), 0.99))
    assert stored["images"] == 6 and "training good images (none held out)" in stored["source"]


def test_threshold_from_a_validation_split_with_defects(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    # a validation split of other images (copies of the test images would be refused as a leak),
    # with its own masks/ (masks shared by stem with the test images would be ambiguous)
    other = generate(root.parent / "other", n_train_good=0, n_train_defective=0, n_test_good=4, n_test_defective=4, size=(64, 128), seed=103)
    shutil.copytree(other / "test", root / "validation")
    shutil.copytree(other / "masks", root / "validation" / "masks")
    (root / "synthetic.json").unlink()
    config = tiny_config("ear", root, dataset="folder", epochs=1)
    totals = set()
    fit(config, tmp_path / "run", log=quiet, on_step=lambda e, d, n, _: totals.add(n))
    assert totals == {6}  # nothing held out: the validation split sets the threshold
    scorer = load_method(tmp_path / "run")
    validation = read_parts(config)["validation"]
    expected = best_f1_threshold([s.is_defective for s in validation], scorer.raw_scores(validation))["threshold"]
    metrics = evaluate_run(tmp_path / "run")
    assert metrics["threshold_source"] == "validation (best F1)"
    assert metrics["decision_threshold"] == pytest.approx(expected)


# ---- evaluation and prediction ----


@pytest.mark.parametrize("method", ["ear", "riad"])
def test_eval_and_predict_agree(method, trained, tiny_data):
    run, metrics = trained[method]
    assert metrics["method"] == method and metrics["n_images"] == 6 and metrics["n_defective"] == 3
    for key in ("ap", "auroc", "pixel_auroc", "pixel_ap", "aupro"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["pixel_size"] == [32, 32] and metrics["pixel_images"] == 6
    assert "threshold_logit" not in metrics and metrics["threshold_source"].startswith("quantile 0.99 of 1 held-out")
    with open(run / runs.PREDICTIONS) as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert len(rows) == 6 and all(r["logit"] == "" for r in rows.values())
    predictor = defectkit.load(run)
    assert predictor.threshold == metrics["decision_threshold"] and predictor.threshold_logit is None
    for path in sorted((tiny_data / "test").rglob("*.png")):
        row = rows[str(path)]
        p = predictor.predict(path)
        assert p.score == pytest.approx(float(row["score"]), rel=1e-5)  # the predictor scores as the evaluation did
        assert p.decision == (p.score >= predictor.threshold) == bool(int(row["decision"]))
        assert p.heatmap.shape == (32, 32) and p.heatmap.dtype == np.float32 and p.logit is None
        assert p.heatmap.max() == pytest.approx(p.score, rel=1e-5)  # same size: the heatmap is the scored map
    array = np.asarray(Image.open(path).convert("L"))
    big = np.asarray(Image.fromarray(array).resize((64, 48)))
    assert predictor.predict(big).heatmap.shape == (48, 64)
    assert predictor.predict(array / 255.0).score == pytest.approx(predictor.predict(path).score, rel=1e-5)


def test_ear_run_folder_keeps_its_attention_weights(trained):
    run, _ = trained["ear"]
    saved = runs.read_yaml(run / runs.CONFIG)
    assert saved["method"] == "ear" and saved["model"]["name"] == "unet"
    assert saved["attention"]["source"] == "shipped attention_mnist.safetensors" and (run / ATTENTION_FILE).is_file()
    assert saved["model"]["config"]["inference_skips"] == [False, False, True, True]
    test = read_parts(load_method(run).config)["test"]
    before = load_method(run).raw_scores(test)
    state = weights_of(run / ATTENTION_FILE)
    runs.save_weights(run / ATTENTION_FILE, {k: v * 0 for k, v in state.items()})  # the copy is what scoring uses
    try:
        assert not np.allclose(before, load_method(run).raw_scores(test))
    finally:
        runs.save_weights(run / ATTENTION_FILE, state)


def test_cli_train_eval_predict(tiny_data, tmp_path, run_cli):
    run = tmp_path / "run"
    code, out, err = run_cli("train", "--method", "ear", "--dataset", "synthetic", "--data-root", tiny_data, "--preset", "tiny",
                             "--input-size", "32x32", "--epochs", "1", "--batch-size", "4", "--mask-share", "0.2", "--fill", "mosaic",
                             "--inference-skips", "0111", "--validation-share", "0", "--out", run)
    assert code == 0, err
    assert "ignoring 3 defective training image(s)" in out and "test metrics (6 images, 3 defective)" in out
    assert "pixel AUROC" in out and "best-F1 threshold chosen on these test images, for comparison only" in " ".join(out.split())
    metrics = json.loads((run / runs.METRICS).read_text())
    flagged = [(int(r["label"]), int(r["decision"])) for r in runs.read_csv(run / runs.PREDICTIONS)]
    fp, fn = flagged.count((0, 1)), flagged.count((1, 0))
    assert (metrics["decision_fp"], metrics["decision_fn"]) == (fp, fn)  # the counts of the decisions predictions.csv holds
    decision = f"{metrics['decision_threshold']:.6g}"
    assert (f"decisions at the run's threshold {decision} (from quantile 0.99" in " ".join(out.split())
            and f"{fp} false positives of 3 good, {fn} missed defects of 3 defective" in " ".join(out.split()))
    assert out.index("decisions at the run's threshold") < out.index("test metrics")  # what the run does comes first
    missed = f"warning: this threshold misses {fn / 3:.1%} of the defective parts of the test split ({fn} of 3): they would be passed as good"
    assert (missed in " ".join(out.split())) == (fn / 3 > 0.2)  # said plainly when it is many
    assert ("warning: this threshold flags" in out) == (fp / 3 > 0.2)
    saved = runs.read_yaml(run / runs.CONFIG)
    assert (saved["train"]["mask_share"], saved["train"]["fill"], saved["model"]["config"]["inference_skips"]) == (0.2, "mosaic", [False, True, True, True])
    metrics = json.loads((run / runs.METRICS).read_text())
    code, _, err = run_cli("eval", run)
    assert code == 0, err
    assert json.loads((run / runs.METRICS).read_text())["auroc"] == metrics["auroc"]
    code, out, err = run_cli("predict", run, tiny_data / "test", "--out", tmp_path / "pred")
    assert code == 0, err
    with open(tmp_path / "pred" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and len(list((tmp_path / "pred").rglob("*_overlay.png"))) == 6
    assert all(int(r["decision"]) == (float(r["score"]) >= metrics["decision_threshold"]) and r["logit"] == "" for r in rows)
    code, out, err = run_cli("train", "--resume", run, "--no-eval")
    assert code == 0 and "already finished" in out
    code, _, err = run_cli("train", "--method", "riad", "--dataset", "synthetic", "--data-root", tiny_data, "--preset", "tiny",
                           "--input-size", "32x32", "--epochs", "1", "--ks", "4,8", "--no-eval", "--out", tmp_path / "riad")
    assert code == 0, err
    assert runs.read_yaml(tmp_path / "riad" / runs.CONFIG)["train"]["ks"] == [4, 8]


def test_cli_refuses_options_of_other_methods(tiny_data, tmp_path, run_cli):
    base = ("train", "--dataset", "synthetic", "--data-root", tiny_data, "--out", tmp_path / "run")
    code, _, err = run_cli(*base, "--method", "ear", "--delta", "1")
    assert code == 2 and "--delta does not apply to --method ear (it is an option of segdec)" in err
    code, _, err = run_cli(*base, "--method", "riad", "--fill", "mosaic")
    assert code == 2 and "--fill does not apply to --method riad (it is an option of ear)" in err
    code, _, err = run_cli(*base, "--mask-share", "0.2")
    assert code == 2 and "--mask-share does not apply to --method segdec (it is an option of ear)" in err
    code, _, err = run_cli(*base, "--method", "ear", "--config", "ksdd")
    assert code == 2 and "--method ear has no named settings" in err
    code, _, err = run_cli(*base, "--method", "padim")
    assert code == 2 and "unknown method 'padim'" in err
    code, _, err = run_cli(*base, "--method", "ear", "--inference-skips", "01x1")
    assert code == 2 and "--inference-skips: inference_skips: expected one 0/1 digit per level" in err
    assert not (tmp_path / "run").exists()
