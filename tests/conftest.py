"""Shared fixtures: the real data in ../shared/datasets (skipped when absent) and a CLI runner."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _extract(tmp_path_factory, archive: str, inner: str) -> Path:
    source = SHARED / archive
    if not source.is_file():
        pytest.skip(f"real data not available: {source} is missing (it sits in ../shared/datasets beside the project)")
    target = tmp_path_factory.mktemp(archive.split(".")[0])
    with tarfile.open(source) as tf:
        tf.extractall(target, filter="data")
    return target / inner


@pytest.fixture(scope="session")
def ksdd_root(tmp_path_factory) -> Path:
    """The real KolektorSDD, extracted once per test session."""
    return _extract(tmp_path_factory, "kolektorsdd.tar.xz", "kolektorsdd")


@pytest.fixture(scope="session")
def dagm_sample_root(tmp_path_factory) -> Path:
    """15 real DAGM images in the official layout."""
    return _extract(tmp_path_factory, "dagm_sample.tar.xz", "DAGM_sample")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tests run tiny convs, which gain nothing from threads, and spinning OpenMP threads crawl
    when pytest-xdist workers share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_cli(capsys):
    """Run ``defectkit ARGS...`` in-process; returns (exit code, stdout, stderr)."""
    from defectkit.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
