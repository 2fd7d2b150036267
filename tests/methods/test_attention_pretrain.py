"""EAR's attention model: the shipped MNIST weights, and retraining them with the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defectkit.errors import DataError
from defectkit.methods.attention_pretrain import (
    SHIPPED_ATTENTION,
    accuracy,
    holdout_split,
    init_for_pretraining,
    load_attention,
    pretrain,
    read_attention_info,
    save_attention,
)
from defectkit.models import create_model

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist_5k.csv.gz"



def toy_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two easy classes anywhere in the image: a horizontal (0) or vertical (1) bar, on faint noise."""
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
    labels = rng.integers(0, 2, n)
    for image, label in zip(images, labels):
        r, c = rng.integers(3, 14, 2)
        if label:
            image[r : r + 12, c + 4 : c + 7] = 255
        else:
            image[r + 4 : r + 7, c : c + 12] = 255
    return images, labels


def write_csv(path, images, labels):
    rows = [",".join(map(str, image.ravel().tolist() + [int(label)])) for image, label in zip(images, labels)]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")


def test_shipped_weights_load_and_describe_their_training():
    assert SHIPPED_ATTENTION.is_file(), "the package ships attention weights"
    model = load_attention()
    assert not model.training and model.config == create_model("attention").config
    info = read_attention_info()
    training = info["training"]
    assert training["data"] == "mnist_5k.csv.gz" and training["n_train"] == 4000 and training["n_test"] == 1000
    assert (training["learning_rate"], training["batch_size"], training["optimizer"]) == (1e-4, 32, "Adam")
    assert training["test_accuracy"] >= 0.85
    logits, attention = model(torch.zeros(1, 1, 40, 56))  # any size, attention sums to 1
    assert logits.shape == (1, 10) and attention.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_shipped_weights_classify_the_held_out_mnist_digits():
    if not MNIST.is_file():
        pytest.skip(f"real data not available: {MNIST} is missing (it sits in ../shared/datasets beside the project)")
    from defectkit.data.mnist import read_mnist

    digits = read_mnist(MNIST)
    _, test = holdout_split(len(digits.images), 1000, 0)  # the digits the shipped weights never saw
    found = accuracy(load_attention(), digits.images[test], digits.labels[test])
    assert found == pytest.approx(read_attention_info()["training"]["test_accuracy"], abs=1e-6)
    assert found >= 0.85


def test_pretraining_learns_and_is_deterministic():
    images, labels = toy_digits(160)
    # a larger learning rate than the paper's 1e-4, so that 12 steps are enough to learn the toy task
    a = pretrain(images[:128], labels[:128], epochs=3, seed=3, learning_rate=1e-3)
    b = pretrain(images[:128], labels[:128], epochs=3, seed=3, learning_rate=1e-3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    assert accuracy(a, images[128:], labels[128:]) >= 0.95
    assert accuracy(pretrain(images[:128], labels[:128], epochs=1, seed=3, learning_rate=1e-3), images[128:], labels[128:]) < 0.8


def test_init_cancels_the_attention_scaling():
    torch.manual_seed(0)
    model = create_model("attention")
    init_for_pretraining(model, 49)
    assert all(m.bias.abs().max() == 0 for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None)
    std = model.head[0].weight.std().item()
    assert std == pytest.approx(49 ** (1 / 3) * (2 / (64 * 9)) ** 0.5, rel=0.05)


def test_save_load_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = create_model("attention").eval()
    path = save_attention(model, tmp_path / "att.safetensors", {"note": "x"})
    loaded = load_attention(path)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert json.loads((tmp_path / "att.json").read_text())["training"] == {"note": "x"}
    (tmp_path / "att.json").unlink()
    with pytest.raises(DataError, match=r"att\.json: missing"):
        load_attention(path)
    with pytest.raises(DataError, match="attention weights file not found"):
        load_attention(tmp_path / "nope.safetensors")
    (tmp_path / "att.json").write_text('{"model": "unet", "config": {}}')
    with pytest.raises(DataError, match="not an attention model config"):
        load_attention(path)


def test_pretrain_cli_on_a_tiny_set(tmp_path, run_cli):
    images, labels = toy_digits(60)
    data = tmp_path / "digits.csv.gz"
    write_csv(data, images, labels)
    out = tmp_path / "weights" / "att.safetensors"
    code, stdout, err = run_cli("attention", "pretrain", "--mnist", data, "--out", out, "--epochs", "2", "--holdout", "12", "--seed", "1")
    assert code == 0, err
    assert "training on 48 digits" in stdout and "testing on 12 held-out digits (seed 1)" in stdout
    info = read_attention_info(out)
    training = info["training"]
    assert (training["n_train"], training["n_test"], training["epochs"], training["seed"]) == (48, 12, 2, 1)
    assert f"test accuracy {training['test_accuracy']:.4f}" in stdout
    _, test = holdout_split(60, 12, 1)
    assert accuracy(load_attention(out), images[test], labels[test]) == pytest.approx(training["test_accuracy"])
    code, _, err = run_cli("attention", "pretrain", "--mnist", data, "--out", out, "--holdout", "60")
    assert code == 2 and "holdout must be between 1 and 59 digits" in err
    code, _, err = run_cli("attention", "pretrain", "--mnist", tmp_path / "none.csv", "--out", out)
    assert code == 2 and "none.csv: MNIST file or folder not found" in err
