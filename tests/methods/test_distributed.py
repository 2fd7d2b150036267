"""Data-parallel training: two gloo processes under torchrun end with the weights of one
process trained on the same global batches (the network has no batch statistics)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from defectkit.data.synthetic import generate
from defectkit.models import create_model

# batches of 6 over 13 training images: 6, 6, 1, so in the last step one rank has no image
TRAIN = ["train", "--dataset", "folder", "--config", "demo", "--validate-every", "1", "--preset", "tiny", "--input-size", "64x128",
         "--epochs", "2", "--batch-size", "6", "--lr", "0.05"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """13 training images and a validation split of 5 (shards of 3 and 2), in the folder layout."""
    root = tmp_path_factory.mktemp("ddp") / "synthetic"
    generate(root, n_train_good=9, n_train_defective=4, n_test_good=3, n_test_defective=2, size=(64, 128), seed=3)
    # a validation split of other images (copies of the test images would be refused as a leak),
    # with its own masks/ (masks shared by stem with the test images would be ambiguous)
    other = generate(root.parent / "other", n_train_good=0, n_train_defective=0, n_test_good=3, n_test_defective=2, size=(64, 128), seed=104)
    shutil.copytree(other / "test", root / "validation")
    shutil.copytree(other / "masks", root / "validation" / "masks")
    return root


def run(command, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_gloo_ranks_train_like_one_process(data, tmp_path):
    single, double = tmp_path / "single", tmp_path / "ddp"
    run([sys.executable, "-m", "defectkit", *TRAIN, "--data-root", str(data), "--out", str(single)])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "defectkit",
         *TRAIN, "--data-root", str(data), "--out", str(double)])
    a, b = load_file(str(single / "model.safetensors")), load_file(str(double / "model.safetensors"))
    assert a.keys() == b.keys()
    # six SGD steps: equal up to float rounding. One step agrees to ~1e-7; the two sum the
    # batch's gradients in different orders and the steps amplify that, to 1e-5-6e-5 here
    # (depending on the kernels' rounding); a wrong gradient scale or shard differs by > 1e-3.
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=2e-4, msg=key)
    torch.manual_seed(0)  # the initial weights, as fit draws them
    start = create_model("segdec", "tiny", in_channels=1, input_size=(64, 128)).state_dict()
    assert start.keys() == a.keys()
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-2  # training moved them far beyond the tolerance
    rows = [(single / "train_log.csv").read_text().splitlines(), (double / "train_log.csv").read_text().splitlines()]
    assert len(rows[0]) == len(rows[1]) == 3  # header + 2 epochs, logged once
    for row_a, row_b in zip(csv.DictReader(rows[0]), csv.DictReader(rows[1])):
        assert float(row_b["loss"]) == pytest.approx(float(row_a["loss"]), rel=1e-5)  # losses summed over ranks
        assert row_a["val_ap"] and float(row_b["val_ap"]) == pytest.approx(float(row_a["val_ap"]), abs=1e-9)  # validation gathered from both shards
    for name in ("metrics.json", "config.yaml", "predictions.csv", "checkpoint.safetensors", "best.safetensors"):
        assert (double / name).is_file(), name


def test_unsupervised_methods_refuse_torchrun(data, tmp_path, monkeypatch):
    from defectkit.errors import ConfigError
    from defectkit.methods.ear import EarConfig
    from defectkit.methods.trainer import fit

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="trains in one process"):
        fit(EarConfig(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(32, 64), epochs=1), tmp_path / "run")
