"""Model registry: build any network by name and preset, timm-style.

A model registers its config class, module class and named presets once; the methods then
need only the name, and :func:`model_from_config` rebuilds a model from a run folder's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from defectkit.errors import ConfigError

from .config import ModelConfig

__all__ = [
    "register_model",
    "create_model",
    "model_config",
    "list_models",
    "list_presets",
    "model_name_of",
]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    config_cls: type[ModelConfig]
    model_cls: type[nn.Module]
    presets: Mapping[str, ModelConfig]
    default_preset: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    config_cls: type[ModelConfig],
    model_cls: type[nn.Module] | None = None,
    presets: Mapping[str, ModelConfig] | None = None,
    *,
    default_preset: str | None = None,
):
    """Register ``model_cls(config)`` under ``name``; without ``model_cls``, a class decorator.

    ``default_preset`` is what :func:`create_model` builds when no preset is named: "paper"
    when there is one, else the first preset.
    """
    if model_cls is None:

        def decorator(cls: type[nn.Module]) -> type[nn.Module]:
            register_model(name, config_cls, cls, presets, default_preset=default_preset)
            return cls

        return decorator

    presets = dict(presets or {"default": config_cls()})
    for key, cfg in presets.items():
        if not isinstance(cfg, config_cls):
            raise TypeError(f"preset {key!r} of model {name!r} is not a {config_cls.__name__}")
    if default_preset is None:
        default_preset = "paper" if "paper" in presets else next(iter(presets))
    if default_preset not in presets:
        raise ValueError(f"default preset {default_preset!r} of model {name!r} is not among its presets")
    old = _REGISTRY.get(name)
    if old is not None and old.model_cls.__qualname__ != model_cls.__qualname__:
        raise ValueError(f"model name {name!r} is already registered to {old.model_cls.__qualname__}")
    _REGISTRY[name] = ModelEntry(name, config_cls, model_cls, presets, default_preset)
    return model_cls


def _entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}; available models: {', '.join(list_models())}") from None


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def list_presets(name: str) -> list[str]:
    return list(_entry(name).presets)


def model_config(name: str, preset: str | None = None, **overrides: Any) -> ModelConfig:
    """The config :func:`create_model` would build, e.g. to print or save before training."""
    entry = _entry(name)
    preset = entry.default_preset if preset is None else preset
    try:
        base = entry.presets[preset]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown preset {preset!r} for model {name!r}; available presets: {', '.join(entry.presets)}"
        ) from None
    return base.replace(**overrides) if overrides else base


def create_model(name: str, preset: str | None = None, **overrides: Any) -> nn.Module:
    """Build model ``name`` from ``preset`` (its default, "paper" for segdec) with fields replaced."""
    return _entry(name).model_cls(model_config(name, preset, **overrides))


def model_from_config(name: str, config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from a stored config dict (as written by :meth:`ModelConfig.to_dict`)."""
    entry = _entry(name)
    return entry.model_cls(entry.config_cls.from_dict(config))


def model_name_of(model: nn.Module) -> str:
    """The registered name of ``model``'s class, needed to rebuild it from a file."""
    for entry in _REGISTRY.values():
        if type(model) is entry.model_cls:
            return entry.name
    for entry in _REGISTRY.values():
        if isinstance(model, entry.model_cls):
            return entry.name
    raise ConfigError(f"{type(model).__name__} is not a registered model; registered: {', '.join(list_models())}")
