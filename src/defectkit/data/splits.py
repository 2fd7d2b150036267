"""The official train/test split lists published with the two-stage network's reference code.

They ship as package data (``data/splits/<dataset>.json.gz``, converted by
``tools/convert_official_splits.py``): a split key such as ``33_33`` (KolektorSDD: positives
used for training _ pixel-labelled ones) maps to name lists, and ``weak`` lists the training
positives that may be used with their image-level label only.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources

from ..errors import DataError

Entry = tuple[str, bool]  # (name, pixel_labelled)


@lru_cache(maxsize=None)
def _document(dataset: str) -> dict:
    resource = resources.files("defectkit.data") / "splits" / f"{dataset}.json.gz"
    try:
        return json.loads(gzip.decompress(resource.read_bytes()))
    except FileNotFoundError:
        raise DataError(f"no official split lists are shipped for dataset '{dataset}'") from None


def available_splits(dataset: str) -> list[str]:
    """Split keys, ordered numerically (``5_5`` before ``33_33``)."""
    keys = _document(dataset)["splits"]
    return sorted(keys, key=lambda k: [int(p) for p in k.split("_")])


def _resolve(doc: dict, part: dict) -> list[Entry]:
    names = doc["lists"][part["names"]]
    weak = set(doc["lists"][part["weak"]]) if "weak" in part else set()
    return [(str(n), n not in weak) for n in names]


def load_split(dataset: str, key: str) -> dict:
    """Resolve one split to plain lists of ``(name, pixel_labelled)``.

    Returns ``{"folds": [{"train": [...], "test": [...]}, ...]}`` (KolektorSDD),
    ``{"classes": [...]}`` (DAGM, index k-1 for ClassK) or ``{"train": [...], "test": [...],
    "validation": [...]}`` (KolektorSDD2, Severstal).
    """
    doc = _document(dataset)
    if key not in doc["splits"]:
        raise DataError(
            f"unknown split '{key}' for dataset '{dataset}'; published splits: {', '.join(available_splits(dataset))}"
        )
    split = doc["splits"][key]
    if "folds" in split or "classes" in split:
        group = "folds" if "folds" in split else "classes"
        return {group: [{part: _resolve(doc, v) for part, v in item.items()} for item in split[group]]}
    return {part: _resolve(doc, v) for part, v in split.items()}
