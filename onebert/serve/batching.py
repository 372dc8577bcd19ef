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

A request has a cost (default: its item count; the server passes model sequences, e.g. QA windows),
and batches fill up to `max_batch_size` of cost, so one request of long contexts does not share a
pass with 31 others like it. Work nobody waits for any more stops early: while a batch runs, the
worker thread's `raise_if_abandoned()` (the server calls it before every forward pass of the model)
raises `Abandoned` once every request of the batch has timed out or lost its client, so the single
model thread is free for the next batch within one forward pass.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher's queue holds `max_queue` requests already."""


class Abandoned(Exception):
    """Every request of the running batch is gone (timed out, client disconnected): its work stops."""


_worker = threading.local()  # .abandoned: the threading.Event of the batch this worker thread runs


def raise_if_abandoned() -> None:
    """In the worker thread: raise `Abandoned` if no request waits for the running batch any more.

    Cheap (one Event check), so it can run before every forward pass; a no-op outside a batch.
    """
    event = getattr(_worker, "abandoned", None)
    if event is not None and event.is_set():
        raise Abandoned("every request of this batch timed out or disconnected")


def _run_marked(process: Callable[[list[Any]], list[Any]], items: list[Any], abandoned: threading.Event) -> list[Any]:
    _worker.abandoned = abandoned
    try:
        return process(items)
    finally:
        _worker.abandoned = None


@dataclass
class _Request:
    items: Sequence[Any]
    future: asyncio.Future
    enqueued: float
    cost: int


@dataclass
class BatchStats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    largest_batch: int = 0
    abandoned: int = 0  # batches stopped early: nobody waited for them any more
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
                "largest_batch": self.largest_batch, "abandoned": self.abandoned}


class DynamicBatcher:
    """Collects concurrent requests into batches for `process(items) -> results` (same length, same order)."""

    def __init__(self, name: str, process: Callable[[list[Any]], list[Any]], executor: Executor, *,
                 max_batch_size: int = 32, max_latency_ms: float = 10.0, max_queue: int = 256,
                 on_batch: Callable[[int], None] | None = None) -> None:
        """on_batch(items): called after each batch that ran (the server's batch-size metric)."""
        if max_batch_size < 1 or max_queue < 1 or max_latency_ms < 0:
            raise ValueError("max_batch_size and max_queue must be positive, max_latency_ms not negative")
        self.name = name
        self.process = process
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatchStats()
        self.on_batch = on_batch
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

    async def submit(self, items: Sequence[Any], cost: int | None = None) -> list[Any]:
        """Results for `items`, in order, once a batch containing them has run.

        cost: what the items weigh against `max_batch_size` (default: how many there are).
        """
        if self._arrived is None or self._task is None or self._task.done():
            raise RuntimeError(f"batcher '{self.name}' is not running")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{self.max_queue} requests are already queued")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(list(items), future, time.perf_counter(),
                                      len(items) if cost is None else max(1, cost)))
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
        batch, size = [first], first.cost
        if not first.future.done():  # its timeout (or disconnect) ends the wait for company at once
            first.future.add_done_callback(lambda _future: self._arrived.set())
        deadline = asyncio.get_running_loop().time() + self.max_latency
        while size < self.max_batch_size:
            if first.future.done():
                break  # it timed out waiting for company: no point in waiting longer
            if not self._pending:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
                continue
            if size + self._pending[0].cost > self.max_batch_size:
                break  # it stays first in line for the next batch
            request = self._pending.popleft()
            batch.append(request)
            size += request.cost
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = [r for r in batch if not r.future.done()]  # a client that gave up is skipped
            if not live:
                continue
            items = [item for request in live for item in request.items]
            abandoned = threading.Event()

            def check_abandoned(_future: asyncio.Future, live=live, abandoned=abandoned) -> None:
                if all(request.future.done() for request in live):
                    abandoned.set()

            for request in live:
                request.future.add_done_callback(check_abandoned)
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, _run_marked, self.process, items, abandoned)
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: got {len(results)} results for {len(items)} inputs")
            except Abandoned:
                self.stats.abandoned += 1
                log.warning("%s: batch of %d items stopped after %.2f s: every request timed out or disconnected",
                            self.name, len(items), time.perf_counter() - start)
                continue
            except Exception as exc:  # noqa: BLE001 - every waiting request must hear of it
                log.exception("%s: batch of %d items failed", self.name, len(items))
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            self.stats.record(len(live), len(items), time.perf_counter() - start)
            if self.on_batch is not None:
                self.on_batch(len(items))
            offset = 0
            for request in live:
                count = len(request.items)
                if not request.future.done():
                    request.future.set_result(results[offset:offset + count])
                offset += count
