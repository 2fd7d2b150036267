"""The registry of methods: name -> :class:`~defectkit.methods.base.Method` class.

The built-in methods are imported on first use, so importing the registry (the CLI does, for
``--help``) costs nothing. :func:`register_method` adds any other class (a plugin, or a test's
toy method): from then on every command trains, evaluates, exports, serves and reports it.

A run folder's ``config.yaml`` names its method at the top (``method: ear``); folders written
before there was more than one method have none and are the supervised net's.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .. import runs
from ..errors import ConfigError, DataError

BUILTIN = {
    "segdec": "defectkit.methods.segdec:SegDec",
    "ear": "defectkit.methods.ear:Ear",
    "riad": "defectkit.methods.riad:Riad",
    "patchcore": "defectkit.methods.patchcore:PatchCore",
}
DEFAULT_METHOD = "segdec"  # what `train` trains without --method, and what `demo` shows
REGISTERED: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Add a :class:`Method` subclass under ``cls.name`` (usable as a class decorator)."""
    REGISTERED[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return list(BUILTIN) + [n for n in REGISTERED if n not in BUILTIN]


def get_method(name: str) -> type:
    if name in REGISTERED:
        return REGISTERED[name]
    if isinstance(name, str) and name in BUILTIN:
        module, attr = BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise ConfigError(f"unknown method {name!r}; available: {', '.join(method_names())}")


def method_name_of_run(run_dir: str | Path) -> str:
    """The method recorded in a run folder's config.yaml (none recorded: the default method)."""
    path = Path(run_dir) / runs.CONFIG
    saved = runs.read_yaml(path)
    if not isinstance(saved, dict):
        raise DataError(f"{path}: not a defectkit run config (expected a mapping)")
    name = saved.get("method")
    if name is None and isinstance(saved.get("train"), dict):
        name = saved["train"].get("method")
    name = name or DEFAULT_METHOD
    if name not in method_names():
        raise DataError(f"{path}: unknown method {name!r}; this defectkit knows {', '.join(method_names())}")
    return name


def method_of_run(run_dir: str | Path) -> type:
    return get_method(method_name_of_run(run_dir))


def load_method(run_dir: str | Path, device: str = "cpu", weights: str = runs.MODEL):
    """The trained method of any run folder, ready to score."""
    run_dir = runs.require_run(Path(run_dir), weights)
    return method_of_run(run_dir).load(run_dir, device=device, weights=weights)


def make_config(name: str, values: dict[str, Any], named: str | None = None, source: dict[str, str] | None = None):
    """The training config of method ``name`` from option values (and named settings)."""
    return get_method(name).make_config(values, named, source)
