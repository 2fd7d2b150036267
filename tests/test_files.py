"""Atomic writes: readable like a plain open() gives, never a half-written file."""

from __future__ import annotations

import os
import stat

import pytest

from defectkit.files import UMASK, atomic_write


def test_atomic_write_gives_plain_file_permissions(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    path = tmp_path / "run" / "metrics.json"
    atomic_write(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~UMASK
    assert os.listdir(path.parent) == ["metrics.json"]  # no temp file left


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    atomic_write(path, b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.safetensors"]  # the temp file is removed
