"""Save and load trained models: ``<name>.safetensors`` plus ``config.json`` in one folder.

Weights are read with safetensors only, never pickle, so a downloaded model cannot run code.
Files are written to a temporary name and renamed, so an interrupted save never leaves a
half-written file under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from defectkit.errors import ConfigError, DataError

from .registry import model_from_config, model_name_of

__all__ = ["save_pretrained", "from_pretrained", "CONFIG_FILE"]

CONFIG_FILE = "config.json"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(f"model file name must be a plain file name without folders, got {name!r}")
    return name


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = directory / f"{name}.safetensors"
    meta = json.dumps({"model": model_name, "config": config.to_dict()}, indent=2) + "\n"

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(meta)
            f.flush()
            os.fsync(f.fileno())

    try:
        _atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "model": model_name}))
        _atomic_write(directory / CONFIG_FILE, write_json)
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

    try:
        tensors = load_file(str(weights_path), device="cpu")
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise DataError(f"cannot read weights {weights_path}: {e}") from None

    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {_some(unexpected)}")
        raise DataError(f"weights {weights_path} do not match {config_path}: {'; '.join(parts)}")
    for key, ref in expected.items():
        got = tensors[key]
        if got.shape != ref.shape:
            raise DataError(
                f"weights {weights_path} do not match {config_path}: tensor {key!r} has shape "
                f"{list(got.shape)} in the file but the config needs {list(ref.shape)}"
            )
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()


def _some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
