"""Model configs: frozen, typed configs (:mod:`defectkit.config`) that round-trip through JSON/YAML.

A config read from a run folder (lists, ints for floats) becomes the same object as one built
in Python, and a wrong value fails with one line naming the field.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict

from defectkit.config import Config

__all__ = ["ModelConfig"]


class ModelConfig(Config):
    """Base for every model's config; subclasses add fields and override :meth:`check`."""

    model_config = ConfigDict(frozen=True, validate_assignment=False)
    label: ClassVar[str] = "model config"

    def example_shape(self) -> tuple[int, int, int, int]:
        """A small ``N x C x H x W`` input the model accepts (tests use it for every preset)."""
        return (1, getattr(self, "in_channels", 1), 64, 64)
