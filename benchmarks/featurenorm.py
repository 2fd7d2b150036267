"""FeatureNorm: the textbook form (four passes over the tensor) against defectkit's (two), A/B
interleaved on the paper preset's high-resolution shapes so that machine drift cancels.

    python benchmarks/featurenorm.py
"""

from __future__ import annotations

import time

SHAPES = [(1, 32, 512, 512), (1, 64, 256, 256), (1, 64, 128, 128), (1, 1024, 64, 64)]  # the paper preset at DAGM size


def textbook(x, scale, bias, eps=1e-3):
    import torch

    spread, mean = torch.std_mean(x, dim=(2, 3), correction=1, keepdim=True)
    return (x - mean) / torch.sqrt(spread + eps) * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def main() -> None:
    import torch

    from defectkit.models.layers import FeatureNorm

    print("| shape | textbook fwd+bwd ms | defectkit fwd+bwd ms | saved |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        norm = FeatureNorm(shape[1])
        x = torch.randn(shape, requires_grad=True)
        candidates = {"textbook": lambda: textbook(x, norm.scale, norm.bias), "defectkit": lambda: norm(x)}
        times = {name: [] for name in candidates}
        for _ in range(7):
            for name, fn in candidates.items():
                started = time.perf_counter()
                fn().sum().backward()
                times[name].append(time.perf_counter() - started)
                x.grad = None
        best = {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}  # median
        torch.testing.assert_close(candidates["defectkit"](), candidates["textbook"](), rtol=1e-4, atol=1e-4)
        print(f"| {'x'.join(map(str, shape))} | {best['textbook']:.1f} | {best['defectkit']:.1f} | {1 - best['defectkit'] / best['textbook']:.0%} |")


if __name__ == "__main__":
    main()
