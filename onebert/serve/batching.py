"""Dynamic batching: requests that arrive close together share one forward pass.

A request puts its items (texts, pairs, questions) on a bounded asyncio queue and awaits a future.
One batcher task per endpoint takes the oldest request, then keeps taking requests until the batch
holds `max_batch_size` items or `max_latency_ms` has passed since that first request, and runs the
model on the whole batch in a worker thread (so the event loop keeps accepting requests meanwhile).
Results are split back to the requests in order. While the model is busy, requests queue up, so
under load batches fill without waiting; when idle, a lone request waits at most `max_latency_ms`.

The queue is bounded: a request that finds it full is refused at once (`QueueFull`, HTTP 503)
rather than waiting without limit. All batchers share one single-thread executor: one model call
at a time uses all the cores, and the tokenizers are not shared across threads.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher's queue holds `max_queue` requests already."""


@dataclass
class _Request:
    items: Sequence[Any]
    future: asyncio.Future
    enqueued: float


@dataclass
class BatchStats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0
    sizes: list[int] = field(default_factory=list, repr=False)  # the last few batch sizes, for /health

    def record(self, requests: int, items: int, seconds: float) -> None:
        self.requests += requests
        self.items += items
        self.batches += 1
        self.largest_batch = max(self.largest_batch, items)
        self.busy_seconds += seconds
        self.sizes = (self.sizes + [items])[-32:]

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "items": self.items, "batches": self.batches,
                "mean_batch_size": round(self.items / self.batches, 2) if self.batches else 0.0,
                "largest_batch": self.largest_batch}


class DynamicBatcher:
    """Collects concurrent requests into batches for `process(items) -> results` (same length, same order)."""

    def __init__(self, name: str, process: Callable[[list[Any]], list[Any]], executor: Executor, *,
                 max_batch_size: int = 32, max_latency_ms: float = 10.0, max_queue: int = 256) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_latency_ms < 0:
            raise ValueError("max_batch_size and max_queue must be positive, max_latency_ms not negative")
        self.name = name
        self.process = process
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        # A deque and an event rather than asyncio.Queue: a timed-out wait then never loses a request
        # (the request stays in the deque; only a wake-up is missed), and the head of the line can be
        # looked at without taking it.
        self._pending: collections.deque[_Request] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            request = self._pending.popleft()
            if not request.future.done():
                request.future.set_exception(RuntimeError("server shutting down"))

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Results for `items`, in order, once a batch containing them has run."""
        if self._arrived is None or self._task is None or self._task.done():
            raise RuntimeError(f"batcher '{self.name}' is not running")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are already queued")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(list(items), future, time.perf_counter()))
        self._arrived.set()
        return await future

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        assert self._arrived is not None
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _next_batch(self) -> list[_Request]:
        while not self._pending:
            await self._wait_for_arrival(None)
        first = self._pending.popleft()  # always taken, even when it alone exceeds max_batch_size
        batch, size = [first], len(first.items)
        deadline = asyncio.get_running_loop().time() + self.max_latency
        while size < self.max_batch_size:
            if not self._pending:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
                continue
            if size + len(self._pending[0].items) > self.max_batch_size:
                break  # it stays first in line for the next batch
            request = self._pending.popleft()
            batch.append(request)
            size += len(request.items)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = [r for r in batch if not r.future.done()]  # a client that gave up is skipped
            if not live:
                continue
            items = [item for request in live for item in request.items]
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.process, items)
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: got {len(results)} results for {len(items)} inputs")
            except Exception as exc:  # noqa: BLE001 - every waiting request must hear of it
                log.exception("%s: batch of %d items failed", self.name, len(items))
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            self.stats.record(len(live), len(items), time.perf_counter() - start)
            offset = 0
            for request in live:
                count = len(request.items)
                if not request.future.done():
                    request.future.set_result(results[offset:offset + count])
                offset += count
