"""The offline ImageNet backbones side by side: what PatchCore's feature extraction costs with
each (the network up to its stride-16 stage, at a KolektorSDD input size), interleaved so that
machine drift cancels, beside their size and their published ImageNet top-1.

    python benchmarks/backbones.py [--size 352x128] [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

# EfficientNet-Lite's README (tensorflow/tpu, models/official/efficientnet/lite), float models
TOP1 = {"efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="352x128", help="WIDTHxHEIGHT of the input")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    from defectkit.methods.patchcore import STAGES
    from defectkit.models.backbone import BACKBONES, EfficientNetLite, truncated_backbone

    width, height = (int(v) for v in args.size.lower().split("x"))
    x = torch.rand(args.batch, 3, height, width)
    nets = {name: truncated_backbone(EfficientNetLite(name), STAGES) for name in BACKBONES}
    times: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        for net in nets.values():  # warm-up
            net.features(x, STAGES)
        for _ in range(args.rounds):
            for name, net in nets.items():
                started = time.perf_counter()
                net.features(x, STAGES)
                times[name].append(time.perf_counter() - started)
    print(f"{args.size}, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print("| backbone | ImageNet top-1 | parameters to stage5 | stage3 + stage5 channels | ms per image | relative |")
    print("|---|---|---|---|---|---|")
    base = None
    for name, net in nets.items():
        ms = sorted(times[name])[len(times[name]) // 2] * 1e3 / args.batch
        base = base or ms
        info = {s.name: s.channels for s in net.feature_info}
        params = sum(p.numel() for p in net.parameters())
        print(f"| {name} | {TOP1[name]} | {params / 1e6:.2f} M | {info['stage3']} + {info['stage5']} | {ms:.1f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
