"""One typed config system for every model and training option (pydantic underneath).

A config is a class of typed fields with defaults and one-line descriptions. YAML files, the
command line and Python all go through the same coercion: ``1e-3`` and ``"20"`` are numbers
where a number is meant, ``128x64``, ``"128, 64"`` and ``[128, 64]`` are sizes, ``0011`` and
``[false, false, true, true]`` are per-level flags, ``2,4,8,16`` is a list of integers. Anything
else is one :class:`~defectkit.errors.ConfigError` line naming the field, the value and what
is expected. Options a command line may set are found from the fields themselves
(:func:`cli_fields`), so a new field is a new option everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import ConfigError

__all__ = ["Config", "Field", "Int", "Float", "Size", "Flags", "IntList", "option", "cli_fields", "format_errors"]


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic's lax mode would read true as 1
        raise ValueError("expected a number, not true/false")
    return value


def _size(value: Any) -> Any:
    """``"128x64"`` or ``"128,64"`` -> ``(128, 64)``: the CLI's spelling of a (width, height)."""
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = text.split("x") if "x" in text else text.strip("[]()").split(",")
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"expected WIDTHxHEIGHT such as 256x704 (or [256, 704]), got {value!r}") from None
    return value


def _flags(value: Any) -> Any:
    """``"0011"`` -> ``(False, False, True, True)``."""
    if isinstance(value, str):
        if not value or set(value) - {"0", "1"}:
            raise ValueError(f"expected one 0/1 digit per level, shallow to deep (e.g. 0011), got {value!r}")
        return tuple(c == "1" for c in value)
    return value


def _int_list(value: Any) -> Any:
    """``"2,4,8,16"`` -> ``(2, 4, 8, 16)``."""
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.strip("[]() ").split(","))
        except ValueError:
            raise ValueError(f"expected comma-separated integers (e.g. 2,4,8,16), got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
# a network input beyond this would need tens of GB for its activations: refused at once,
# not after minutes of allocating (the papers' largest is 1600x256; KolektorSDD 512x1408)
MAX_INPUT_PIXELS = 4096 * 4096
MAX_INPUT_SIDE = 16384


def _check_size(value: tuple[int, int]) -> tuple[int, int]:
    width, height = value
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if max(width, height) > MAX_INPUT_SIDE:
        raise ValueError(f"{width}x{height} has a side over {MAX_INPUT_SIDE:,} pixels; resize the images down")
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(f"{width}x{height} is {width * height:,} pixels, more than the {MAX_INPUT_PIXELS:,} (4096x4096) a network input may have; resize the images down")
    return value


Size = Annotated[tuple[Int, Int], BeforeValidator(_size), AfterValidator(_check_size)]
Flags = Annotated[tuple[bool, ...], BeforeValidator(_flags)]
IntList = Annotated[tuple[Int, ...], BeforeValidator(_int_list)]


def option(default: Any = None, description: str = "", *, cli: str | tuple[str, ...] | bool = True, resumable: bool = False, metavar: str | None = None, **kwargs: Any):
    """A config field: ``description`` is its one-line help. ``cli``: extra flags (``"--lr"``), or
    False for a YAML-only field. ``resumable``: ``train --resume`` may change it (it does not
    change what was learnt so far: epochs, device, workers)."""
    extra = {"cli": cli, "resumable": resumable}
    if metavar:
        extra["metavar"] = metavar
    return Field(default, description=description, json_schema_extra=extra, **kwargs)


def format_errors(error: ValidationError, label: str, source: Mapping[str, str] | None = None) -> str:
    """One line for every problem: ``[source: ]field: what is wrong (got value)``."""
    lines, unknown = [], []
    for e in error.errors(include_url=False):
        parts = e.get("loc", ())
        loc = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))
        if e["type"] == "extra_forbidden":
            unknown.append(loc)
            continue
        message = e.get("msg", "invalid").removeprefix("Value error, ").replace("Input should be", "expected")
        if not parts:  # a cross-field check: its message names the fields, and so where they were given
            wheres = sorted({where for name, where in (source or {}).items() if re.search(rf"\b{re.escape(name)}\b", message)})
            lines.append(f"{', '.join(wheres) + ': ' if wheres else ''}{message}")
            continue
        where = (source or {}).get(str(parts[0]))
        got = e.get("input")
        shown = "" if isinstance(got, Mapping) or "got " in message else f" (got {got!r})"
        lines.append(f"{where + ': ' if where else ''}{loc}: {message[:1].lower() + message[1:]}{shown}")
    if unknown:
        wheres = sorted({(source or {}).get(name) for name in unknown} - {None})
        lines.insert(0, f"{', '.join(wheres) + ': ' if wheres else ''}unknown {label} option(s) {', '.join(unknown)}")
    return "; ".join(lines)


class InvalidConfig(ConfigError):
    """A config that failed validation; keeps pydantic's errors so callers can name their source."""

    def __init__(self, error: ValidationError, label: str):
        super().__init__(format_errors(error, label))
        self.error = error


class Config(BaseModel):
    """Base of every config: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, protected_namespaces=())
    label: ClassVar[str] = "config"
    _source: dict[str, str] = PrivateAttr(default_factory=dict)  # field -> where its value came from (from_dict's source)

    @model_validator(mode="after")
    def _check(self):
        self.check()
        return self

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidConfig(exc, self.label) from None

    def __setattr__(self, name: str, value: Any):
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise InvalidConfig(exc, self.label) from None

    def check(self) -> None:
        """Cross-field checks; raise :class:`ConfigError` (or ValueError) with the reason."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Mapping[str, str] | None = None):
        """Build from plain values; ``source`` names where each key came from, for errors.
        Missing keys take their defaults, so files written before a field existed still load."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.label} must be a mapping of options, got {type(data).__name__}")
        try:
            made = cls(**dict(data))
        except InvalidConfig as exc:
            unknown = any(e["type"] == "extra_forbidden" for e in exc.error.errors())
            raise ConfigError(format_errors(exc.error, cls.label, source) + (f"; valid: {', '.join(cls.field_names())}" if unknown else "")) from None
        made._source = {k: v for k, v in (source or {}).items() if k in cls.model_fields}
        return made

    @property
    def source(self) -> dict[str, str]:
        """Where each field set by :meth:`from_dict`'s ``source`` came from; the rest are defaults."""
        return dict(self._source)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON types only (tuples become lists)."""
        return self.model_dump(mode="json")

    def to_yaml(self, **first: Any) -> str:
        """Every field as YAML that :meth:`from_dict` takes back, each under its description as a
        comment; ``first`` are keys to put on top (the method, its named settings)."""
        from .runs import dump_yaml

        lines = [dump_yaml({k: v}) for k, v in first.items()]
        for name, value in self.to_dict().items():
            if name in first:
                continue
            description = type(self).model_fields[name].description
            lines.append((f"# {description}\n" if description else "") + dump_yaml({name: value}))
        return "".join(lines)

    def replace(self, **overrides: Any):
        """A copy with some fields changed, validated like :meth:`from_dict`."""
        return type(self).from_dict({**self.to_dict(), **overrides})


def cli_fields(config_cls: type[Config]) -> list[tuple[str, Any, dict]]:
    """(name, field info, extra) of every field a command line may set."""
    out = []
    for name, info in config_cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("cli", True) is not False:
            out.append((name, info, extra))
    return out
