"""Save and load trained models: ``<name>.safetensors`` plus ``config.json`` in one folder.

Weights are read with safetensors only, never pickle, so a downloaded model cannot run code.
Files are written to a temporary name and renamed, so an interrupted save never leaves a
half-written file under the real name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from defectkit.errors import ConfigError, DataError
from defectkit.files import atomic_write, load_weights, save_weights

from .registry import model_from_config, model_name_of

__all__ = ["save_pretrained", "from_pretrained", "CONFIG_FILE"]

CONFIG_FILE = "config.json"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(f"model file name must be a plain file name without folders, got {name!r}")
    return name


def save_pretrained(model: nn.Module, directory: str | os.PathLike, name: str = "model") -> Path:
    """Write ``directory/<name>.safetensors`` and ``directory/config.json``; returns the weights path."""
    _check_name(name)
    model_name = model_name_of(model)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ConfigError(f"{type(model).__name__} has no .config to save with its weights")
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create model folder {directory}: {e.strerror or e}") from None

    weights = directory / f"{name}.safetensors"
    meta = json.dumps({"model": model_name, "config": config.to_dict()}, indent=2) + "\n"
    try:
        save_weights(weights, model.state_dict(), metadata={"format": "pt", "model": model_name})
        atomic_write(directory / CONFIG_FILE, meta.encode("utf-8"))
    except OSError as e:
        raise DataError(f"cannot write model to {directory}: {e.strerror or e}") from None
    return weights


def from_pretrained(directory: str | os.PathLike, name: str = "model", *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from ``config.json`` and load ``<name>.safetensors`` into it, strictly."""
    _check_name(name)
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / f"{name}.safetensors"
    if not directory.is_dir():
        raise DataError(f"model folder not found: {directory}")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise DataError(f"model file missing: {path}")

    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {config_path}: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str) or not isinstance(meta.get("config"), dict):
        raise DataError(f"{config_path} must hold {{\"model\": <name>, \"config\": {{...}}}}")
    try:
        model = model_from_config(meta["model"], meta["config"])
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}") from None

    load_weights(model, weights_path, str(config_path))
    return model.to(device).eval()

