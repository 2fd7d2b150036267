"""Inference images/s of trained runs: the PyTorch predictor vs the exported ONNX models, fp32 and int8.

For each run folder it exports ``RUN/model.onnx`` and ``RUN/model.int8.onnx`` (``defectkit
export --int8``) when missing, then times the three predictors on the same uint8 images
(smooth random pictures at ``--size``, default the run's own input size, so resizing costs
nothing and the model's work is measured) at each batch size, after one warm-up batch. All
of them do the whole job: scaling, model, score and a heatmap at the image's size.

An int8 export that misses its accuracy check is not written. Barely trained runs (speed
runs) score near chance and rarely pass it, so ``--unchecked-int8`` then exports it into a
temporary folder with the check waived, times it and marks it in the table; the run folder
never holds an unchecked model. ``--synthetic DIR`` trains (when missing) one-epoch speed runs
on synthetic data: the two-stage net's small preset at KolektorSDD2's size (232x640, RGB) and
EAR, RIAD (small U-Net) and PatchCore (fast) at the KolektorSDD benchmark's 128x320, gray.

    python benchmarks/onnx_speed.py runs/bench-unsup/ear-fold0 runs/bench-unsup/riad-fold0 --batch 1,8
    python benchmarks/onnx_speed.py --synthetic runs/bench-int8 --unchecked-int8 --batch 1,8 --images 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import append_result, provenance

SYNTHETIC = {  # run name: (method, config values)
    "segdec-small-232x640": ("segdec", dict(preset="small", input_size=(232, 640), channels=3, dilate=3, validate_every=0)),
    "ear-small-128x320": ("ear", dict(preset="small", input_size=(128, 320))),
    "riad-small-128x320": ("riad", dict(preset="small", input_size=(128, 320))),
    "patchcore-fast-128x320": ("patchcore", dict(preset="fast", input_size=(128, 320))),
}


def pictures(n: int, channels: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    shape = (8, 8) if channels == 1 else (8, 8, 3)
    return [np.clip(cv2.resize(rng.integers(0, 256, shape).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8) for _ in range(n)]


def images_per_second(predictor, images: list, batch: int) -> float:
    predictor.predict_batch(images[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        predictor.predict_batch(images[i : i + batch])
    return len(images) / (time.perf_counter() - started)


def synthetic_runs(root: Path) -> list[Path]:
    """The speed runs of ``SYNTHETIC``, trained for one epoch when missing (speed, not accuracy)."""
    from defectkit.data.synthetic import generate
    from defectkit.evaluate.run_eval import evaluate_run
    from defectkit.methods.registry import get_method
    from defectkit.methods.trainer import fit

    out = []
    for name, (method, values) in SYNTHETIC.items():
        run = root / name
        if not (run / "metrics.json").is_file():
            width, height = values["input_size"]
            data = generate(root / f"data-{width}x{height}", n_train_good=16, n_train_defective=8, n_test_good=10, n_test_defective=10, size=(width, height))
            fit(get_method(method).Config(dataset="synthetic", data_root=str(data), epochs=1, batch_size=4, **values), run, log=lambda m: None)
            evaluate_run(run, log=lambda m: None)
        out.append(run)
    return out


def int8_model(run: Path, unchecked: bool, scratch: Path) -> tuple[Path | None, str]:
    """(the run's int8 model, "checked"), or one exported with the check waived, or (None, why not)."""
    from defectkit.errors import DataError
    from defectkit.infer import quantize
    from defectkit.infer.export import export_onnx

    model = run / "model.int8.onnx"
    if model.is_file():
        return model, "checked"
    try:
        return export_onnx(run, int8=True), "checked"
    except DataError as exc:
        print(f"{run}: int8: {exc}", flush=True)
        if not unchecked or "misses the accuracy check" not in str(exc):
            return None, "refused"
    tolerance, quantize.ACCURACY_TOLERANCE = quantize.ACCURACY_TOLERANCE, 1.0  # AP and AUROC cannot move by more
    try:
        return export_onnx(run, scratch / run.name / model.name, int8=True), "unchecked"
    finally:
        quantize.ACCURACY_TOLERANCE = tolerance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*")
    parser.add_argument("--synthetic", default=None, help="Folder of the one-epoch synthetic speed runs (trained when missing), timed after RUNS.")
    parser.add_argument("--unchecked-int8", action="store_true", help="Time int8 models that miss the accuracy check too (exported to a temporary folder).")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT of the images (default: the run's input size)")
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()

    import torch

    import defectkit
    from defectkit.infer.export import export_onnx

    threads = torch.get_num_threads()
    runs = [Path(r) for r in args.runs] + (synthetic_runs(Path(args.synthetic)) if args.synthetic else [])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for run in runs:
            model = run / "model.onnx"
            if not model.is_file():
                export_onnx(run, model)
            int8, checked = int8_model(run, args.unchecked_int8, Path(scratch))
            torch_predictor = defectkit.load(run)
            onnx_predictor = defectkit.load(model)
            int8_predictor = defectkit.load(int8) if int8 else None
            width, height = (int(v) for v in args.size.split("x")) if args.size else torch_predictor.pre.input_size
            images = pictures(args.images, torch_predictor.channels, width, height)
            for batch in (int(b) for b in args.batch.split(",")):
                row = {"run": str(run), "method": torch_predictor.method, "size": f"{width}x{height}", "batch": batch,
                       "torch": images_per_second(torch_predictor, images, batch), "onnxruntime": images_per_second(onnx_predictor, images, batch),
                       "onnxruntime_int8": images_per_second(int8_predictor, images, batch) if int8_predictor else None, "int8_check": checked}
                rows.append(row)
                int8_text = f"{row['onnxruntime_int8']:.1f}/s ({checked})" if int8_predictor else checked
                print(f"{run} batch {batch}: torch {row['torch']:.1f}/s, onnxruntime {row['onnxruntime']:.1f}/s, int8 {int8_text}", flush=True)
    print()
    print(f"| run | method | image size | batch | PyTorch images/s ({threads} threads) | onnxruntime fp32 images/s | onnxruntime int8 images/s | fp32 / PyTorch | int8 / fp32 | int8 accuracy check |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        int8 = (f"{r['onnxruntime_int8']:.1f}", f"{r['onnxruntime_int8'] / r['onnxruntime']:.2f}") if r["onnxruntime_int8"] else ("-", "-")
        print(f"| {Path(r['run']).name} | {r['method']} | {r['size']} | {r['batch']} | {r['torch']:.1f} | {r['onnxruntime']:.1f} | {int8[0]} | "
              f"{r['onnxruntime'] / r['torch']:.2f} | {int8[1]} | {r['int8_check']} |")
    append_result(args.results, {"benchmark": "onnx_speed", **provenance(), "rows": rows})


if __name__ == "__main__":
    main()
