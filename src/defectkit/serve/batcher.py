"""Micro-batching: images of requests that arrive together are scored in one ``predict_batch``.

Every image of every request goes into one asyncio queue with its own future. One worker task
takes the first waiting image, then gathers more for up to ``wait_s`` seconds or until it
holds ``max_batch`` images (what is already queued is taken at once), runs the batch in the
model's single thread (so the event loop never blocks and the model is only ever used from
that thread) and resolves each image's future. While a batch runs, new images queue up and
form the next batch: under load the batches fill by themselves, and a lone request waits at
most ``wait_s`` before it is scored. Images of different sizes share a batch (both
predictors accept that). A request whose client went away is skipped.

:class:`PixelBudget` bounds the decoded pixels the service holds across all requests at once
(the memory an upload costs is its decoded size, not its compressed one): a request reserves
its pixels, read from the image headers, before anything is decoded, waits in line while the
budget is spent, and gives up after a bounded wait (the service answers 503 busy).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from concurrent.futures import Executor
from typing import Any, Callable


class Batcher:
    def __init__(self, predict_batch: Callable[[list], list], executor: Executor, max_batch: int = 8, wait_s: float = 0.005):
        self.predict_batch, self.executor = predict_batch, executor
        self.max_batch, self.wait_s = max(1, int(max_batch)), max(0.0, float(wait_s))
        self.sizes: Counter[int] = Counter()  # batch size -> how many batches of that size ran
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._running: list = []  # (image, future) of the batch being scored

    def start(self) -> None:
        """Start the worker on the running loop (again, if the app now runs on another loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop, self._queue = loop, asyncio.Queue()
        self._task = loop.create_task(self._work(), name="defectkit-batcher")

    async def stop(self) -> None:
        task, queue = self._task, self._queue
        self._task = None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        pending = list(self._running)
        while queue is not None and not queue.empty():
            pending.append(queue.get_nowait())
        for _, future in pending:  # nobody will score these any more
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))

    async def submit(self, images: list, return_exceptions: bool = False) -> list:
        """Predictions of ``images`` (in order), scored in batches with other requests' images;
        with ``return_exceptions`` an image the model failed on gives its exception in its place."""
        self.start()
        loop = asyncio.get_running_loop()
        futures = []
        for image in images:
            future = loop.create_future()
            self._queue.put_nowait((image, future))
            futures.append(future)
        return list(await asyncio.gather(*futures, return_exceptions=return_exceptions))

    @property
    def stats(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        images = sum(size * count for size, count in self.sizes.items())
        return {
            "max_batch": self.max_batch,
            "batch_wait_ms": self.wait_s * 1000,
            "batches": batches,
            "images": images,
            "largest_batch": max(self.sizes, default=0),
            "mean_batch": images / batches if batches else 0.0,
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }

    async def _gather(self) -> list:
        queue, loop = self._queue, asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return [(image, future) for image, future in batch if not future.done()]  # done: its request was cancelled

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            images = [image for image, _ in batch]
            self._running = batch
            try:
                outcomes = [(True, p) for p in await loop.run_in_executor(self.executor, self.predict_batch, images)]
                self.sizes[len(images)] += 1
            except Exception as exc:
                if len(batch) == 1:
                    outcomes = [(False, exc)]
                else:  # one image may be at fault: score them one by one so only its request fails
                    outcomes = []
                    for image in images:
                        try:
                            outcomes.append((True, (await loop.run_in_executor(self.executor, self.predict_batch, [image]))[0]))
                            self.sizes[1] += 1
                        except Exception as single:
                            outcomes.append((False, single))
            for (_, future), (ok, value) in zip(batch, outcomes):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            self._running = []


class PixelBudget:
    """At most ``capacity`` pixels reserved at once; reservations are granted first come, first
    served, so a large request is not starved by a stream of small ones."""

    def __init__(self, capacity: int):
        self.capacity, self.used = int(capacity), 0
        self.peak = 0  # the most pixels reserved at once so far
        self.waiting = 0
        self._waiters: deque = deque()  # (pixels, future) in arrival order

    async def acquire(self, pixels: int, timeout_s: float) -> bool:
        """Reserve ``pixels``, waiting up to ``timeout_s``; False when the wait ran out."""
        if pixels > self.capacity:
            raise ValueError(f"{pixels} pixels can never fit in a budget of {self.capacity}")
        if not self._waiters and self.used + pixels <= self.capacity:
            self._take(pixels)
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((pixels, future))
        self.waiting += 1
        try:
            await asyncio.wait_for(future, timeout_s)
            return True
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just as the caller gave up
                self.release(pixels)
            raise
        finally:
            self.waiting -= 1
            if not future.done():
                future.cancel()
            self._grant()  # a request that gave up at the head of the line may have held others back

    def release(self, pixels: int) -> None:
        self.used -= pixels
        self._grant()

    def _take(self, pixels: int) -> None:
        self.used += pixels
        self.peak = max(self.peak, self.used)

    def _grant(self) -> None:
        while self._waiters:
            pixels, future = self._waiters[0]
            if future.done():  # its request gave up
                self._waiters.popleft()
                continue
            if self.used + pixels > self.capacity:
                return
            self._waiters.popleft()
            self._take(pixels)
            future.set_result(None)
