"""Files that must never be half-written or unsafe to read: atomic writes and safetensors weights."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import DataError


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (archives and models can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# read once at import: os.umask can only be read by setting it, which is not thread-safe later
UMASK = _read_umask()


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    The file gets the permissions a plain ``open`` would give (0666 less the umask), not the
    temp file's private 0600, so a service or a colleague can read the run folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(path: Path, state_dict: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write(path, save(tensors, metadata=metadata))


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise DataError(f"cannot read weights {path}: {exc}") from None


def _some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(model, path: Path, config_name: str = "the model config") -> None:
    """Load safetensors weights strictly (never pickle), naming what does not fit."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file missing: {path}")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise DataError(f"cannot read weights {path}: {exc}") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = [f"missing {len(missing)} tensor(s): {_some(missing)}"] if missing else []
        parts += [f"unexpected {len(unexpected)} tensor(s): {_some(unexpected)}"] if unexpected else []
        raise DataError(f"weights {path} do not match {config_name}: {'; '.join(parts)}")
    for key, ref in expected.items():
        if tensors[key].shape != ref.shape:
            raise DataError(
                f"weights {path} do not match {config_name}: tensor {key!r} has shape "
                f"{list(tensors[key].shape)} in the file but the config needs {list(ref.shape)}"
            )
    check_finite(tensors, path)
    model.load_state_dict(tensors, strict=True)


def check_finite(tensors: dict, path: Path) -> None:
    """Refuse weights holding NaN or infinity: such a model scores NaN, and a NaN compared with
    a threshold is "good" (every image would pass)."""
    import torch

    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise DataError(f"{path}: weights hold NaN or infinite values in {len(broken)} tensor(s) ({_some(broken)}); the model cannot be used")


def refuse_existing(paths, overwrite: bool = False) -> None:
    """Check, before any work, that writing ``paths`` loses nothing: a folder where a file goes
    is refused, and so is a file already there unless the user asked to ``overwrite``."""
    paths = [Path(p) for p in paths]
    for path in paths:
        if path.is_dir():
            raise DataError(f"{path}: is a folder; give the name of a file to write")
        if path.parent.exists() and not path.parent.is_dir():
            raise DataError(f"{path.parent}: is a file, not a folder")
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more file(s) this would write)" if len(existing) > 1 else ""
        raise DataError(f"{existing[0]}: already exists{more}; pass --overwrite to replace it, or write elsewhere")
