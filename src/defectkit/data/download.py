"""Fetching a dataset from its public address and unpacking it where the readers expect it.

Only datasets with a direct public URL can be fetched (KolektorSDD, KolektorSDD2); for the
others ``how_to_get`` says what to do. ``--archive`` uses an archive already on disk and
``--url`` another mirror; the published checksum is checked only for the official URL.
"""

from __future__ import annotations

import tarfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from ..errors import DataError
from ..files import sha256
from .datasets import DatasetSpec, get_dataset

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


def _fetch(url: str, target: Path, on_progress: Progress | None) -> Path:
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(done, total)
    except OSError as exc:  # URLError, HTTPError and socket errors are OSErrors
        partial.unlink(missing_ok=True)
        raise DataError(f"{url}: download failed ({getattr(exc, 'reason', exc)})") from None
    partial.replace(target)
    return target


def _verify(spec: DatasetSpec, archive: Path) -> None:
    info = spec.download
    if info.size is not None and archive.stat().st_size != info.size:
        raise DataError(f"{archive}: size {archive.stat().st_size} bytes differs from the published {info.size}; delete it and retry")
    if info.sha256 is not None and sha256(archive) != info.sha256:
        raise DataError(f"{archive}: SHA-256 differs from the published checksum; delete it and retry")


def _extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if Path(member).is_absolute() or ".." in Path(member).parts:
                        raise DataError(f"{archive}: unsafe path in archive: {member}")
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")
        else:
            raise DataError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(f"{archive}: corrupt archive ({exc})") from None


def _find_root(spec: DatasetSpec, dest: Path) -> Path:
    """The folder under ``dest`` (itself or up to two levels down) the reader accepts."""
    candidates = [dest] + sorted(p for p in dest.glob("*") if p.is_dir()) + sorted(p for p in dest.glob("*/*") if p.is_dir())
    for candidate in candidates:
        try:
            spec.read(candidate, split="all")
            return candidate
        except DataError:
            continue
    raise DataError(f"{dest}: the archive did not contain a {spec.title} layout ({spec.layout})")


def download_dataset(
    name: str,
    dest: str | Path,
    *,
    url: str | None = None,
    archive: str | Path | None = None,
    on_progress: Progress | None = None,
) -> Path:
    """Download (or take ``archive``), verify, extract into ``dest``; returns the dataset root."""
    spec = get_dataset(name)
    dest = Path(dest)
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DataError(f"{archive}: archive not found")
    else:
        if spec.download is None and url is None:
            raise DataError(f"{spec.title} has no public download address: {spec.how_to_get or 'see the README'}")
        dest.mkdir(parents=True, exist_ok=True)
        file_name = spec.download.file_name if spec.download else Path(url).name or f"{spec.name}.archive"
        archive = dest / file_name
        official = url is None
        if not archive.is_file():
            _fetch(url or spec.download.url, archive, on_progress)
        if official:
            _verify(spec, archive)
    _extract(archive, dest)
    return _find_root(spec, dest)

