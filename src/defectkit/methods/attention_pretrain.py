"""Pre-training EAR's MNIST attention classifier, and the weights file it is shipped and read as.

EAR (Park et al., arXiv 2310.04010 v1) takes its excision mask from the spatial attention of a
small digit classifier trained on MNIST; training follows METHODS.md section 2: cross-entropy,
Adam with learning rate 1e-4, batches of 32, digits as 1 x 28 x 28 in [0, 1].

A weights file is a pair: ``NAME.safetensors`` (the tensors, never pickle) and ``NAME.json``
beside it (``{"model": "attention", "config": {...}, "training": {...}}``: enough to rebuild
the net, plus how it was trained and its held-out accuracy). defectkit ships one pair,
trained on the 5k-digit MNIST sample, as package data, so EAR works offline;
``defectkit attention pretrain`` makes another from any MNIST copy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError

SHIPPED_ATTENTION = Path(__file__).resolve().parents[1] / "models" / "weights" / "attention_mnist.safetensors"


def config_path_of(weights: str | Path) -> Path:
    """The JSON that describes ``weights``: same folder and stem."""
    return Path(weights).with_suffix(".json")


def save_attention(model, path: str | Path, training: dict | None = None) -> Path:
    """Write ``path`` (safetensors) and its ``.json`` config; returns ``path``."""
    from ..files import atomic_write, save_weights
    from ..models.registry import model_name_of

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: the attention weights file must end in .safetensors")
    name = model_name_of(model)
    save_weights(path, model.state_dict(), {"format": "pt", "model": name})
    meta = {"model": name, "config": model.config.to_dict(), "training": training or {}}
    atomic_write(config_path_of(path), (json.dumps(meta, indent=2) + "\n").encode())
    return path


def read_attention_info(path: str | Path | None = None) -> dict:
    """The JSON beside a weights file (the shipped one by default)."""
    path = Path(path) if path is not None else SHIPPED_ATTENTION
    meta_path = config_path_of(path)
    if not path.is_file():
        raise DataError(f"{path}: attention weights file not found")
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; attention weights need their config JSON beside them (same name, .json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{meta_path}: cannot read it as JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("model") != "attention" or not isinstance(meta.get("config"), dict):
        raise DataError(f"{meta_path}: not an attention model config (needs \"model\": \"attention\" and a \"config\" mapping)")
    return meta


def load_attention(path: str | Path | None = None, device="cpu"):
    """The attention net from ``path`` (default: the shipped MNIST weights), in eval mode."""
    from ..files import load_weights
    from ..models.registry import model_from_config

    path = Path(path) if path is not None else SHIPPED_ATTENTION
    meta = read_attention_info(path)
    try:
        model = model_from_config("attention", meta["config"])
    except ConfigError as exc:
        raise DataError(f"{config_path_of(path)}: {exc}") from None
    load_weights(model, path, str(config_path_of(path)))
    return model.to(device).eval()


def holdout_split(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a seeded random ``holdout`` of ``n`` digits."""
    if not 0 < holdout < n:
        raise ConfigError(f"holdout must be between 1 and {n - 1} digits (the file holds {n}), got {holdout}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[holdout:]), np.sort(order[:holdout])


def _tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def accuracy(model, images: np.ndarray, labels: np.ndarray, device="cpu", batch_size: int = 256) -> float:
    """Share of digits whose arg-max class is the label."""
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits, _ = model(_tensor(images[start : start + batch_size]).to(device))
            correct += int((logits.argmax(1).cpu().numpy() == labels[start : start + batch_size]).sum())
    return correct / max(len(images), 1)


def init_for_pretraining(model, positions: int) -> None:
    """He-normal weights and zero biases; the three layers after the attention start larger.

    The softmax attention scales the features by about ``1 / positions`` (1/49 on 28 x 28
    digits). From PyTorch's default init (which also shrinks a ReLU signal at every conv) the
    head then sees almost nothing, every logit starts equal, and at the paper's learning rate
    1e-4 the net needed 12 epochs of 4,000 digits to reach 74% test accuracy. Scaling the head
    conv and both fully connected layers by ``positions ** (1/3)`` each cancels that factor at
    the start; training is otherwise the paper's.
    """
    from torch import nn

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    gain = positions ** (1 / 3)
    for layer in (model.head[0], model.classifier[0], model.classifier[2]):
        layer.weight.data.mul_(gain)


def pretrain(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 12,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    on_epoch: Callable[[int, float, float], None] | None = None,
):
    """Train the paper preset on uint8 digits ``N x 28 x 28`` (initialised by
    :func:`init_for_pretraining`); ``on_epoch(epoch, mean loss, seconds)``."""
    import torch
    import torch.nn.functional as F

    from ..models import create_model

    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise ConfigError("epochs and batch size must be at least 1 and the learning rate positive")
    if images.ndim != 3 or len(images) != len(labels) or not len(images):
        raise DataError(f"expected N x H x W digits with one label each, got {images.shape} and {len(labels)} labels")
    torch.manual_seed(seed)
    model = create_model("attention", "paper")
    stride = model.output_stride
    init_for_pretraining(model, -(-images.shape[1] // stride) * -(-images.shape[2] // stride))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    x_all, y_all = _tensor(images), torch.from_numpy(labels.astype(np.int64))
    for epoch in range(epochs):
        started = time.perf_counter()
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(images)))
        model.train()
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits, _ = model(x_all[idx].to(device))
            loss = F.cross_entropy(logits, y_all[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        if on_epoch:
            on_epoch(epoch, total / len(order), time.perf_counter() - started)
    return model.eval()
