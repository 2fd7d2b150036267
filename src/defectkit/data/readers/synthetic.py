"""The built-in synthetic dataset, read through the folder reader after it is generated."""

from __future__ import annotations

import os
from pathlib import Path

from ..sample import Sample
from .folder import read_folder


def default_root() -> Path:
    """Where the default synthetic dataset is generated: ``$DEFECTKIT_CACHE/synthetic``
    (default ``~/.cache/defectkit/synthetic``)."""
    cache = os.environ.get("DEFECTKIT_CACHE") or Path.home() / ".cache" / "defectkit"
    return Path(cache) / "synthetic"


def read_synthetic(root: str | Path | None = None, split: str | None = None, fold: int | None = None, **params) -> list[Sample]:
    """Generate the dataset under ``root`` if it is not there yet (``params`` go to
    :func:`defectkit.data.synthetic.generate`), then read it like any folder dataset.
    A folder that already holds a generated dataset is read as it is when no ``params`` are given."""
    from ..synthetic import META_NAME, generate

    root = Path(root) if root else default_root()
    if params or not (root / META_NAME).is_file():
        generate(root, **params)
    return read_folder(root, split=split)
