"""The one trainer: exclusive run folders, restarting a run that died before its first
checkpoint, bit-exact resume after ``kill -9``, resuming with changed options, divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from defectkit import runs
from defectkit.data.synthetic import generate
from defectkit.errors import ConfigError, DataError
from defectkit.methods.registry import get_method
from defectkit.methods.trainer import LOCK_FILE, RunLock, fit, resume_config

SETTINGS = {
    "segdec": dict(preset="tiny", input_size=(64, 128), dilate=3, batch_size=3, learning_rate=0.1, delta=1.0, validate_every=1),
    "ear": dict(preset="tiny", input_size=(32, 64), batch_size=3),
    "riad": dict(preset="tiny", input_size=(32, 64), batch_size=3),
}


def quiet(_):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer") / "synthetic"
    return generate(root, n_train_good=8, n_train_defective=4, n_test_good=3, n_test_defective=3, size=(64, 128), seed=4)


def config(method, data, **overrides):
    return get_method(method).Config(**{"dataset": "synthetic", "data_root": str(data), **SETTINGS[method], "epochs": 3, **overrides})


def same_weights(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_folder_in_use_is_refused(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):  # another training holds the folder
        with pytest.raises(ConfigError, match="another training is writing to this run folder"):
            fit(config("ear", data, epochs=1), out, log=quiet)
    fit(config("ear", data, epochs=1), out, log=quiet)  # free again: it runs
    assert (out / runs.MODEL).is_file() and (out / LOCK_FILE).is_file()


def test_two_trainings_into_one_folder_at_once(data, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "defectkit", "train", "--method", "ear", "--dataset", "synthetic", "--data-root", str(data),
               "--preset", "tiny", "--input-size", "32x64", "--epochs", "2", "--no-eval", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another training is writing" in refused or "already holds a run" in refused
    assert "Traceback" not in refused
    assert len(runs.read_csv(out / runs.TRAIN_LOG)) == 2  # one training's epochs, written once


def test_other_files_and_non_folders_are_refused(data, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files \\(notes.txt\\)"):
        fit(config("ear", data, epochs=1), tmp_path / "busy", log=quiet)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="exists and is not a folder"):
        fit(config("ear", data, epochs=1), tmp_path / "file", log=quiet)


def test_bad_options_stop_before_the_folder_is_made(data, tmp_path):
    with pytest.raises(ConfigError, match="inference_skips has 2 flags"):
        fit(config("ear", data, inference_skips=(True, False)), tmp_path / "run", log=quiet)
    with pytest.raises(DataError, match="no such|not found"):
        fit(config("ear", tmp_path / "no-data", dataset="folder"), tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_that_died_before_its_first_checkpoint_starts_again(data, tmp_path, resume):
    out = tmp_path / "run"

    def die(epoch, done, total, losses):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config("ear", data), out, on_step=die, log=quiet)
    assert (out / runs.CONFIG).is_file() and not (out / runs.CHECKPOINT).exists()
    lines = []
    again = resume_config(out) if resume else config("ear", data)
    fit(again, out, resume=resume, log=lines.append)
    assert any("before its first checkpoint" in line for line in lines)
    fit(config("ear", data), tmp_path / "straight", log=quiet)
    assert same_weights(out / runs.MODEL, tmp_path / "straight" / runs.MODEL)


KILLER = textwrap.dedent("""
    import os, signal, sys
    from defectkit.methods.registry import get_method
    from defectkit.methods.trainer import fit
    method, data, out, settings = sys.argv[1], sys.argv[2], sys.argv[3], eval(sys.argv[4])
    config = get_method(method).Config(dataset="synthetic", data_root=data, **settings)

    def on_step(epoch, done, total, losses):
        if epoch == 2 and done > 3:  # mid-epoch, with two epochs checkpointed
            os.kill(os.getpid(), signal.SIGKILL)

    fit(config, out, on_step=on_step, log=lambda _: None)
""")


@pytest.mark.parametrize("method", ["segdec", "ear", "riad"])
def test_resume_after_kill_9_gives_the_weights_of_an_uninterrupted_run(method, data, tmp_path, run_cli):
    settings = {**SETTINGS[method], "epochs": 4}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    fit(config(method, data, epochs=4), straight, log=quiet)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", KILLER, method, str(data), str(killed), repr(settings)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (killed / runs.MODEL).exists()
    assert json.loads(runs.read_metadata(killed / runs.CHECKPOINT)["state"])["epoch"] == 1
    code, out, err = run_cli("train", "--resume", killed, "--no-eval")
    assert code == 0, err
    assert same_weights(straight / runs.MODEL, killed / runs.MODEL)
    logs = [[{k: v for k, v in row.items() if k != "seconds"} for row in runs.read_csv(run / runs.TRAIN_LOG)] for run in (killed, straight)]
    assert [r["epoch"] for r in logs[0]] == ["0", "1", "2", "3"] and logs[0] == logs[1]  # the epochs before the kill kept, once
    if (straight / runs.THRESHOLD).is_file():
        assert json.loads((killed / runs.THRESHOLD).read_text()) == json.loads((straight / runs.THRESHOLD).read_text())
    checkpoint = load_file(str(killed / runs.CHECKPOINT))
    assert "rng.torch" in checkpoint
    if method != "segdec":  # Adam's moments travel in the checkpoint: without them the resumed weights would differ
        assert any(k.startswith("optimizer.") and k.endswith("exp_avg_sq") for k in checkpoint)
    code, out, _ = run_cli("train", "--resume", killed, "--no-eval")
    assert code == 0 and "already finished" in out


def test_resume_applies_more_epochs_and_refuses_other_changes(data, tmp_path, run_cli):
    out = tmp_path / "run"
    fit(config("ear", data, epochs=2), out, log=quiet)
    with pytest.raises(ConfigError, match=r"--resume cannot change learning_rate \(the run has 0.0001, given 0.001\), mask_share"):
        resume_config(out, {"learning_rate": "1e-3", "mask_share": 0.3, "epochs": 3})
    lines = []
    fit(resume_config(out, {"epochs": 3, "workers": 1}), out, resume=True, log=lines.append)
    assert any("resuming with epochs 3, workers 1" in line for line in lines)
    assert runs.read_yaml(out / runs.CONFIG)["train"]["epochs"] == 3
    fit(config("ear", data, epochs=3), tmp_path / "straight", log=quiet)
    assert same_weights(out / runs.MODEL, tmp_path / "straight" / runs.MODEL)  # as if asked for 3 from the start
    with pytest.raises(ConfigError, match="finished 3 epochs already"):
        fit(resume_config(out, {"epochs": 2}), out, resume=True, log=quiet)
    code, _, err = run_cli("train", "--resume", out, "--batch-size", "5")
    assert code == 2 and "--resume cannot change batch_size" in err
    code, _, err = run_cli("train", "--resume", out, "--method", "riad")
    assert code == 2 and "cannot change it" in err


def test_a_resume_stopped_after_its_last_checkpoint_writes_that_model(data, tmp_path, monkeypatch):
    """Trained to 2 epochs, resumed to 4 and stopped after the 4th epoch's checkpoint but before
    the model was written: model.safetensors and threshold.json are still the 2-epoch run's.
    Resuming with --epochs 4 must not call that finished; it writes the checkpoint's weights
    and their threshold (before, every later command scored the 2-epoch weights)."""
    out = tmp_path / "run"
    fit(config("ear", data, epochs=2), out, log=quiet)
    two_epochs = load_file(str(out / runs.MODEL))
    real = runs.save_weights

    def stop_at_the_model(path, *args, **kwargs):
        if path.name == runs.MODEL:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(runs, "save_weights", stop_at_the_model)
    with pytest.raises(KeyboardInterrupt):
        fit(resume_config(out, {"epochs": 4}), out, resume=True, log=quiet)
    monkeypatch.setattr(runs, "save_weights", real)
    stale = load_file(str(out / runs.MODEL))
    assert all(torch.equal(stale[k], two_epochs[k]) for k in two_epochs)  # the situation described
    lines = []
    fit(resume_config(out, {"epochs": 4}), out, resume=True, log=lines.append)
    assert any("holds earlier weights than the checkpoint's 4 epochs" in line for line in lines)
    fit(config("ear", data, epochs=4), tmp_path / "straight", log=quiet)
    assert same_weights(out / runs.MODEL, tmp_path / "straight" / runs.MODEL)
    assert runs.read_json(out / runs.THRESHOLD)["weights_sha256"] == runs.weights_record(out)["weights_sha256"]
    lines = []
    fit(resume_config(out, {"epochs": 4}), out, resume=True, log=lines.append)  # now it is finished
    assert any("training already finished (4 epochs)" in line for line in lines)


def test_plain_sgd_steps_as_torch_sgd_does():
    """segdec's optimiser must give torch.optim.SGD's weights to the bit (its checkpoints, the
    runs made before it and the benchmarks' figures all assume so)."""
    from defectkit.methods.segdec import PlainSGD
    from defectkit.models import create_model

    torch.manual_seed(0)
    ours = create_model("segdec", "tiny", in_channels=1, input_size=(64, 128))
    reference = create_model("segdec", "tiny", in_channels=1, input_size=(64, 128))
    reference.load_state_dict(ours.state_dict())
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    optimisers = PlainSGD(ours.parameters(), lr=0.3), torch.optim.SGD(reference.parameters(), lr=0.3)
    for step in range(4):
        x = torch.rand(3, 1, 128, 64, generator=torch.Generator().manual_seed(step))
        for net, optimiser in zip((ours, reference), optimisers):
            optimiser.zero_grad(set_to_none=True)
            logit, seg = net(x)
            (logit.square().sum() + seg.sum()).backward()
            optimiser.step()
    assert any(not torch.equal(v, start[k]) for k, v in ours.state_dict().items())  # it stepped
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), reference.state_dict().values()))
    assert optimisers[0].state_dict()["state"] == optimisers[1].state_dict()["state"] == {}


def test_a_checkpoint_with_optimiser_state_the_run_cannot_hold_is_refused_by_name(data, tmp_path, run_cli):
    out = tmp_path / "run"
    fit(config("segdec", data, epochs=1), out, log=quiet)
    path = out / runs.CHECKPOINT
    tensors, metadata = load_file(str(path)), runs.read_metadata(path)
    runs.save_weights(path, {**tensors, "optimizer.0.momentum_buffer": torch.zeros(3)}, metadata)
    code, _, err = run_cli("train", "--resume", out, "--epochs", "2")
    assert code == 2 and str(path) in err and "optimiser state does not fit" in err and "Traceback" not in err


def test_divergence_stops_before_the_epoch_is_checkpointed(data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataError, match="training diverged at epoch 1"):
        fit(config("segdec", data, learning_rate=1e30, epochs=2), out, log=quiet)
    assert not (out / runs.CHECKPOINT).exists() and not (out / runs.MODEL).exists()
    weights = load_file(str(out / runs.BEST)) if (out / runs.BEST).exists() else {}
    assert all(torch.isfinite(v).all() for v in weights.values())
