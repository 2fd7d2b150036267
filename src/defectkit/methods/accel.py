"""Where and how the network computes: device, precision, memory layout, host-to-device copies.

One object decides it for training and scoring, so the GPU settings live in one place and the
CPU path stays exactly the plain fp32 one:

* precision ``auto`` is bf16 autocast on a CUDA GPU that supports it and fp32 everywhere else.
  bf16 on this project's CPUs is about 200x slower than fp32, so it is refused there.
  Losses and FeatureNorm statistics stay fp32 (autocast's float32 ops, ``layers.FeatureNorm``).
* channels-last on CUDA (cuDNN's fast layout for convolutions under bf16); on the CPU it
  measured 11-26% slower (``benchmarks/channels_last.py``), so the CPU keeps NCHW.
* batches built from pinned host memory and copied with ``non_blocking``, one batch ahead in a
  background thread (:func:`prefetch`), so the GPU does not wait for the host.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, TypeVar

import numpy as np

from ..errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
T = TypeVar("T")


@dataclass(frozen=True)
class Accelerator:
    device: "object"  # torch.device (kept untyped so importing this module does not import torch)
    precision: str  # "fp32" or "bf16", resolved
    channels_last: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """The forward pass's precision context: bf16 autocast, or nothing at all for fp32."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def prepare(self, model):
        import torch

        return model.to(self.device, memory_format=torch.channels_last) if self.channels_last else model.to(self.device)

    def tensor(self, array):
        """A host array (NumPy or torch) on the device: pinned and copied asynchronously on CUDA, NCHW images
        in the model's memory layout."""
        import torch

        t = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
        if not self.cuda:
            return t
        t = (t if t.is_pinned() else t.pin_memory()).to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last and t.dim() == 4 else t


DEVICES = "cpu, cuda or cuda:N"


def parse_device(device):
    """A torch.device for cpu, cuda or cuda:N; anything else is a :class:`ConfigError`."""
    import torch

    if isinstance(device, torch.device):
        parsed = device
    else:
        try:
            parsed = torch.device(str(device))
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(f"--device {device!r} is not a device; use {DEVICES}") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: defectkit runs on {DEVICES}")
    return parsed


def resolve(device, precision: str = "auto") -> Accelerator:
    """The settings for ``device`` (a name or torch.device) and a precision choice."""
    import torch

    device = parse_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available (PyTorch sees none)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: there is no such GPU (PyTorch sees {torch.cuda.device_count()})")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    cuda = device.type == "cuda"
    if precision == "bf16" and not cuda:
        raise ConfigError(f"bf16 on {device.type} is refused: on CPUs without bf16 matrix units it runs about 200x slower than fp32; use fp32 (or auto)")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support; use fp32 (or auto)")
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return Accelerator(device, precision, channels_last=cuda)


def prefetch(items: Iterable[T], enabled: bool = True, depth: int = 2) -> Iterator[T]:
    """``items`` produced ``depth`` ahead in a background thread (when ``enabled``): the next
    batch is stacked and copied while the device computes this one. Errors surface in order."""
    if not enabled:
        yield from items
        return
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put((item, None))
        except BaseException as exc:  # handed to the consumer, raised where it iterates
            slots.put((None, exc))
            return
        slots.put((done, None))

    worker = threading.Thread(target=produce, daemon=True, name="defectkit-prefetch")
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(0.01)
