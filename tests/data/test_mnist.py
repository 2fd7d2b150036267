"""MNIST readers: idx files (plain and gzipped), CSV in both label layouts, and clear errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from defectkit.data.mnist import read_idx, read_mnist, read_mnist_csv, read_mnist_idx
from defectkit.errors import ConfigError, DataError

SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist_5k.csv.gz"


def _digits(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.int64)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_for_both_splits(tmp_path, gz):
    suffix = ".gz" if gz else ""
    train, test = _digits(5, 0), _digits(3, 1)
    for stem, (images, labels) in (("train", train), ("t10k", test)):
        _write(tmp_path / f"{stem}-images-idx3-ubyte{suffix}", _idx_bytes(images), gz)
        _write(tmp_path / f"{stem}-labels-idx1-ubyte{suffix}", _idx_bytes(labels), gz)
    for split, (images, labels) in (("train", train), ("test", test)):
        got = read_mnist(tmp_path, split)
        assert got.images.dtype == np.uint8 and got.images.shape == (len(images), 28, 28)
        assert np.array_equal(got.images, images) and np.array_equal(got.labels, labels)
        assert got.labels.dtype == np.int64
    # an images file alone finds its labels beside it
    got = read_mnist(tmp_path / f"t10k-images-idx3-ubyte{suffix}")
    assert np.array_equal(got.labels, test[1])


def test_idx_with_dotted_names(tmp_path):
    images, labels = _digits(2)
    _write(tmp_path / "train-images.idx3-ubyte", _idx_bytes(images))
    _write(tmp_path / "train-labels.idx1-ubyte", _idx_bytes(labels))
    assert np.array_equal(read_mnist(tmp_path).images, images)


def test_idx_errors_name_the_file(tmp_path):
    images, labels = _digits(4)
    data = _idx_bytes(images)
    bad = _write(tmp_path / "cut-images-idx3-ubyte", data[:-10])
    truncated = r"cut-images-idx3-ubyte: truncated: shape \(4, 28, 28\) needs 3136 bytes of data, the file has 3126"
    with pytest.raises(DataError, match=truncated):
        read_idx(bad)
    with pytest.raises(DataError, match="cut.gz: broken or truncated gzip"):
        read_idx(_write(tmp_path / "cut.gz", gzip.compress(data)[:-20]))
    with pytest.raises(DataError, match="plain.gz: not a gzip file"):
        read_idx(_write(tmp_path / "plain.gz", data))
    with pytest.raises(DataError, match="junk: not an idx file"):
        read_idx(_write(tmp_path / "junk", b"hello world"))
    with pytest.raises(DataError, match="data type 0x0d"):
        read_idx(_write(tmp_path / "floats", bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\0\0\0\0"))
    with pytest.raises(DataError, match="4 unexpected bytes"):
        read_idx(_write(tmp_path / "long", data + b"\0" * 4))
    img = _write(tmp_path / "a-images-idx3-ubyte", data)
    lab = _write(tmp_path / "a-labels-idx1-ubyte", _idx_bytes(labels[:3]))
    with pytest.raises(DataError, match="holds 4 images but .*a-labels-idx1-ubyte holds 3 labels"):
        read_mnist_idx(img, lab)
    _write(lab, _idx_bytes(np.array([1, 2, 3, 11])))
    with pytest.raises(DataError, match="a-labels-idx1-ubyte: label 11 of digit 3 is not a digit"):
        read_mnist_idx(img, lab)
    with pytest.raises(DataError, match="no t10k-images-idx3-ubyte file"):
        read_mnist(tmp_path, "test")
    with pytest.raises(DataError, match="not found"):
        read_mnist(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="split must be"):
        read_mnist(tmp_path, "val")


def _csv(images, labels, first=False, header=None) -> str:
    rows = [header] if header else []
    for img, lab in zip(images, labels):
        pixels = ",".join(str(int(v)) for v in img.ravel())
        rows.append(f"{lab},{pixels}" if first else f"{pixels},{lab}")
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("gz", [False, True])
def test_csv_label_last_and_first(tmp_path, gz):
    images, labels = _digits(6)
    name = "d.csv.gz" if gz else "d.csv"
    path = _write(tmp_path / name, _csv(images, labels).encode(), gz)
    got = read_mnist(path)
    assert np.array_equal(got.images, images) and np.array_equal(got.labels, labels)
    first = _write(tmp_path / f"first_{name}", _csv(images, labels, first=True).encode(), gz)
    got = read_mnist(first, label_column="first")
    assert np.array_equal(got.images, images) and np.array_equal(got.labels, labels)


def test_csv_header_names_the_label_column(tmp_path):
    images, labels = _digits(3)
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    path = _write(tmp_path / "kaggle.csv", _csv(images, labels, first=True, header=header).encode())
    got = read_mnist_csv(path)  # default "last", but the header says otherwise
    assert np.array_equal(got.labels, labels) and np.array_equal(got.images, images)


def test_csv_errors_name_the_file_and_line(tmp_path):
    images, labels = _digits(3)
    lines = _csv(images, labels).splitlines()
    cut = _write(tmp_path / "cut.csv", ("\n".join(lines[:2]) + "\n" + lines[2][:100]).encode())
    with pytest.raises(DataError, match=r"cut.csv: line 3 has \d+ values, the first row has 785"):
        read_mnist_csv(cut)
    text = "\n".join([lines[0], lines[1].replace(",", ",x", 1), lines[2]])  # a first row with letters is a header
    with pytest.raises(DataError, match="word.csv: line 2 holds a value that is not a number"):
        read_mnist_csv(_write(tmp_path / "word.csv", text.encode()))
    with pytest.raises(DataError, match="square image"):
        read_mnist_csv(_write(tmp_path / "odd.csv", b"1,2,3,4\n"))
    with pytest.raises(DataError, match="pixel values must lie in 0-255"):
        read_mnist_csv(_write(tmp_path / "big.csv", b"0,300,0,0,1\n"))
    with pytest.raises(DataError, match="label 12 of digit 0"):
        read_mnist_csv(_write(tmp_path / "label.csv", b"0,3,0,0,12\n"))
    with pytest.raises(DataError, match="empty.csv: no digits"):
        read_mnist_csv(_write(tmp_path / "empty.csv", b""))
    gz = gzip.compress(_csv(images, labels).encode())
    with pytest.raises(DataError, match="trunc.csv.gz: broken or truncated gzip"):
        read_mnist(_write(tmp_path / "trunc.csv.gz", gz[: len(gz) // 2]))
    with pytest.raises(DataError, match="notes.txt: not an MNIST file"):
        read_mnist(_write(tmp_path / "notes.txt", b"hi"))


def test_real_5k_file():
    if not SHARED_MNIST.is_file():
        pytest.skip(f"real data not available: {SHARED_MNIST} is missing (it belongs in ../shared/datasets)")
    data = read_mnist(SHARED_MNIST)
    assert data.images.shape == (5000, 28, 28) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [500] * 10
    assert data.images.max() == 255 and data.images[:, 0, 0].max() == 0  # corners are blank in MNIST
    # a digit has ink in the middle, not just noise: mean of the central 14x14 well above the border's
    assert data.images[:, 7:21, 7:21].mean() > 5 * data.images[:, :4, :].mean()
