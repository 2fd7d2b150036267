"""PatchCore variants the method does not offer, measured through the real training command:
flipped copies of the good training images in the memory bank, other backbone stages, another
neighbourhood size. Patches the method in this process only, then runs ``defectkit ARGS``
(docs/benchmarks.md, "PatchCore: what else was tried").

    python benchmarks/patchcore_variants.py [--flips h,v,hv] [--stages stage2,stage3,stage5] [--neighbourhood 5] \
        train --method patchcore --preset fast --dataset ksdd --data-root <KolektorSDD> --split 33_33 --fold 0 --input-size 128x352 --out RUN

A run made this way is scored by the same patched process only (its config does not record
the variant), so train with evaluation on, as above.
"""

from __future__ import annotations

import argparse
import sys

FLIPS = {"h": (-1,), "v": (-2,), "hv": (-1, -2)}


def patch(flips: list[str], stages: list[str] | None, neighbourhood: int) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from defectkit.methods import patchcore as pc
    from defectkit.models.backbone import variant

    if stages:
        strides = {s.name: s.stride for s in variant(pc.BACKBONE).feature_info}  # the same in every variant
        pc.STAGES = tuple(stages)
        pc.STRIDE = strides[stages[0]]  # the patch grid is the shallowest stage's

    prepare = pc.PatchCore.prepare_training

    def prepare_training(self, samples, log):  # room for every flipped copy, within max_patches
        prepare(self, list(samples) * (1 + len(flips)), log)
        self.n_real = len(samples)

    def training_step(self, indices, tensors, epoch):
        if epoch > 0:
            return None, {}
        (x,) = tensors
        if self._store is None:
            self._store = torch.zeros(self.n_images * self.per_image, self.model.dim)
        for copy, flip in enumerate([None, *flips]):
            with torch.no_grad():
                patches, _ = self.model.patch_features(x if flip is None else x.flip(FLIPS[flip]))
            for row, index in enumerate(np.asarray(indices).tolist()):
                index += copy * self.n_real
                keep = torch.from_numpy(self.kept_positions(index)).to(patches.device)
                self._store[index * self.per_image : (index + 1) * self.per_image] = patches[row, keep].float().cpu()
        return None, {}

    def embed(self, x):  # the method's embed with another average-pooling neighbourhood
        pad = self.border(int(x.shape[-2]), int(x.shape[-1]))
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        maps = self.backbone.features(self.backbone.preprocessing(x), pc.STAGES)
        pooled = [F.avg_pool2d(maps[s], neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=False) for s in pc.STAGES]
        size = pooled[0].shape[-2:]
        features = torch.cat([pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]], 1)
        if pad:
            cells = pad // pc.STRIDE
            features = features[:, :, cells : features.shape[2] - cells, cells : features.shape[3] - cells]
        if self.pool is not None:
            features = torch.einsum("nchw,cd->ndhw", features, self.pool)
        return features

    pc.PatchCore.prepare_training = prepare_training
    pc.PatchCore.training_step = training_step
    pc.PatchCoreModel.embed = embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flips", default="", help="comma-separated flipped copies added to the bank: h, v, hv")
    parser.add_argument("--stages", default="", help="comma-separated backbone stages, shallowest first (default: the method's)")
    parser.add_argument("--neighbourhood", type=int, default=3, help="average-pooling neighbourhood p (odd; the method's is 3)")
    args, rest = parser.parse_known_args()
    flips = [f for f in args.flips.split(",") if f]
    unknown = [f for f in flips if f not in FLIPS]
    if unknown or args.neighbourhood % 2 == 0:
        parser.error(f"flips must be among {sorted(FLIPS)} and the neighbourhood odd")
    patch(flips, [s for s in args.stages.split(",") if s] or None, args.neighbourhood)
    from defectkit.cli import main as cli

    sys.argv = ["defectkit", *rest]
    cli()


if __name__ == "__main__":
    main()
