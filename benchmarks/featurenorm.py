"""FeatureNorm's cost, A/B interleaved so that machine drift cancels.

1. The std form (the paper preset): the textbook formula (four passes over the tensor) against
   defectkit's composite (two), on the paper preset's high-resolution shapes.
2. The variance form (the small and tiny presets): the composite against the fused group-norm
   kernel that FeatureNorm now uses for it, on those presets' shapes.
3. Whole training steps of the small and tiny presets with either kernel: time, and how far
   each one's gradients are from a float64 step (the two are equally far: float rounding).

    python benchmarks/featurenorm.py [--steps 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import time

STD_SHAPES = [(1, 32, 512, 512), (1, 64, 256, 256), (1, 64, 128, 128), (1, 1024, 64, 64)]  # the paper preset at DAGM size
VARIANCE_SHAPES = [(4, 8, 128, 128), (4, 16, 64, 64), (1, 16, 232, 640), (1, 32, 116, 320), (1, 32, 58, 160)]  # tiny (demo), small (KSDD2)
STEPS = [("tiny", 128, 128, 4), ("small", 232, 640, 1), ("small", 256, 704, 1)]  # the demo; KSDD2 and KSDD sizes


def textbook(x, scale, bias, eps=1e-3):
    import torch

    spread, mean = torch.std_mean(x, dim=(2, 3), correction=1, keepdim=True)
    return (x - mean) / torch.sqrt(spread + eps) * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def interleaved(candidates: dict, rounds: int) -> dict[str, float]:
    """Median ms of each candidate's forward + backward, the candidates taking turns."""
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}


def norm_tables(rounds: int) -> None:
    import torch

    from defectkit.models.layers import FeatureNorm

    def backward(y, x):
        y.sum().backward()
        x.grad = None

    print("| std form, shape | textbook fwd+bwd ms | defectkit fwd+bwd ms | saved |")
    print("|---|---|---|---|")
    for shape in STD_SHAPES:
        norm = FeatureNorm(shape[1])
        x = torch.randn(shape, requires_grad=True)
        best = interleaved({"textbook": lambda: backward(textbook(x, norm.scale, norm.bias), x), "defectkit": lambda: backward(norm(x), x)}, rounds)
        torch.testing.assert_close(norm(x), textbook(x, norm.scale, norm.bias), rtol=1e-4, atol=1e-4)
        print(f"| {'x'.join(map(str, shape))} | {best['textbook']:.1f} | {best['defectkit']:.1f} | {1 - best['defectkit'] / best['textbook']:.0%} |")
    print()
    print("| variance form, shape | composite fwd+bwd ms | group norm fwd+bwd ms | speed-up |")
    print("|---|---|---|---|")
    for shape in VARIANCE_SHAPES:
        norm = FeatureNorm(shape[1], use_variance=True)
        x = torch.randn(shape, requires_grad=True)
        best = interleaved({"composite": lambda: backward(norm.composite(x), x), "fused": lambda: backward(norm(x), x)}, rounds)
        torch.testing.assert_close(norm(x), norm.composite(x), rtol=1e-4, atol=1e-4)
        print(f"| {'x'.join(map(str, shape))} | {best['composite']:.2f} | {best['fused']:.2f} | {best['composite'] / best['fused']:.2f}x |")


def step_table(steps: int, rounds: int) -> None:
    import torch
    import torch.nn.functional as F

    from defectkit.models import create_model
    from defectkit.models.layers import FeatureNorm

    fused = FeatureNorm.forward
    kernels = {"composite": lambda self, x: self.composite(x), "fused": fused}
    print()
    print("| preset | input | batch | composite ms/step | group norm ms/step | speed-up | loss difference | gradient error vs float64, composite | group norm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, height, width, batch in STEPS:
        torch.manual_seed(0)
        net = create_model("segdec", preset, in_channels=1, input_size=(height, width))
        x = torch.randn(batch, 1, height, width)
        target = torch.rand(batch, 1, height // 8, width // 8)
        result = {}

        def step(net=net, x=x, target=target):
            logit, seg = net(x)
            loss = F.binary_cross_entropy_with_logits(seg, target) + F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
            net.zero_grad()
            loss.backward()
            return loss.item()

        exact = copy.deepcopy(net).double()
        step(exact, x.double(), target.double())
        reference = [p.grad for p in exact.parameters()]

        times = {name: [] for name in kernels}
        try:
            for _ in range(rounds):
                for name, forward in kernels.items():
                    FeatureNorm.forward = forward
                    loss = step()  # warm-up, and the values compared
                    result[name] = (loss, [p.grad.clone() for p in net.parameters()])
                    started = time.perf_counter()
                    for _ in range(steps):
                        step()
                    times[name].append((time.perf_counter() - started) / steps * 1e3)
        finally:
            FeatureNorm.forward = fused
        best = {name: min(t) for name, t in times.items()}
        error = {name: max(float((g - r).abs().max() / r.abs().max().clamp_min(1e-30)) for g, r in zip(grads, reference))
                 for name, (_, grads) in result.items()}
        print(f"| {preset} | {height}x{width} | {batch} | {best['composite']:.1f} | {best['fused']:.1f} | {best['composite'] / best['fused']:.2f}x "
              f"| {abs(result['composite'][0] - result['fused'][0]):.1e} | {error['composite']:.1e} | {error['fused']:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the best round is kept for steps, the median for norms)")
    args = parser.parse_args()
    norm_tables(max(args.rounds, 7))
    step_table(args.steps, args.rounds)


if __name__ == "__main__":
    main()
