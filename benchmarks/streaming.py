"""Training from a dataset larger than memory: peak memory and images/s of the streaming data path.

Generates (once, reused after) a Severstal-sized folder dataset: ``--images`` grayscale
1600x256 JPEG training images (10% defective, with PNG masks), and trains the ``tiny`` supervised
network on it with the Severstal settings for ``--steps`` optimiser steps, in one fresh process
per case:

* ``stream, N workers``: the default decode cache (``--cache-mb``), every image of the bounded
  run decoded on the way (the first epoch never hits the cache), N = 0, 1, 2 worker processes;
* ``pre-cached``: the same steps with every image they use decoded into the cache beforehand
  (a first pass over the same batches), so no step waits for a file.

images/s counts the steps after the first ``--warmup`` (worker start-up and the first batches
excluded). Peak memory is sampled every 0.1 s over the whole process tree: the sum of RSS
(shared pages counted in every process that maps them: an upper bound) and of PSS (shared
pages split between the processes). ``decode only`` rows time the data path alone (no
training) with 0, 1 and 2 workers, to show how far it runs ahead of the network.

    python benchmarks/streaming.py --data /tmp/dk_severstal --images 10000 --steps 24
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import append_result, provenance

WIDTH, HEIGHT = 1600, 256


def generate(root: Path, n: int, seed: int = 0) -> None:
    """``root/train/{good,defective}/*.jpg``, ``root/masks/*.png``, 40 test images; skipped when complete."""
    import cv2
    import numpy as np

    marker = root / "generated.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"images": n, "seed": seed}:
        return
    rng = np.random.default_rng(seed)
    bases = []
    for _ in range(8):  # steel-like textures: streaks along the strip plus grain
        streaks = cv2.resize(rng.normal(0, 1, (HEIGHT // 8, 8)).astype(np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
        grain = cv2.GaussianBlur(rng.normal(0, 1, (HEIGHT, WIDTH)).astype(np.float32), (0, 0), 1.2)
        bases.append(110 + 18 * streaks + 10 * grain)
    for part, count in (("train", n), ("test", 40)):
        for i in range(count):
            defective = i % 10 == 0
            image = np.roll(bases[i % 8], int(rng.integers(0, WIDTH)), axis=1) + rng.normal(0, 3, (HEIGHT, WIDTH))
            name = f"{part}_{i:05d}"
            if defective:
                mask = np.zeros((HEIGHT, WIDTH), np.uint8)
                x, y = int(rng.integers(50, WIDTH - 250)), int(rng.integers(20, HEIGHT - 60))
                cv2.line(mask, (x, y), (x + int(rng.integers(40, 200)), y + int(rng.integers(5, 40))), 255, int(rng.integers(3, 9)))
                image[mask > 0] -= 45
                (root / "masks").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
            folder = root / part / ("defective" if defective else "good")
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{name}.jpg"), np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    marker.write_text(json.dumps({"images": n, "seed": seed}))


def tree_memory(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes of ``pid`` and its descendants."""
    children = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def case(args) -> dict:
    """One measurement in this process (``--case``)."""
    import numpy as np
    import torch

    from defectkit.data.loader import StreamLoader
    from defectkit.data.partition import read_parts
    from defectkit.methods import distributed
    from defectkit.methods.registry import make_config
    from defectkit.methods.trainer import Trainer

    config = make_config("segdec", {"dataset": "folder", "data_root": str(args.data), "preset": "tiny", "input_size": (WIDTH, HEIGHT),
                                    "validation_share": 0, "workers": args.workers, "cache_mb": args.cache_mb}, named="severstal")
    method = Trainer(config, args.out).cls(config, training=True)
    parts = read_parts(config)
    samples = method.training_samples(parts, lambda _: None)
    method.prepare_training(samples, lambda _: None)
    loading = time.perf_counter()
    batches = method.epoch_batches(0, len(samples))[: args.steps]  # what run_epoch below trains on: epoch 0 replays
    if args.mode == "decode":
        loader = StreamLoader(samples, method.item_loader(), workers=args.workers, cache_mb=0)
        started = None
        count = 0
        for step, (indices, _) in enumerate(loader.batches(batches)):
            if step == args.warmup:
                started = time.perf_counter()
            elif step > args.warmup:
                count += len(indices)
        loader.close()
        return {"images_per_s": count / (time.perf_counter() - started), "train_images": len(samples)}
    torch.manual_seed(0)
    method.model = method.net = method.acc.prepare(method.build_model())
    optimizer = method.optimizer()
    priority = np.concatenate(batches).tolist() if args.mode == "precached" else method.cache_priority()
    loader = StreamLoader(samples, method.item_loader(), workers=args.workers, cache_mb=args.cache_mb, priority=priority)
    stamps = []
    trainer = Trainer(config, args.out, on_step=lambda epoch, done, total, _: stamps.append((time.perf_counter(), done)))
    if args.mode == "precached":
        list(loader.batches(batches))  # decode everything the timed steps use into the cache
    setup_s = time.perf_counter() - loading
    trainer.run_epoch(method, loader, optimizer, 0, distributed.Context(), max_steps=args.steps)
    loader.close()
    (t0, d0), (t1, d1) = stamps[args.warmup - 1], stamps[-1]
    return {"images_per_s": (d1 - d0) / (t1 - t0), "train_images": len(samples), "setup_s": round(setup_s, 1),
            "cached_mb": round(loader.cache.nbytes / 2**20) if loader.cache else 0}


def measure(args, mode: str, workers: int, cache_mb: float) -> dict:
    """Run one case in a fresh process, sampling the memory of its process tree."""
    command = [sys.executable, __file__, "--case", "--mode", mode, "--workers", str(workers), "--cache-mb", str(cache_mb),
               "--data", str(args.data), "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(args.out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample():
        while proc.poll() is None:
            rss, pss = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"case {mode}/{workers} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {"mode": mode, "workers": workers, "cache_mb": cache_mb, **result, "peak_rss_gb": peak[0] / 2**30, "peak_pss_gb": peak[1] / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/dk_severstal"))
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=24, help="optimiser steps per case (Severstal batch: 10 images)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--cache-mb", type=float, default=None, help="the streaming cases' cache (default: the library's)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dk_severstal_run"))
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args)))
        return

    from defectkit.data.loader import DEFAULT_CACHE_MB

    cache_mb = DEFAULT_CACHE_MB if args.cache_mb is None else args.cache_mb
    started = time.perf_counter()
    generate(args.data, args.images)
    print(f"dataset ready in {time.perf_counter() - started:.0f} s: {args.images} training images at {WIDTH}x{HEIGHT} in {args.data}", flush=True)
    rows = []
    for mode, workers, cache in [("decode", 0, 0), ("decode", 1, 0), ("decode", 2, 0), ("stream", 0, cache_mb), ("stream", 1, cache_mb),
                                 ("stream", 2, cache_mb), ("precached", 0, 100_000)]:
        row = measure(args, mode, workers, cache)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| case | workers | cache MB | images/s | peak RSS, all processes (GB) | peak PSS (GB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = {"decode": "decode only (no training)", "stream": "training, streamed", "precached": "training, everything pre-cached"}[r["mode"]]
        shown = "as needed" if r["mode"] == "precached" else f"{r['cache_mb']:g}"
        print(f"| {name} | {r['workers']} | {shown} | {r['images_per_s']:.2f} | {r['peak_rss_gb']:.2f} | {r['peak_pss_gb']:.2f} |")
    append_result(args.results, {"benchmark": "streaming", **provenance(), "images": args.images, "steps": args.steps, "rows": rows,
                                 "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
