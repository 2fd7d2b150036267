"""Training images as a stream: a ``torch.utils.data.DataLoader`` with a decode cache bounded in bytes.

Decoding and preprocessing run in ``workers`` processes (0: in the calling process), a couple
of batches ahead of the training step; on CUDA the batches come in pinned memory. Decoded
items are kept in a :class:`DecodeCache` of at most ``cache_mb`` megabytes shared by every
worker, so a training set far larger than memory streams from disk while a small one is
decoded once. Which items get a place is fixed up front (``priority``: the images every epoch
uses first), so nothing is evicted and no two processes ever write one place.

The order of batches is the caller's (``batches(index_lists)``), so a seeded epoch order gives
the same batches whatever the number of workers. A bad file raises one
:class:`~defectkit.errors.DataError` naming it, not a worker's traceback.
"""

from __future__ import annotations

import mmap
import multiprocessing
import threading
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import DataError, DefectkitError
from .sample import Sample

DEFAULT_CACHE_MB = 1024
MB = 1 << 20


def _fork_context():
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


class DecodeCache:
    """Fixed-size items (tuples of arrays shaped like ``example``) in one block of anonymous
    shared memory, which forked worker processes see and fill; pages are only taken as items
    arrive. Item ``i`` has a place when it is among the first items of ``priority`` that fit
    in ``budget`` bytes."""

    def __init__(self, n_items: int, example: tuple[np.ndarray, ...], budget: int, priority: Sequence[int] | None = None, shared: bool = True):
        self.specs = [(a.shape, a.dtype, a.nbytes) for a in example]
        self.item_bytes = sum(nbytes for _, _, nbytes in self.specs)
        order = np.arange(n_items) if priority is None else np.asarray(priority, np.int64)
        self.slots = min(len(order), budget // self.item_bytes) if self.item_bytes else 0
        self.slot_of = np.full(n_items, -1, np.int64)
        self.slot_of[order[: self.slots]] = np.arange(self.slots)
        self.memory = mmap.mmap(-1, max(1, self.slots * self.item_bytes))  # MAP_SHARED | MAP_ANONYMOUS
        self.filled = mmap.mmap(-1, max(1, self.slots))
        context = _fork_context() if shared else None
        self.lock = context.Lock() if context is not None else threading.Lock()

    @property
    def nbytes(self) -> int:
        return self.slots * self.item_bytes

    def _views(self, slot: int) -> list[np.ndarray]:
        offset, views = slot * self.item_bytes, []
        for shape, dtype, nbytes in self.specs:
            views.append(np.frombuffer(self.memory, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=offset).reshape(shape))
            offset += nbytes
        return views

    def get(self, index: int) -> tuple[np.ndarray, ...] | None:
        slot = int(self.slot_of[index])
        if slot < 0:
            return None
        with self.lock:
            if not self.filled[slot]:
                return None
        return tuple(v.copy() for v in self._views(slot))

    def put(self, index: int, item: tuple[np.ndarray, ...]) -> None:
        slot = int(self.slot_of[index])
        if slot < 0:
            return
        for view, array, (shape, dtype, _) in zip(self._views(slot), item, self.specs):
            if array.shape != shape or array.dtype != dtype:
                raise DataError(f"item {index}: decoded as {array.shape} {array.dtype}, the first item was {shape} {dtype}")
            view[...] = array
        with self.lock:
            self.filled[slot] = 1


class _Items:
    """The map-style dataset: item ``i`` from the cache or decoded by ``load``."""

    def __init__(self, samples: list[Sample], load: Callable[[Sample], tuple[np.ndarray, ...]], cache: DecodeCache | None, first: tuple):
        self.samples, self.load, self.cache, self.first = samples, load, cache, first

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        item = self.cache.get(index) if self.cache is not None else None
        if item is None and index == 0:
            item = self.first  # decoded already, to learn the item's shapes
        if item is None:
            try:
                item = tuple(self.load(self.samples[index]))
            except DefectkitError as exc:  # handed to the main process as one line
                return index, None, str(exc)
            if self.cache is not None:
                self.cache.put(index, item)
        return index, item, None


class _Collate:
    """Stacks items into tensors; an empty batch (a rank's share of a short last batch) keeps the shapes."""

    def __init__(self, specs):
        self.specs = specs

    def __call__(self, items):
        import torch

        errors = [error for _, _, error in items if error]
        if errors:
            return None, errors[0]
        indices = np.array([i for i, _, _ in items], np.int64)
        arrays = []
        for k, (shape, dtype, _) in enumerate(self.specs):
            stacked = np.stack([item[k] for _, item, _ in items]) if items else np.zeros((0, *shape), dtype)
            arrays.append(torch.from_numpy(stacked))
        return (indices, tuple(arrays)), None


class _Batches:
    """A batch sampler whose index lists the caller sets before each pass."""

    def __init__(self):
        self.lists: list[list[int]] = []

    def __iter__(self):
        return iter(self.lists)

    def __len__(self) -> int:
        return len(self.lists)


class StreamLoader:
    """``batches(index_lists)`` yields ``(indices, tensors)`` for each list of sample indices.

    ``load(sample)`` returns the item's arrays (it must be picklable where worker processes are
    not forked). ``cache_mb`` bounds the decode cache (0: none; none either with workers on a
    system that cannot fork them, where they could not share it)."""

    def __init__(self, samples: list[Sample], load: Callable[[Sample], tuple[np.ndarray, ...]], *, workers: int = 0,
                 cache_mb: float = DEFAULT_CACHE_MB, pin_memory: bool = False, priority: Sequence[int] | None = None,
                 prefetch: int = 2):
        from torch.utils.data import DataLoader

        if not samples:
            raise DataError("no images to load")
        if workers < 0:
            raise DataError(f"workers must be 0 or more, got {workers}")
        example = tuple(load(samples[0]))
        fork = _fork_context()
        cache = None
        if cache_mb > 0 and (fork is not None or not workers):  # the cache is shared with forked workers only
            cache = DecodeCache(len(samples), example, int(cache_mb * MB), priority, shared=workers > 0)
            cache.put(0, example)
        self.cache = cache
        self.specs = [(a.shape, a.dtype, a.nbytes) for a in example]
        self._batches = _Batches()
        self._cv2_threads = None
        if workers:
            import cv2

            # OpenCV's thread pool must not exist when the workers are forked (a forked child
            # that touches it hangs), and one core per worker is what they should use anyway
            self._cv2_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
        options = dict(num_workers=workers, persistent_workers=True, prefetch_factor=prefetch,
                       multiprocessing_context=fork) if workers else {}
        self.loader = DataLoader(_Items(samples, load, cache, example), batch_sampler=self._batches, collate_fn=_Collate(self.specs),
                                 pin_memory=pin_memory, **options)

    def __len__(self) -> int:
        return len(self.loader.dataset)

    def batches(self, index_lists: Iterable[Sequence[int]]) -> Iterator[tuple[np.ndarray, tuple]]:
        self._batches.lists = [[int(i) for i in b] for b in index_lists]
        if not self._batches.lists:
            return
        for batch, error in self.loader:
            if error:
                raise DataError(error)
            yield batch

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader = None
        if self._cv2_threads is not None:
            import cv2

            cv2.setNumThreads(self._cv2_threads)
            self._cv2_threads = None


def stream(samples: list[Sample], load: Callable[[Sample], tuple[np.ndarray, ...]], batch_size: int, workers: int = 0) -> Iterator[tuple[list[Sample], tuple]]:
    """``samples`` in order, ``batch_size`` at a time, as ``(samples, tensors)``: for scoring, no cache."""
    if not samples:
        return
    loader = StreamLoader(samples, load, workers=workers, cache_mb=0)
    try:
        lists = [list(range(i, min(i + batch_size, len(samples)))) for i in range(0, len(samples), batch_size)]
        for indices, tensors in loader.batches(lists):
            yield [samples[i] for i in indices], tensors
    finally:
        loader.close()
