"""Inference in the default (NCHW) and channels-last (NHWC) memory layouts, A/B interleaved.

    python benchmarks/channels_last.py --preset paper --size 1x512x512
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--size", default="1x512x512", help="CxHxW")
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()

    import torch

    from defectkit.models import create_model

    c, h, w = (int(v) for v in args.size.split("x"))
    nchw = create_model("segdec", args.preset, in_channels=c).eval()
    nhwc = create_model("segdec", args.preset, in_channels=c).eval().to(memory_format=torch.channels_last)
    nhwc.load_state_dict(nchw.state_dict())
    x = torch.rand(1, c, h, w)
    runs = {"NCHW": (nchw, x), "channels-last": (nhwc, x.contiguous(memory_format=torch.channels_last))}
    times = {name: [] for name in runs}
    with torch.inference_mode():
        outputs = {name: model(inp)[0] for name, (model, inp) in runs.items()}  # warm-up
        for _ in range(args.repeat):
            for name, (model, inp) in runs.items():
                started = time.perf_counter()
                model(inp)
                times[name].append(time.perf_counter() - started)
    difference = (outputs["NCHW"] - outputs["channels-last"]).abs().max().item()
    print(f"| layout | forward s (median of {args.repeat}) |")
    print("|---|---|")
    for name, t in times.items():
        print(f"| {name} | {sorted(t)[len(t) // 2]:.3f} |")
    print(f"largest logit difference between layouts: {difference:.2g}")


if __name__ == "__main__":
    main()
