"""Model configs: frozen dataclasses that round-trip through JSON/YAML.

Field types drive coercion, so a config read from YAML (lists, ints for floats) becomes the
same object as one built in Python, and a wrong value fails with one line naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from defectkit.errors import ConfigError

__all__ = ["ModelConfig"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base for every model's config; subclasses add fields and override :meth:`validate`."""

    label: ClassVar[str] = "model config"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(getattr(self, f.name), hints[f.name], f.name, self.label)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise :class:`ConfigError`."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types only (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Missing keys take their defaults, so files written before a field existed still load."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.label} must be a mapping of options, got {type(data).__name__}")
        valid = cls.field_names()
        unknown = sorted(str(k) for k in data if k not in valid)
        if unknown:
            raise ConfigError(
                f"unknown {cls.label} option(s): {', '.join(unknown)}; valid options: {', '.join(valid)}"
            )
        return cls(**dict(data))

    def replace(self, **overrides: Any):
        """A copy with some fields changed, validated like :meth:`from_dict`."""
        return type(self).from_dict({**self.to_dict(), **overrides})


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}s"
        return f"a list of {len(args)} values"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, name: str, label: str) -> Any:
    def fail() -> typing.NoReturn:
        raise ConfigError(f"{label} option {name!r} must be {_describe(tp)}, got {value!r}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name, label)
            except ConfigError:
                pass
        fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        fail()
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                out = float(value)
            except ValueError:
                fail()
        else:
            fail()
        if not math.isfinite(out):
            fail()
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{name}[{i}]", label) for i, v in enumerate(value))
        if len(value) != len(args):
            fail()
        return tuple(_coerce(v, a, f"{name}[{i}]", label) for i, (v, a) in enumerate(zip(value, args)))
    return value
