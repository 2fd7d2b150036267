"""The bad-input matrix: every command against a catalogue of broken inputs built in a temp
folder. For each: the documented exit code (2 for bad input), every stderr line an
``error:`` line and one of them naming the broken file, no traceback, and every file that
was there before unchanged (sha256 before and after).

A case is (what is broken, the command, what to expect); the catalogue is ``CASES``.
``serve`` runs in-process with uvicorn's loop replaced by a no-op, so a case that wrongly
succeeds returns at once instead of serving forever.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from defectkit import runs
from defectkit.data.synthetic import generate
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.methods.registry import get_method
from defectkit.methods.trainer import fit

TINY = dict(preset="tiny", input_size=(64, 128), epochs=1, batch_size=4)
TRAIN = ["--method", "segdec", "--preset", "tiny", "--input-size", "64x128", "--epochs", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny synthetic dataset and a trained, evaluated run of it (copied by every case)."""
    root = tmp_path_factory.mktemp("matrix")
    data = generate(root / "data", n_train_good=6, n_train_defective=3, n_test_good=3, n_test_defective=3, size=(64, 128), seed=5)
    run = root / "run"
    fit(get_method("segdec").Config(dataset="synthetic", data_root=str(data), **TINY), run, log=lambda _: None)
    evaluate_run(run, log=lambda _: None)
    return root


# ---------------------------------------------------------------- broken files


def png_bytes(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return encoded.tobytes()


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, and no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


BROKEN_IMAGES: dict[str, Callable[[bytes], bytes]] = {
    "zero-byte": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "corrupt": lambda good: good[:16] + bytes(np.random.default_rng(0).integers(0, 256, len(good) - 16, dtype=np.uint8)),
    "not-an-image": lambda good: b"name,label\nthis is a CSV file, not a picture\n",
    "header-only": lambda good: huge_png_header(64, 128),
}


@dataclass
class Case:
    name: str
    build: Callable[[Path], list[str]]  # breaks files under the case folder, returns the command line
    names: str  # what the error line must name: a word, or "@named" for the file the case broke
    code: int = 2
    may_change: tuple[str, ...] = ()  # files the command exists to rewrite (threshold: threshold.json)


def touch(path: Path, text: str = "mine") -> None:
    """A file of the user's, there before the command (which must leave it alone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")[0]


def retarget(run: Path, data: Path) -> None:
    """Point a copied run at a copied dataset (what --data-root does, for every command)."""
    config = runs.read_yaml(run / runs.CONFIG)
    config["train"]["data_root"] = str(data)
    runs.write_yaml(run / runs.CONFIG, config)


def broken_test_image(kind: str, command: str):
    def build(case: Path) -> list[str]:
        data, run = case / "data", case / "run"
        target = first(data / "test" / "defective")
        target.write_bytes(BROKEN_IMAGES[kind](target.read_bytes()))
        retarget(run, data)
        (case / "named").write_text(str(target.relative_to(case)))
        return {
            "eval": ["eval", run],
            "predict": ["predict", run, target, "--out", case / "out"],
            "inspect": ["datasets", "inspect", "--dataset", "folder", "--data-root", data, "--json"],
        }[command]
    return build


def broken_train_image(kind: str):
    def build(case: Path) -> list[str]:
        data = case / "data"
        target = first(data / "train" / "good")
        target.write_bytes(BROKEN_IMAGES[kind](target.read_bytes()))
        (case / "named").write_text(str(target.relative_to(case)))
        return ["train", *TRAIN, "--dataset", "folder", "--data-root", data, "--out", case / "new", "--no-eval"]
    return build


def broken_mask(kind: str, command: str):
    def build(case: Path) -> list[str]:
        data, run = case / "data", case / "run"
        split = "train" if command == "train" else "test"
        image = first(data / split / "defective")
        target = data / "masks" / image.name
        if kind == "wrong-size":
            cv2.imwrite(str(target), np.full((64, 64), 255, np.uint8))
        elif kind == "colour":
            picture = np.zeros((128, 64, 3), np.uint8)
            picture[:, :32] = (0, 0, 255)
            picture[:, 32:] = (0, 255, 0)
            cv2.imwrite(str(target), picture)
        else:
            target.write_bytes(BROKEN_IMAGES[kind](target.read_bytes()))
        retarget(run, data)
        (case / "named").write_text(str(target.relative_to(case)))
        if command == "train":
            return ["train", *TRAIN, "--dataset", "folder", "--data-root", data, "--out", case / "new", "--no-eval"]
        return ["eval", run]
    return build


def labels_csv(text: str, named: str = "data/labels.csv"):
    def build(case: Path) -> list[str]:
        data = case / "data"
        flat = case / "flat"
        (flat / "images").mkdir(parents=True)
        for i, path in enumerate(sorted((data / "train").rglob("*.png"))[:6]):
            shutil.copy(path, flat / "images" / f"{i}.png")
        (flat / "labels.csv").write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
        (case / "named").write_text(named.replace("data/", "flat/"))
        return ["train", *TRAIN, "--dataset", "folder", "--data-root", flat, "--out", case / "new", "--no-eval"]
    return build


def config_file(text: str):
    def build(case: Path) -> list[str]:
        path = case / "train.yaml"
        path.write_text(text.replace("DATA", str(case / "data")))
        (case / "named").write_text("train.yaml")
        return ["train", path, "--out", case / "new"]
    return build


def run_file(file: str, content, commands: tuple[str, ...] = ("eval", "predict", "export", "report", "threshold", "serve")):
    """A run folder whose ``file`` is replaced by ``content`` (bytes, a function of the
    folder, or None to delete it); one case per command."""
    def cases():
        for command in commands:
            def build(case: Path, command=command) -> list[str]:
                run = case / "run"
                path = run / file
                if content is None:
                    path.unlink()
                elif callable(content):
                    content(run)
                else:
                    path.write_bytes(content)
                (case / "named").write_text(str(path.relative_to(case)))
                image = first(case / "data" / "test" / "good")
                return {
                    "eval": ["eval", run],
                    "predict": ["predict", run, image, "--out", case / "out"],
                    "export": ["export", run, "--out", case / "model.onnx", "--no-check"],
                    "report": ["report", run, "--out", case / "report.html"],
                    "threshold": ["threshold", run, "--policy", "zero-fn", "--split", "test"],
                    "serve": ["serve", run, "--port", str(free_port())],
                    "resume": ["train", "--resume", run, "--epochs", "2", "--no-eval"],
                }[command]
            rewritten = (runs.THRESHOLD, runs.METRICS, runs.PREDICTIONS) if command == "threshold" and file == runs.THRESHOLD else ()
            yield Case(f"{file}={getattr(content, '__name__', 'bytes' if content else 'deleted')}-{command}", build, "@named",
                       code=0 if rewritten else 2, may_change=tuple(f"run/{f}" for f in rewritten))
    return cases()


def nan_weights(run: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(run / runs.MODEL))
    key = sorted(tensors)[0]
    tensors[key] = torch_full_like(tensors[key], float("nan"))
    save_file(tensors, str(run / runs.MODEL))


def torch_full_like(t, value):
    import torch

    return torch.full_like(t, value)


def other_model(run: Path) -> None:
    from safetensors.torch import save_file
    import torch

    save_file({"weight": torch.zeros(3, 3)}, str(run / runs.MODEL))


def pickled(run: Path) -> None:
    import pickle

    (run / runs.MODEL).write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))


def nan_threshold(run: Path) -> None:
    (run / runs.THRESHOLD).write_text('{"value": NaN, "source": "hand-edited"}')


def string_threshold(run: Path) -> None:
    (run / runs.THRESHOLD).write_text('{"value": "0.5", "source": "hand-edited"}')


def list_metrics(run: Path) -> None:
    (run / runs.THRESHOLD).unlink(missing_ok=True)
    (run / runs.METRICS).write_text("[1, 2, 3]")


def no_metrics_no_threshold(run: Path) -> None:
    (run / runs.THRESHOLD).unlink(missing_ok=True)
    (run / runs.METRICS).unlink()


def other_weights_metrics(run: Path) -> None:
    """metrics.json of best.safetensors (eval --best) while commands use model.safetensors."""
    (run / runs.THRESHOLD).unlink(missing_ok=True)
    metrics = runs.read_json(run / runs.METRICS)
    shutil.copy(run / runs.MODEL, run / runs.BEST)
    metrics.update(runs.weights_record(run, runs.BEST))
    runs.write_json(run / runs.METRICS, metrics)


def stale_threshold(run: Path) -> None:
    """threshold.json set for weights that have changed since (a resumed training)."""
    record = runs.read_json(run / runs.THRESHOLD)
    record["weights_sha256"] = "0" * 64
    runs.write_json(run / runs.THRESHOLD, record)
    metrics = runs.read_json(run / runs.METRICS)
    metrics["weights_sha256"] = "0" * 64
    runs.write_json(run / runs.METRICS, metrics)


def garbage_predictions(run: Path) -> None:
    (run / runs.PREDICTIONS).write_bytes(b"image,score\n\xff\xfe\x00garbage,not-a-number\n")


def unknown_method(run: Path) -> None:
    config = runs.read_yaml(run / runs.CONFIG)
    config["method"] = "no-such-method"
    runs.write_yaml(run / runs.CONFIG, config)


def bad_config_value(run: Path) -> None:
    config = runs.read_yaml(run / runs.CONFIG)
    config["train"]["input_size"] = [80000, 80000]
    runs.write_yaml(run / runs.CONFIG, config)


def tagged_config(run: Path) -> None:
    (run / runs.CONFIG).write_text("!!python/object/apply:os.system ['echo owned']\n")


CASES: list[Case] = []
for kind in BROKEN_IMAGES:
    for command in ("eval", "predict"):
        CASES.append(Case(f"test-image-{kind}-{command}", broken_test_image(kind, command), "@named"))
    CASES.append(Case(f"test-image-{kind}-inspect", broken_test_image(kind, "inspect"), "@named", code=1))
    CASES.append(Case(f"train-image-{kind}-train", broken_train_image(kind), "@named"))
for kind in ("wrong-size", "colour", "zero-byte", "truncated"):
    for command in ("train", "eval"):
        CASES.append(Case(f"mask-{kind}-{command}", broken_mask(kind, command), "@named"))
CASES += [
    Case("labels-missing-column", labels_csv("image,split\nimages/0.png,train\n"), "@named"),
    Case("labels-unknown-label", labels_csv("image,label,split\nimages/0.png,maybe,train\n"), "@named"),
    Case("labels-missing-file", labels_csv("image,label,split\nimages/0.png,good,train\nimages/nope.png,defective,train\n"), "nope.png"),
    Case("labels-not-utf8", labels_csv(b"image,label,split\n\xff\xfe\xfa.png,good,train\n"), "@named"),
    Case("labels-listed-twice", labels_csv("image,label,split\nimages/0.png,good,train\nimages/0.png,good,train\nimages/1.png,defective,train\n"), "0.png"),
    Case("labels-train-and-test", labels_csv("image,label,split\nimages/0.png,good,train\nimages/0.png,good,test\nimages/1.png,defective,train\n"), "0.png"),
    Case("labels-only-defective", labels_csv("image,label,split\nimages/0.png,defective,train\nimages/1.png,defective,train\nimages/2.png,good,test\nimages/3.png,defective,test\n"), "train"),
    Case("yaml-negative-epochs", config_file("dataset: synthetic\ndata_root: DATA\nepochs: -1\n"), "@named"),
    Case("yaml-absurd-input-size", config_file("dataset: synthetic\ndata_root: DATA\ninput_size: 80000x80000\n"), "@named"),
    Case("yaml-not-a-number", config_file("dataset: synthetic\ndata_root: DATA\nlearning_rate: fast\n"), "@named"),
    Case("yaml-unknown-key", config_file("dataset: synthetic\ndata_root: DATA\nepoch: 3\n"), "@named"),
    Case("yaml-not-a-mapping", config_file("- dataset\n- synthetic\n"), "@named"),
    Case("yaml-syntax", config_file("dataset: [synthetic\n"), "@named"),
    Case("yaml-python-tag", config_file("dataset: !!python/object/apply:os.system ['echo owned']\n"), "@named"),
    Case("yaml-bad-device", config_file("dataset: synthetic\ndata_root: DATA\ndevice: tpu\n"), "tpu"),
]
RUN_CASES = [
    *run_file(runs.CONFIG, None),
    *run_file(runs.CONFIG, b"train: [unclosed\n"),
    *run_file(runs.CONFIG, tagged_config),
    *run_file(runs.CONFIG, unknown_method),
    *run_file(runs.CONFIG, bad_config_value),
    *run_file(runs.MODEL, None, ("eval", "predict", "export", "serve")),
    *run_file(runs.MODEL, b""),
    *run_file(runs.MODEL, b"\x00" * 64 + b"not safetensors"),
    *run_file(runs.MODEL, pickled),
    *run_file(runs.MODEL, nan_weights),
    *run_file(runs.MODEL, other_model),
    *run_file(runs.THRESHOLD, b'{"value": 0.1'),
    *run_file(runs.THRESHOLD, nan_threshold, ("predict", "export", "report", "serve")),
    *run_file(runs.THRESHOLD, string_threshold, ("predict", "export", "serve")),
    *run_file(runs.METRICS, list_metrics, ("predict", "export", "report", "threshold", "serve")),
    *run_file(runs.METRICS, no_metrics_no_threshold, ("predict", "export", "report", "serve")),
    *run_file(runs.METRICS, other_weights_metrics, ("predict", "export", "threshold", "serve")),
    *run_file(runs.THRESHOLD, stale_threshold, ("predict", "export", "serve")),
    *run_file(runs.PREDICTIONS, garbage_predictions, ("report", "threshold")),
    *run_file(runs.CHECKPOINT, b"\x00\x01garbage", ("resume",)),
    *run_file(runs.CHECKPOINT, lambda run: shutil.copy(run / runs.MODEL, run / runs.CHECKPOINT), ("resume",)),
]
CASES += RUN_CASES
CASES += [
    Case("train-into-foreign-folder", lambda case: touch(case / "new" / "notes.txt") or
         ["train", *TRAIN, "--dataset", "synthetic", "--data-root", case / "data", "--out", case / "new"], "notes.txt"),
    Case("export-out-is-a-folder", lambda case: (case / "dir").mkdir() or ["export", case / "run", "--out", case / "dir"], "dir"),
    Case("export-out-exists", lambda case: touch(case / "m.onnx") or ["export", case / "run", "--out", case / "m.onnx"], "m.onnx"),
    Case("export-sidecar-exists", lambda case: touch(case / "m.onnx.json") or ["export", case / "run", "--out", case / "m.onnx"], "m.onnx"),
    Case("predict-out-is-a-file", lambda case: touch(case / "out") or ["predict", case / "run", case / "data" / "test", "--out", case / "out"], "out"),
    Case("predict-out-is-the-run", lambda case: ["predict", case / "run", case / "data" / "test", "--out", case / "run"], "run"),
    Case("predict-out-holds-predictions", lambda case: touch(case / "out" / "predictions.csv") or
         ["predict", case / "run", case / "data" / "test", "--out", case / "out"], "predictions.csv"),
    Case("predict-out-holds-an-overlay", lambda case: touch(case / "out" / "good" / "test_good_0000_overlay.png") or
         ["predict", case / "run", case / "data" / "test", "--out", case / "out"], "test_good_0000_overlay.png"),
    Case("report-out-exists", lambda case: touch(case / "r.html") or ["report", case / "run", "--out", case / "r.html"], "r.html"),
    Case("demo-out-holds-a-run", lambda case: ["demo", "--out", case / "run", "--epochs", "1", "--size", "64"], "run"),
    Case("demo-overwrite-foreign-files", lambda case: touch(case / "run" / "notes.txt") or
         ["demo", "--out", case / "run", "--overwrite", "--epochs", "1", "--size", "64"], "notes.txt"),
    Case("predict-weights-outside-the-run", lambda case: ["predict", case / "run", case / "data" / "test", "--out", case / "out", "--weights", "../run/model.safetensors"], "../run"),
    Case("serve-port-out-of-range", lambda case: ["serve", case / "run", "--port", "99999"], "99999"),
    Case("eval-device-tpu", lambda case: ["eval", case / "run", "--device", "tpu"], "tpu"),
    Case("predict-device-tpu", lambda case: ["predict", case / "run", case / "data" / "test", "--out", case / "out", "--device", "tpu"], "tpu"),
    Case("serve-device-tpu", lambda case: ["serve", case / "run", "--port", str(free_port()), "--device", "tpu"], "tpu"),
    Case("train-absurd-input-size", lambda case: ["train", "--dataset", "synthetic", "--data-root", case / "data", "--input-size", "80000x80000", "--out", case / "new"], "80000x80000"),
    Case("eval-best-missing", lambda case: (case / "run" / runs.BEST).unlink() or ["eval", case / "run", "--best"], "best.safetensors"),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_matrix_is_large():
    commands = {c.name.rsplit("-", 1)[-1] for c in RUN_CASES}
    assert len(CASES) >= 100 and {"eval", "predict", "export", "report", "threshold", "serve", "resume"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, base, tmp_path, capsys, monkeypatch):
    import uvicorn

    from defectkit.cli import main

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # a wrong success returns at once
    monkeypatch.setenv("DEFECTKIT_CACHE", str(tmp_path / "cache"))  # the demo's data, away from the user's
    shutil.copytree(base / "data", tmp_path / "data")
    shutil.copytree(base / "run", tmp_path / "run")
    retarget(tmp_path / "run", tmp_path / "data")
    args = [str(a) for a in case.build(tmp_path)]
    named = (tmp_path / "named").read_text() if (tmp_path / "named").exists() else None
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == case.code, f"exit {code}, expected {case.code}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    lines = [line for line in err.splitlines() if line.strip()]
    needle = Path(named).name if case.names == "@named" else case.names
    if case.code == 2:
        assert lines and all(line.startswith("error: ") for line in lines), err
        assert any(needle in line for line in lines), f"no error line names {needle!r}:\n{err}"
    elif case.code == 1:  # datasets inspect found problems: they are in its JSON report
        import json

        assert needle in json.dumps(json.loads(out)), out
    after = snapshot(tmp_path)
    changed = [name for name, digest in before.items() if after.get(name) != digest and name not in case.may_change]
    assert not changed, f"files that existed before were changed or deleted: {changed}"
