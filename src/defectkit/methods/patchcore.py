"""PatchCore (Roth et al., CVPR 2022): nearest-neighbour distance to a memory bank of pretrained
patch features; good images only, no gradient step (METHODS.md section 5).

* **Features.** An offline ImageNet EfficientNet-Lite (``models/backbone.py``; ``backbone``
  Lite1 by default, Lite0 or Lite2), its two middle stages (``stage3``, stride 8, 40 channels;
  ``stage5``, stride 16, 112 channels; Lite2: 48 and 120: WideResNet's layer2/layer3 in the
  paper). Each map is averaged over its 3x3 neighbourhood (stride 1, padding 1; border
  positions average their in-image neighbours only), the deeper one is upsampled (bilinear)
  to the shallower one's size, the two are concatenated and reduced per
  position to ``feature_dim`` channels by adaptive average pooling over channels (a fixed
  matrix, so the ONNX graph is one matmul). Default ``feature_dim`` 0 keeps the 152
  concatenated channels: the paper's 1024 is a reduction of WideResNet's 1536, and pooling 152
  channels up to 1024 would only repeat them. Gray images are repeated to 3 channels.
* **Memory bank.** One pass over the good training images (epoch 0) collects their patch
  features; the bank kept is a greedy k-center coreset (``coreset_share`` of them: 10% in the
  "paper" preset, 1% in "fast") chosen on a seeded Gaussian random projection to
  ``projection_dim`` (128) dimensions. The first centre is a seeded random patch; each next
  one is the patch farthest from the centres so far (exact distances, no approximation).
  **Bound:** at most ``max_patches`` patches are collected (each image keeps the same number
  of seeded random positions when all would exceed it), so training holds at most
  ``max_patches x (feature_dim + projection_dim) x 4`` bytes however many images there are
  (200,000 patches, 152 + 128 dims: 224 MB), and the coreset costs ``max_patches x bank``
  distance updates.
* **Borders.** The backbone's zero padding makes the features of the image's outer cells unlike
  any inside it, and a good training set holds too few of them: at KolektorSDD's sizes 97-100%
  of good test images had their largest patch distance within one cell of the border. The
  paper crops the border off (resize 256, centre crop 224); we inspect it, and mirror
  ``border_pad`` (48) pixels around the input before the backbone instead, then keep the
  image's own cells (mean image AUROC 0.838 -> 0.902 on KSDD at 128x352,
  docs/benchmarks.md). ``border_pad`` 0 is the paper's zero padding.
* **Scoring.** Each test patch's distance to its nearest bank entry (exact, in chunks of
  ``nn_chunk`` bank entries and queries, as ``|q|^2 - 2 q.m + |m|^2`` on features centred on
  the bank's mean so float32 keeps its digits; ONNX gets the same plain ops) is the anomaly
  map: upsampled to the input size (bilinear) and blurred by a Gaussian of ``blur_sigma`` (4)
  input pixels (kernel ``2 * int(4 sigma + 0.5) + 1``, replicate padding). The image score is
  the largest patch distance ``s*`` re-weighted by eq. 7, ``s = (1 - exp|q* - m*| / sum_{m in
  N_b(m*)} exp|q* - m|) s*`` with ``N_b(m*)`` the ``neighbours`` (b = 9) bank entries nearest
  to m*, m* itself among them (as in anomalib). Each bank entry's b neighbours are found once,
  at the end of training, and saved with the bank.
* **Run folder.** model.safetensors holds the truncated backbone (stem to stage5, 0.7 M
  weights), the bank and its neighbour table, so a run needs no file outside it; the bank's
  size is fixed from the training split before training (``bank_size`` in the model config).
* **Threshold.** As EAR and RIAD: best F1 on a validation split with defects, else the
  ``threshold_quantile`` of the held-out good training images' scores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Float, Int, Size, option
from ..errors import ConfigError
from ..models.config import ModelConfig
from ..models.registry import register_model
from .base import Method, MethodConfig
from .unsupervised import HeldOutCalibration

STAGES = ("stage3", "stage5")  # the backbone's MIDDLE_STAGES: strides 8 and 16
STRIDE = 8  # of the patch grid (the shallower stage)
# the model-config fields the method's options may set (None there: the preset's)
MODEL_KNOBS = ("feature_dim", "coreset_share", "projection_dim", "max_patches", "neighbours", "blur_sigma", "border_pad")
BORDER_PAD = 48  # the presets' reflect padding, input pixels (KolektorSDD, docs/benchmarks.md)
# new runs' backbone: Lite1 beat Lite0 on every KolektorSDD fold and Lite2 on average (docs/benchmarks.md)
BACKBONE = "efficientnet_lite1"


# --------------------------------------------------------------------------- the model


class PatchCoreModelConfig(ModelConfig):
    """The feature extractor, the bank's size and the scoring constants; training knobs too, so a
    preset names a whole setting."""

    label: ClassVar[str] = "patchcore config"

    in_channels: Int = 1
    backbone: str = "efficientnet_lite0"  # what runs made before the choice used; new runs get BACKBONE
    feature_dim: Int = 0  # 0: the concatenated stage channels (152; Lite2 168)
    coreset_share: Float = 0.1
    projection_dim: Int = 128  # 0: the coreset on the features themselves
    max_patches: Int = 200_000
    neighbours: Int = 9
    blur_sigma: Float = 4.0
    border_pad: Int = 0  # 0 in runs made before it existed; the presets set BORDER_PAD
    bank_size: Int = 1  # set from the training split before training

    def check(self) -> None:
        if self.in_channels not in (1, 3):
            raise ConfigError(f"{self.label}: in_channels must be 1 or 3, got {self.in_channels}")
        if self.feature_dim < 0 or self.projection_dim < 0:
            raise ConfigError(f"{self.label}: feature_dim and projection_dim must be 0 or more")
        if not 0 < self.coreset_share <= 1:
            raise ConfigError(f"{self.label}: coreset_share must lie in (0, 1], got {self.coreset_share}")
        if self.max_patches < 1 or self.neighbours < 1 or self.bank_size < 1:
            raise ConfigError(f"{self.label}: max_patches, neighbours and bank_size must be at least 1")
        if self.blur_sigma < 0:
            raise ConfigError(f"{self.label}: blur_sigma must be 0 (no blur) or more, got {self.blur_sigma}")
        if self.border_pad < 0 or self.border_pad % 16:
            raise ConfigError(f"{self.label}: border_pad must be 0 or a multiple of 16 (the deeper stage's stride), got {self.border_pad}")

    def example_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, 64, 64)


def stage_channels(backbone: str) -> list[int]:
    from ..models.backbone import variant

    info = {s.name: s.channels for s in variant(backbone).feature_info}
    return [info[s] for s in STAGES]


def channel_pool_matrix(channels: int, dim: int) -> torch.Tensor:
    """``channels x dim``: x @ it is ``F.adaptive_avg_pool1d`` over channels (same bins)."""
    matrix = torch.zeros(channels, dim)
    for j in range(dim):
        start, end = (j * channels) // dim, -((-(j + 1) * channels) // dim)
        matrix[start:end, j] = 1.0 / (end - start)
    return matrix


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``2 * int(4 sigma + 0.5) + 1`` taps (anomalib's size)."""
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def squared_distances(q: torch.Tensor, m: torch.Tensor, q2: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """``|q|^2 - 2 q.m + |m|^2`` (queries x bank), clamped at 0: plain ops that export to ONNX."""
    return (q2[:, None] - 2.0 * (q @ m.T) + m2[None, :]).clamp_min(0.0)


def nearest(queries: torch.Tensor, bank: torch.Tensor, chunk: int, chunk_queries: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each query's nearest bank row, exactly, ``chunk`` bank rows (and
    queries, unless tracing a graph whose batch size is not fixed) at a time."""
    q2, m2 = (queries * queries).sum(1), (bank * bank).sum(1)
    step = chunk if chunk_queries else max(1, queries.shape[0])
    dists, indices = [], []
    for i in range(0, queries.shape[0], step) if chunk_queries else [0]:
        q, qq = (queries[i : i + step], q2[i : i + step]) if chunk_queries else (queries, q2)
        best = best_index = None
        for j in range(0, bank.shape[0], chunk):
            d, k = squared_distances(q, bank[j : j + chunk], qq, m2[j : j + chunk]).min(1)
            if best is None:
                best, best_index = d, k
            else:
                closer = d < best
                best, best_index = torch.where(closer, d, best), torch.where(closer, k + j, best_index)
        dists.append(best)
        indices.append(best_index)
    return torch.cat(dists).sqrt(), torch.cat(indices)


def reweighted_score(s_star: torch.Tensor, neighbour_distances: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``(1 - softmax(distances to N_b(m*))[m*]) * s*``; column 0 is m* itself."""
    return (1.0 - torch.softmax(neighbour_distances, dim=1)[:, 0]) * s_star


class PatchCoreModel(nn.Module):
    """Frozen backbone, the memory bank (centred on ``center``) and each entry's neighbours:
    ``forward(x) -> (image scores N, anomaly maps N x 1 x H x W)``."""

    def __init__(self, config: PatchCoreModelConfig):
        super().__init__()
        from ..models.backbone import EfficientNetLite, truncated_backbone

        self.config = config
        channels = stage_channels(config.backbone)
        self.backbone = truncated_backbone(EfficientNetLite(config.backbone), STAGES)
        self.dim = config.feature_dim or sum(channels)
        pool = None if self.dim == sum(channels) else channel_pool_matrix(sum(channels), self.dim)
        self.register_buffer("pool", pool, persistent=False)
        self.register_buffer("blur", gaussian_kernel(config.blur_sigma) if config.blur_sigma > 0 else None, persistent=False)
        self._bank_buffers(config.bank_size)
        self.chunk = 4096  # bank rows (and queries) per nearest-neighbour step: memory, not results

    def _bank_buffers(self, size: int) -> None:
        self.register_buffer("bank", torch.zeros(size, self.dim))
        self.register_buffer("center", torch.zeros(self.dim))
        self.register_buffer("neighbours", torch.zeros(size, min(self.config.neighbours, size), dtype=torch.long))

    def resize_bank(self, size: int) -> None:
        """Make room for a bank of ``size`` entries (before training; the config records it)."""
        device = self.center.device
        self.config = self.config.replace(bank_size=size)
        self._bank_buffers(size)
        self.to(device)

    def train(self, mode: bool = True):
        """Always eval: the backbone's BatchNorm keeps its ImageNet statistics."""
        return super().train(False)

    def border(self, height: int, width: int) -> int:
        """Reflect padding for an input of this size: ``border_pad``, less when the image is too
        small to mirror that much (a multiple of 16, so both stages' grids stay aligned)."""
        return min(self.config.border_pad, (min(height, width) - 1) // 16 * 16)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``N x dim x h x w`` patch features of images ``x`` in [0, 1] (h, w: input / 8, rounded up)."""
        pad = self.border(int(x.shape[-2]), int(x.shape[-1]))
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        maps = self.backbone.features(self.backbone.preprocessing(x), STAGES)
        pooled = [F.avg_pool2d(maps[s], 3, stride=1, padding=1, count_include_pad=False) for s in STAGES]
        size = pooled[0].shape[-2:]
        pooled = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
        features = torch.cat(pooled, 1)
        if pad:  # back to the image's own positions
            cells = pad // STRIDE
            features = features[:, :, cells : features.shape[2] - cells, cells : features.shape[3] - cells]
        if self.pool is not None:
            features = torch.einsum("nchw,cd->ndhw", features, self.pool)
        return features

    def patch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(``N x positions x dim`` in raster order, grid size)."""
        features = self.embed(x)
        return features.flatten(2).transpose(1, 2), tuple(features.shape[-2:])

    def set_bank(self, features: torch.Tensor, chunk: int) -> None:
        """Store the coreset ``features`` (centred) and each entry's ``neighbours`` nearest entries."""
        center = features.mean(0)
        bank = (features - center).to(self.bank)
        b = self.neighbours.shape[1]
        table = torch.empty(len(bank), b, dtype=torch.long, device=bank.device)
        m2 = (bank * bank).sum(1)
        for i in range(0, len(bank), chunk):
            block = torch.cat([squared_distances(bank[i : i + chunk], bank[j : j + chunk], m2[i : i + chunk], m2[j : j + chunk])
                               for j in range(0, len(bank), chunk)], 1)
            block[torch.arange(len(block), device=bank.device), torch.arange(i, i + len(block), device=bank.device)] = -1.0  # itself first
            table[i : i + chunk] = block.topk(b, dim=1, largest=False).indices
        self.bank.copy_(bank)
        self.center.copy_(center.to(self.center))
        self.neighbours.copy_(table)

    def score_features(self, patches: torch.Tensor, grid: tuple[int, int], out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        p, d = patches.shape[1:]  # fixed by the input size; the batch is not (ONNX: -1)
        queries = patches.reshape(-1, d) - self.center
        dist, index = nearest(queries, self.bank, self.chunk, chunk_queries=not torch.jit.is_tracing())
        dist, index = dist.reshape(-1, p), index.reshape(-1, p)
        s_star, where = dist.max(1)
        q_star = queries.reshape(-1, p, d).gather(1, where[:, None, None].expand(-1, 1, d))[:, 0]  # N x dim
        m_star = index.gather(1, where[:, None])[:, 0]
        support = self.bank[self.neighbours[m_star]]  # N x b x dim
        neighbour_distances = ((q_star[:, None, :] - support) ** 2).sum(-1).clamp_min(0.0).sqrt()
        raw = reweighted_score(s_star, neighbour_distances)
        maps = F.interpolate(dist.reshape(-1, 1, *grid), size=out_size, mode="bilinear", align_corners=False)
        return raw, self.smooth(maps)

    def smooth(self, maps: torch.Tensor) -> torch.Tensor:
        """The separable Gaussian blur (replicate padding: any map size)."""
        if self.blur is None:
            return maps
        r = self.blur.numel() // 2
        maps = F.conv2d(F.pad(maps, (r, r, 0, 0), mode="replicate"), self.blur.view(1, 1, 1, -1))
        return F.conv2d(F.pad(maps, (0, 0, r, r), mode="replicate"), self.blur.view(1, 1, -1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, grid = self.patch_features(x)
        return self.score_features(patches, grid, tuple(x.shape[-2:]))


PRESETS: dict[str, PatchCoreModelConfig] = {
    # 10% coreset, b = 9, sigma 4 (the paper's settings on our backbone), with the border mirrored
    "paper": PatchCoreModelConfig(border_pad=BORDER_PAD),
    # 1% coreset (the paper's other setting: about 10x less coreset time and scoring cost)
    "fast": PatchCoreModelConfig(coreset_share=0.01, border_pad=BORDER_PAD),
}
register_model("patchcore", PatchCoreModelConfig, PatchCoreModel, PRESETS, default_preset="paper")


# --------------------------------------------------------------------------- selection


def greedy_coreset(points: torch.Tensor, count: int, start: int) -> tuple[torch.Tensor, float]:
    """(indices of ``count`` rows chosen by greedy k-center from row ``start``, the coverage
    radius: the largest distance of any row to its nearest chosen one). Exact: every step
    updates each row's squared distance to the chosen set by the newest centre."""
    squares = (points * points).sum(1)
    nearest_chosen = torch.full_like(squares, float("inf"))
    chosen = torch.empty(count, dtype=torch.long, device=points.device)
    index = torch.tensor(start, device=points.device)
    from .. import progress

    for i in progress.track(range(count), f"PatchCore coreset: choosing {count} of {len(points)} patches", total=count):
        chosen[i] = index
        centre = points[index]
        d = (squares - 2.0 * (points @ centre) + squares[index]).clamp_min(0.0)
        nearest_chosen = torch.minimum(nearest_chosen, d)
        nearest_chosen[index] = 0.0  # rounding must not leave a centre looking uncovered
        index = nearest_chosen.argmax()
    return chosen, float(nearest_chosen.max().sqrt())


def random_projection(dim: int, out: int, seed: int) -> torch.Tensor:
    """A seeded Gaussian ``dim x out`` matrix (Johnson-Lindenstrauss: distances kept roughly)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(dim, out, generator=generator) / math.sqrt(out)


# --------------------------------------------------------------------------- the method


class PatchCoreConfig(MethodConfig):
    method: Literal["patchcore"] = option("patchcore", "The method.", cli=False)
    input_size: Size = option((256, 256), "Network input size, WIDTHxHEIGHT, both multiples of 8.", metavar="WxH")
    preset: str = option("paper", "PatchCore preset: paper (10% coreset) or fast (1%).")
    epochs: Int = option(1, "Passes (one collects the memory bank; more change nothing).", resumable=True)
    batch_size: Int = option(8, "Images per feature-extraction step.")
    learning_rate: Float = option(1.0, "Unused: PatchCore takes no gradient step.", cli=False)
    eval_batch_size: Int = option(8, "Images scored at once in validation and evaluation.", resumable=True)
    backbone: str = option(BACKBONE, "ImageNet backbone: efficientnet_lite0, efficientnet_lite1 or efficientnet_lite2.")
    backbone_weights: str | None = option(None, "Backbone weights, a .safetensors file (default: the packaged ImageNet ones).")
    coreset_share: Float | None = option(None, "Share of the collected patch features kept in the memory bank (default: the preset's, 0.1 or 0.01).")
    projection_dim: Int | None = option(None, "Random-projection size the coreset is chosen in (0: none; default 128).")
    feature_dim: Int | None = option(None, "Patch feature size after channel pooling (0: the two stages' channels, 152, Lite2 168; default 0).")
    max_patches: Int | None = option(None, "Most patch features collected before the coreset, bounding memory (default 200000).")
    neighbours: Int | None = option(None, "Bank neighbours b of the image-score re-weighting, eq. 7 (default 9; 1: no re-weighting).")
    blur_sigma: Float | None = option(None, "Gaussian blur of the anomaly map, in input pixels (default 4).")
    border_pad: Int | None = option(None, f"Reflect padding of the input before the backbone, pixels, a multiple of 16 (0: none, the paper's; default {BORDER_PAD}).")
    nn_chunk: Int = option(4096, "Bank entries and queries per nearest-neighbour step (memory only).", resumable=True)
    threshold_quantile: Float = option(0.99, "Decision threshold = this quantile of good images' scores when no validation split has defects.")
    holdout: Float = option(0.1, "Share of good training images held out to set that threshold (0: use the training images).")

    def check(self) -> None:
        super().check()
        if self.nn_chunk < 1:
            raise ValueError(f"nn_chunk must be at least 1, got {self.nn_chunk}")
        if not 0 < self.threshold_quantile <= 1:
            raise ValueError(f"threshold_quantile must lie in (0, 1], got {self.threshold_quantile}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be a share in [0, 1), got {self.holdout}")
        if self.backbone_weights is not None and not self.backbone_weights.lower().endswith(".safetensors"):
            raise ValueError(f"backbone_weights must be a .safetensors file, got {self.backbone_weights!r}")
        from ..models.backbone import BACKBONES

        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose from {', '.join(BACKBONES)}")


class PatchCore(HeldOutCalibration, Method):
    name = "patchcore"
    summary = "PatchCore: nearest-neighbour distance to a coreset of pretrained patch features, good images only (Roth et al.)"
    Config = PatchCoreConfig
    model_name = "patchcore"
    score_text = "anomaly score (the largest patch distance to the memory bank, re-weighted by eq. 7)"
    heatmap_text = "anomaly map (each patch's distance to its nearest memory-bank feature, blurred)"
    log_fields: ClassVar[tuple[str, ...]] = ("patches", "bank_size", "coverage_radius")

    def __init__(self, config: PatchCoreConfig, device: str | None = None, training: bool = False):
        super().__init__(config, device, training)
        self._store = None  # the collected patch features of epoch 0 (host memory)
        self._logged: dict[str, float] = {}

    def build_model(self):
        from ..models import create_model
        from ..models.backbone import create_backbone, truncated_backbone

        c = self.config
        knobs = {k: getattr(c, k) for k in MODEL_KNOBS if getattr(c, k) is not None}
        model = create_model("patchcore", c.preset, in_channels=c.channels, backbone=c.backbone, **{**c.model_overrides, **knobs})
        pretrained = truncated_backbone(create_backbone(c.backbone, c.backbone_weights), STAGES)
        model.backbone.load_state_dict(pretrained.state_dict(), strict=True)
        return model

    def setup(self, run_dir: Path, saved: dict | None) -> dict:
        self.model.chunk = self.config.nn_chunk
        if saved is not None:
            return {}
        from ..models.backbone import variant

        source = self.config.backbone_weights or f"{variant(self.config.backbone).source} (ImageNet)"
        return {"backbone": {"name": self.config.backbone, "stages": list(STAGES), "weights": str(source),
                             "stored_in": "model.safetensors (backbone.*)"}}

    def train(self, mode: bool = True) -> None:
        self.model.eval()  # nothing trains: the backbone stays in inference mode

    # ------------------------------------------------------------------ training

    def grid(self) -> tuple[int, int]:
        """(h, w) of the patch grid at the input size (the backbone's SAME padding rounds up)."""
        width, height = self.config.input_size
        return -(-height // STRIDE), -(-width // STRIDE)

    def prepare_training(self, samples, log) -> None:
        """Fix how many patches each image gives and the bank's size before the run is written."""
        cfg = self.model.config
        h, w = self.grid()
        self.positions = h * w
        self.per_image = min(self.positions, max(1, cfg.max_patches // max(1, len(samples))))
        self.n_images = len(samples)
        total = self.per_image * self.n_images
        size = max(1, min(total, round(cfg.coreset_share * total)))
        if size != cfg.bank_size:
            self.model.resize_bank(size)
        if self.per_image < self.positions:
            log(f"collecting {self.per_image} of {self.positions} patch positions per image ({total:,} patches, max_patches {cfg.max_patches:,})")

    def kept_positions(self, index: int) -> np.ndarray:
        """The patch positions image ``index`` contributes: all, or a seeded random subset."""
        if self.per_image >= self.positions:
            return np.arange(self.positions)
        rng = np.random.default_rng([self.config.seed, 2, int(index)])
        return np.sort(rng.choice(self.positions, self.per_image, replace=False))

    def training_step(self, indices, tensors, epoch):
        if epoch > 0:  # the bank is complete after epoch 0
            return None, {}
        (x,) = tensors
        if self._store is None:
            self._store = torch.zeros(self.n_images * self.per_image, self.model.dim)
        with torch.no_grad():
            patches, _ = self.model.patch_features(x)
        for row, index in enumerate(np.asarray(indices).tolist()):
            keep = torch.from_numpy(self.kept_positions(index)).to(patches.device)
            self._store[index * self.per_image : (index + 1) * self.per_image] = patches[row, keep].float().cpu()
        return None, {}

    def end_epoch(self, epoch: int) -> None:
        """After epoch 0: the coreset of the collected features becomes the bank."""
        if epoch > 0 or self._store is None:
            self._logged = {}
            return
        cfg = self.model.config
        features = self._store.to(self.device)
        self._store = None
        points = features
        if 0 < cfg.projection_dim < features.shape[1]:
            points = features @ random_projection(features.shape[1], cfg.projection_dim, self.config.seed).to(features)
        start = int(np.random.default_rng([self.config.seed, 3]).integers(len(points)))
        chosen, radius = greedy_coreset(points, cfg.bank_size, start)
        del points
        self.model.set_bank(features[chosen], self.config.nn_chunk)
        self._logged = {"patches": float(len(features)), "bank_size": float(cfg.bank_size), "coverage_radius": radius}

    def epoch_log(self, totals, n):
        return dict(self._logged)

    # ------------------------------------------------------------------ scoring

    def forward(self, x):
        return self.model(x)
