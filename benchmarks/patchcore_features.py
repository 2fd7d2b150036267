"""Which backbone stages and scaling PatchCore's patch features should use on KolektorSDD.

Extracts the EfficientNet-Lite0 stage maps of one fold's good training images and test
images once, then for each setting builds the locally aware features (3x3 average, deeper
maps upsampled to the first one's grid, concatenated), a greedy k-center coreset of at most
``--max-patches`` patches (seeded random subset first, as the method does) on a 128-dim
random projection, and scores the test images by their largest patch distance (no eq. 7
re-weighting: the comparison is about the features). Pixel AUROC is computed at a quarter of
the input resolution, after the sigma-4 blur at full resolution. Prints one table.

    python benchmarks/patchcore_features.py --data-root /path/to/KolektorSDD --fold 0 --input-size 256x704
"""

from __future__ import annotations

import argparse
import time

from common import append_result, provenance

SETTINGS = [  # (stages, per-stage scaling, coreset share)
    (("stage3", "stage5"), "none", 0.01),
    (("stage3", "stage5"), "sqrt-channels", 0.01),
    (("stage3", "stage5"), "unit-std", 0.01),
    (("stage3", "stage4"), "none", 0.01),
    (("stage4", "stage5"), "none", 0.01),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--input-size", default="256x704", help="WIDTHxHEIGHT")
    parser.add_argument("--max-patches", type=int, default=200_000)
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    from defectkit.data.imageio import load_mask
    from defectkit.data.partition import read_parts
    from defectkit.data.preprocess import resize
    from defectkit.evaluate import metrics as M
    from defectkit.methods.patchcore import PatchCoreConfig, gaussian_kernel, greedy_coreset, nearest, random_projection
    from defectkit.models.backbone import create_backbone

    width, height = (int(v) for v in args.input_size.split("x"))
    config = PatchCoreConfig(dataset="ksdd", data_root=args.data_root, fold=args.fold, input_size=(width, height))
    parts = read_parts(config)
    train = [s for s in parts["train"] if not s.is_defective]
    test = parts["test"]
    pre = config.preprocessing()
    net = create_backbone("efficientnet_lite0")
    stages = sorted({s for setting in SETTINGS for s in setting[0]})

    def extract(samples):
        out = {s: [] for s in stages}
        for i in range(0, len(samples), 8):
            x = torch.from_numpy(np.stack([pre.image(s) for s in samples[i : i + 8]]))
            with torch.no_grad():
                maps = net.features(net.preprocessing(x), stages)
            for s in stages:
                out[s].append(maps[s])
        return {s: torch.cat(v) for s, v in out.items()}

    started = time.perf_counter()
    train_maps, test_maps = extract(train), extract(test)
    print(f"features of {len(train)} + {len(test)} images in {time.perf_counter() - started:.0f} s")
    labels = np.array([s.is_defective for s in test])
    masks = []
    for s in test:
        m = load_mask(s)
        masks.append(np.zeros((height, width), bool) if m is None else resize(m.astype(np.float32), (width, height)) > 0.5)
    masks = np.stack(masks)[:, ::4, ::4]
    blur = gaussian_kernel(4.0)
    r = blur.numel() // 2

    def embed(maps, names, scale):
        pooled = [F.avg_pool2d(maps[s], 3, 1, 1, count_include_pad=False) for s in names]
        size = pooled[0].shape[-2:]
        pooled = [p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled]
        if scale == "sqrt-channels":
            pooled = [p / p.shape[1] ** 0.5 for p in pooled]
        elif scale == "unit-std":
            pooled = [p / p.std() for p in pooled]
        return torch.cat(pooled, 1)

    rows = []
    for names, scale, share in SETTINGS:
        tr, te = embed(train_maps, names, scale), embed(test_maps, names, scale)
        _, d, h, w = tr.shape
        feats = tr.permute(0, 2, 3, 1).reshape(-1, d)
        if len(feats) > args.max_patches:
            keep = np.sort(np.random.default_rng(0).choice(len(feats), args.max_patches, replace=False))
            feats = feats[torch.from_numpy(keep)]
        started = time.perf_counter()
        chosen, _ = greedy_coreset(feats @ random_projection(d, 128, 0), max(1, round(share * len(feats))), 0)
        seconds = time.perf_counter() - started
        bank = feats[chosen]
        center = bank.mean(0)
        dist, _ = nearest(te.permute(0, 2, 3, 1).reshape(-1, d) - center, bank - center, 4096)
        dist = dist.reshape(len(test), h, w)
        maps = F.interpolate(dist[:, None], size=(height, width), mode="bilinear", align_corners=False)
        maps = F.conv2d(F.pad(maps, (r, r, 0, 0), mode="replicate"), blur.view(1, 1, 1, -1))
        maps = F.conv2d(F.pad(maps, (0, 0, r, r), mode="replicate"), blur.view(1, 1, -1, 1))[:, 0].numpy()
        scores = dist.flatten(1).max(1).values.numpy()
        rows.append({"stages": "+".join(names), "scale": scale, "share": share, "bank": len(chosen), "dim": d, "grid": f"{w}x{h}",
                     "auroc": M.roc_auc(labels, scores), "ap": M.average_precision(labels, scores),
                     "pixel_auroc": M.pixel_auroc(masks, maps[:, ::4, ::4]), "coreset_s": seconds})
        print(rows[-1], flush=True)
    print()
    print("| stages | scaling | bank | dim | grid | image AUROC | AP | pixel AUROC | coreset s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['stages']} | {x['scale']} | {x['bank']} | {x['dim']} | {x['grid']} | {x['auroc']:.4f} | {x['ap']:.4f} | "
              f"{x['pixel_auroc']:.4f} | {x['coreset_s']:.0f} |")
    append_result(args.results, {"benchmark": "patchcore_features", **provenance(), "input_size": args.input_size,
                                 "fold": args.fold, "rows": rows})


if __name__ == "__main__":
    main()
