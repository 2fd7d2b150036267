"""Run folders written before the common trainer and the typed configs (no ``version`` in
config.yaml, no split options, the old checkpoint layouts) still load, evaluate on the same
test images, predict, export, report and resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import defectkit
from defectkit import runs
from defectkit.data.partition import read_parts
from defectkit.data.synthetic import generate
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.methods.registry import get_method
from defectkit.methods.trainer import fit, resume_config

NEW_FIELDS = {"test_share", "validation_share", "split_seed", "workers", "cache_mb"}
SETTINGS = {
    "segdec": dict(preset="tiny", input_size=(64, 128), dilate=3, batch_size=3, learning_rate=0.1, delta=1.0, validate_every=0),
    "ear": dict(preset="tiny", input_size=(32, 64), batch_size=3),
    "riad": dict(preset="tiny", input_size=(32, 64), batch_size=3),
}
OLD_LOG = {"segdec": ["epoch", "loss", "loss_seg", "loss_cls", "weight_seg", "weight_cls", "train_accuracy", "val_ap", "seconds"],
           "ear": ["epoch", "loss", "loss_l2", "loss_msgms", "loss_ssim", "seconds"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("old") / "synthetic", n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3, size=(64, 128), seed=8)


def make_old(run, method: str) -> None:
    """Rewrite a run folder the way the code before this version wrote it."""
    saved = runs.read_yaml(run / runs.CONFIG)
    del saved["version"]
    removed = NEW_FIELDS | (set() if method == "segdec" else {"validate_every"})
    saved["train"] = {k: v for k, v in saved["train"].items() if k not in removed}
    runs.write_yaml(run / runs.CONFIG, saved)
    tensors = load_file(str(run / runs.CHECKPOINT))
    state = json.loads(runs.read_metadata(run / runs.CHECKPOINT)["state"])
    old_state = {k: state[k] for k in ("epoch", "best_val_ap", "best_epoch")} if method == "segdec" else {"epoch": state["epoch"]}
    if method == "segdec":  # the weights alone, no prefix
        tensors = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    else:  # weights and Adam's moments, no random state
        tensors = {k: v for k, v in tensors.items() if not k.startswith("rng.")}
    save_file(tensors, str(run / runs.CHECKPOINT), metadata={"state": json.dumps(old_state)})
    fields = OLD_LOG["segdec" if method == "segdec" else "ear"]
    rows = runs.read_csv(run / runs.TRAIN_LOG)
    runs.write_csv(run / runs.TRAIN_LOG, fields, ([r.get(k, "") for k in fields] for r in rows))


@pytest.mark.parametrize("method", ["segdec", "ear", "riad"])
def test_old_run_folders_load_evaluate_and_resume(method, data, tmp_path):
    config = get_method(method).Config(dataset="synthetic", data_root=str(data), epochs=2, validation_share=0, **SETTINGS[method])
    run = fit(config, tmp_path / "old", log=lambda _: None)
    before = evaluate_run(run)
    make_old(run, method)
    loaded, _ = get_method(method).read_config(run)
    assert loaded.validation_share == 0.0  # those runs trained on the whole training split
    assert [s.name for s in read_parts(loaded)["test"]] == [s.name for s in read_parts(config)["test"]]
    after = evaluate_run(run)
    assert after["ap"] == before["ap"] and after["decision_threshold"] == before["decision_threshold"]
    assert defectkit.load(run).predict(next((data / "test" / "defective").glob("*.png"))).heatmap.shape == (128, 64)

    # resumed for one more epoch from the old checkpoint: exactly as from a new one
    new = fit(config, tmp_path / "new", log=lambda _: None)
    for folder in (run, new):
        fit(resume_config(folder, {"epochs": 3}), folder, resume=True, log=lambda _: None)
    assert [r["epoch"] for r in runs.read_csv(run / runs.TRAIN_LOG)] == ["0", "1", "2"]
    assert runs.read_yaml(run / runs.CONFIG)["version"] == 2
    a, b = load_file(str(run / runs.MODEL)), load_file(str(new / runs.MODEL))
    assert all(torch.equal(a[k], b[k]) for k in a)
