"""Parameters and forward FLOPs (exact, counted on the meta device) of every SegDecNet preset
at the papers' input sizes. Costs nothing to run.

    python benchmarks/model_cost.py
"""

from __future__ import annotations

SIZES = {"DAGM 1x512x512": (1, 512, 512), "KSDD 1x1408x512": (1, 1408, 512), "KSDD2 3x640x232": (3, 640, 232), "Severstal 1x256x1600": (1, 256, 1600), "KSDD /2 1x704x256": (1, 704, 256)}


def main() -> None:
    from defectkit.models import create_model, list_presets
    from defectkit.models.flops import count_flops

    print("| preset | input | parameters | GFLOP forward |")
    print("|---|---|---|---|")
    for preset in list_presets("segdec"):
        for label, (c, h, w) in SIZES.items():
            model = create_model("segdec", preset, in_channels=c)
            params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"| {preset} | {label} | {params:,} | {count_flops(model, (1, c, h, w)) / 1e9:.1f} |")


if __name__ == "__main__":
    main()
