"""Where the two-stage network's time goes, layer by layer, before anything is changed.

Times every leaf module of the forward pass (hooks around each call, ``--repeat`` passes
after a warm-up) and, with torch.profiler, the operators of one training step (forward +
backward), then prints per layer: kernel, channels, output size, exact GFLOP, milliseconds,
achieved GFLOP/s and share of the forward time; and the training step's time by operator.
The fp32 matmul rate measured in the same run is the yardstick.

    python benchmarks/profile_segdec.py --preset paper --size 1x512x512
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from throughput import matmul_ceiling


def conv_gflop(module, out) -> float:
    k = module.kernel_size[0] * module.kernel_size[1]
    return 2 * module.in_channels // module.groups * module.out_channels * k * out.shape[0] * out.shape[2] * out.shape[3] / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--size", default="1x512x512", help="CxHxW")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from defectkit.models import create_model

    c, h, w = (int(v) for v in args.size.split("x"))
    ceiling = matmul_ceiling(2.0)
    model = create_model("segdec", args.preset, in_channels=c).eval()
    x = torch.rand(args.batch, c, h, w)
    seconds: dict[str, float] = defaultdict(float)
    info: dict[str, tuple] = {}
    started: dict[str, float] = {}

    def before(name):
        def hook(module, inputs):
            started[name] = time.perf_counter()
        return hook

    def after(name):
        def hook(module, inputs, out):
            seconds[name] += time.perf_counter() - started[name]
            if name not in info:
                if isinstance(module, torch.nn.Conv2d):
                    gflop = conv_gflop(module, out)
                elif isinstance(module, torch.nn.Linear):
                    gflop = 2 * module.in_features * module.out_features * out.shape[0] / 1e9
                else:
                    gflop = 0.0
                kernel = "x".join(map(str, module.kernel_size)) if isinstance(module, torch.nn.Conv2d) else ""
                size = "x".join(map(str, out.shape[2:])) or "-"
                info[name] = (type(module).__name__, kernel, f"{inputs[0].shape[1]}->{out.shape[1]}", size, gflop)
        return hook

    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_pre_hook(before(n)) for n, m in leaves] + [m.register_forward_hook(after(n)) for n, m in leaves]
    with torch.inference_mode():
        model(x)
        seconds.clear()
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            model(x)
        total = (time.perf_counter() - t0) / args.repeat
    for handle in handles:
        handle.remove()

    print(f"fp32 matmul ceiling {ceiling:.1f} GFLOP/s, {torch.get_num_threads()} threads; {args.preset} at {args.batch}x{args.size}: forward {total * 1e3:.0f} ms")
    print()
    print("| layer | type | kernel | channels | output | GFLOP | ms | GFLOP/s | share of forward |")
    print("|---|---|---|---|---|---|---|---|---|")
    by_type: dict[str, float] = defaultdict(float)
    for name, _ in leaves:
        if name not in info:
            continue
        kind, kernel, channels, size, gflop = info[name]
        ms = seconds[name] / args.repeat * 1e3
        by_type[kind] += ms
        rate = f"{gflop / ms * 1e3:.0f}" if gflop else ""
        print(f"| {name} | {kind} | {kernel} | {channels} | {size} | {gflop:.2f} | {ms:.1f} | {rate} | {ms / (total * 1e3):.1%} |")
    print()
    print("| module type | forward ms | share |")
    print("|---|---|---|")
    for kind, ms in sorted(by_type.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms:.1f} | {ms / (total * 1e3):.1%} |")

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step():
        logit, seg = model(x)
        (logit.sum() + seg.mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print()
    print("Training step, by operator (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
