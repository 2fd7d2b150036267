"""Inference images/s of trained runs: the PyTorch predictor vs the exported ONNX model.

For each run folder it exports ``RUN/model.onnx`` when missing, then times both predictors
on the same uint8 images (smooth random pictures at ``--size``, default the run's own input
size, so resizing costs nothing and the model's work is measured) at each batch size, after
one warm-up batch. Both predictors do the whole job: scaling, model, score and a heatmap at
the image's size.

    python benchmarks/onnx_speed.py runs/bench-unsup/ear-fold0 runs/bench-unsup/riad-fold0 --batch 1,8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from common import append_result, provenance


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT of the images (default: the run's input size)")
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()

    import torch

    import defectkit
    from defectkit.infer.export import export_onnx

    threads = torch.get_num_threads()
    rows = []
    for run in map(Path, args.runs):
        model = run / "model.onnx"
        if not model.is_file():
            export_onnx(run, model)
        torch_predictor = defectkit.load(run)
        onnx_predictor = defectkit.load(model)
        width, height = (int(v) for v in args.size.split("x")) if args.size else torch_predictor.pre.input_size
        images = pictures(args.images, torch_predictor.channels, width, height)
        for batch in (int(b) for b in args.batch.split(",")):
            row = {"run": str(run), "method": torch_predictor.method, "size": f"{width}x{height}", "batch": batch,
                   "torch": images_per_second(torch_predictor, images, batch), "onnxruntime": images_per_second(onnx_predictor, images, batch)}
            rows.append(row)
            print(f"{run} batch {batch}: torch {row['torch']:.1f}/s, onnxruntime {row['onnxruntime']:.1f}/s", flush=True)
    print()
    print(f"| run | method | image size | batch | PyTorch images/s ({threads} threads) | onnxruntime images/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['method']} | {r['size']} | {r['batch']} | {r['torch']:.1f} | {r['onnxruntime']:.1f} | {r['onnxruntime'] / r['torch']:.2f} |")
    append_result(args.results, {"benchmark": "onnx_speed", **provenance(), "rows": rows})


if __name__ == "__main__":
    main()
