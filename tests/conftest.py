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


CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from the system package (Debian ``chromium``), driven by Playwright.

    Browsers cannot be downloaded here, so Playwright is pointed at the system binary. Without
    one the browser tests skip, except under ``DEFECTKIT_REQUIRE_BROWSER=1`` (set by CI, which
    installs it), where they fail."""
    import os
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api")
    path = os.environ.get("DEFECTKIT_CHROMIUM") or next((p for p in CHROMIUM_PATHS if Path(p).is_file()), None) or shutil.which("chromium")
    if not path:
        message = "no Chromium: install Debian's `chromium` package (or set DEFECTKIT_CHROMIUM to a Chromium binary)"
        if os.environ.get("DEFECTKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()
