"""Throughput of the two-stage network against the machine's own ceiling, measured in one run.

First the ceiling: the best fp32 matrix-multiply rate of a few square sizes (GFLOP/s). Then
for each preset and input size, each in a fresh subprocess (so its peak memory is its own):
exact forward FLOPs, inference images/s at batch 1 and at the best of ``--batches``,
training images/s (forward, backward and SGD step at ``--train-batch``), the peak resident
memory, and the share of the ceiling reached. Training work is counted as 3x the forward
FLOPs (the backward pass computes input and weight gradients, each about one forward).

    python benchmarks/throughput.py --presets paper,small --sizes dagm,ksdd2
    python benchmarks/throughput.py --device cuda --batches 1,8,32 --train-batch 8

On a GPU the models run as training and scoring run them there (``methods/accel.py``: bf16
autocast where supported, channels-last), the ceiling adds the bf16 matmul rate and the device
memory bandwidth, shares are taken against the ceiling of the precision used, and peak memory
is the GPU's (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import append_result, provenance

SIZES = {"tiny": (1, 128, 64), "dagm": (1, 512, 512), "ksdd": (1, 1408, 512), "ksdd2": (3, 640, 232), "ksdd-half": (1, 704, 256), "severstal": (1, 256, 1600)}


def timed(fn, min_seconds: float, min_runs: int = 2) -> float:
    """Seconds per call: one warm-up call, then at least ``min_runs`` calls and ``min_seconds``."""
    fn()
    runs, started = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - started < min_seconds:
        fn()
        runs += 1
    return (time.perf_counter() - started) / runs


def synced(fn, device):
    """``fn`` that returns only when the device has finished its work (CUDA runs asynchronously)."""
    import torch

    if device.type != "cuda":
        return fn

    def call():
        fn()
        torch.cuda.synchronize(device)

    return call


def matmul_ceiling(min_seconds: float, device=None, dtype=None) -> float:
    """Best GFLOP/s of square matrix multiplies (fp32 unless ``dtype``; TF32 is off for fp32)."""
    import torch

    device = device or torch.device("cpu")
    dtype = dtype or torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    best = 0.0
    for n in (1024, 2048, 4096) + ((8192,) if device.type == "cuda" else ()):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = max(best, 2 * n**3 / timed(synced(lambda: torch.mm(a, b), device), min_seconds) / 1e9)
    return best


def memory_bandwidth(min_seconds: float, device) -> float:
    """GB/s of a device-to-device copy of 1 GiB (each byte read once and written once)."""
    import torch

    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / timed(synced(lambda: dst.copy_(src), device), min_seconds) / 1e9


def one(preset: str, size: str, batches: list[int], train_batch: int, min_seconds: float, device_name: str = "cpu", precision: str = "auto") -> dict:
    import resource

    import numpy as np
    import torch

    from defectkit.methods import accel
    from defectkit.models import create_model
    from defectkit.models.flops import count_flops

    acc = accel.resolve(device_name, precision)
    if acc.cuda:
        torch.cuda.reset_peak_memory_stats(acc.device)
    c, h, w = SIZES[size]
    model = create_model("segdec", preset, in_channels=c)
    flops = count_flops(model, (1, c, h, w))
    model = acc.prepare(model).eval()
    infer = {}
    with torch.inference_mode():
        for b in batches:
            x = acc.tensor(np.random.rand(b, c, h, w).astype(np.float32))

            def forward():
                with acc.autocast():
                    model(x)

            infer[b] = b / timed(synced(forward, acc.device), min_seconds)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    x, y = acc.tensor(np.random.rand(train_batch, c, h, w).astype(np.float32)), acc.tensor(np.ones(train_batch, np.float32))

    def step():
        with acc.autocast():
            logit, seg = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit.float(), y) + seg.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train = train_batch / timed(synced(step, acc.device), min_seconds)
    best_batch = max(infer, key=infer.get)
    peak = torch.cuda.max_memory_allocated(acc.device) / 2**20 if acc.cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "preset": preset, "size": size, "input": f"{c}x{h}x{w}", "gflop": flops / 1e9, "infer_b1": infer.get(1), "infer_best": infer[best_batch],
        "best_batch": best_batch, "train": train, "train_batch": train_batch, "peak_mib": peak, "precision": acc.precision, "device": device_name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="paper,small,tiny")
    parser.add_argument("--sizes", default="dagm,ksdd2,ksdd", help=", ".join(SIZES))
    parser.add_argument("--batches", default="1,2,4,8", help="inference batch sizes to try")
    parser.add_argument("--train-batch", type=int, default=1, help="the papers train at batch 1 (KSDD, DAGM)")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="time each measurement at least this long")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on GPUs that have it), fp32 or bf16")
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.one:
        print(json.dumps(one(*args.one, batches, args.train_batch, args.min_seconds, args.device, args.precision)))
        return

    import torch

    from defectkit.methods import accel

    acc = accel.resolve(args.device, args.precision)
    ceilings = {"fp32": matmul_ceiling(args.min_seconds, acc.device)}
    print(f"fp32 matmul ceiling: {ceilings['fp32']:.1f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    extra = {}
    if acc.cuda:
        ceilings["bf16"] = matmul_ceiling(args.min_seconds, acc.device, torch.bfloat16)
        extra = {"gpu": torch.cuda.get_device_name(acc.device), "bf16_gflops": ceilings["bf16"], "memory_gbps": memory_bandwidth(args.min_seconds, acc.device)}
        print(f"{extra['gpu']}: bf16 matmul {ceilings['bf16']:.0f} GFLOP/s, memory copy {extra['memory_gbps']:.0f} GB/s; models run in {acc.precision}", flush=True)
    rows = []
    for preset in args.presets.split(","):
        for size in args.sizes.split(","):
            command = [sys.executable, __file__, "--one", preset, size, "--batches", args.batches, "--train-batch", str(args.train_batch),
                       "--min-seconds", str(args.min_seconds), "--device", args.device, "--precision", args.precision]
            row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            ceiling = ceilings[row["precision"]]
            row["infer_share"] = row["gflop"] * row["infer_best"] / ceiling
            row["train_share"] = 3 * row["gflop"] * row["train"] / ceiling
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"| preset | input | GFLOP fwd | infer img/s b1 | infer img/s best (batch) | share of ceiling | train img/s (batch {args.train_batch}) | share of ceiling | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b1 = "" if r["infer_b1"] is None else f"{r['infer_b1']:.2f}"
        print(f"| {r['preset']} | {r['size']} {r['input']} | {r['gflop']:.1f} | {b1} | {r['infer_best']:.2f} ({r['best_batch']}) | "
              f"{r['infer_share']:.0%} | {r['train']:.2f} | {r['train_share']:.0%} | {r['peak_mib']:.0f} |")
    append_result(args.results, {"benchmark": "throughput", **provenance(), "device": args.device, "matmul_gflops": ceilings["fp32"], **extra, "rows": rows})


if __name__ == "__main__":
    main()
