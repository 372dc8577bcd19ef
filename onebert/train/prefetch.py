"""Build the next batches in a background thread while the model trains on the current one.

Batch building (gathering instances, padding, masking) is numpy work that releases the GIL for most
of its time, so a thread overlaps it with the training step without the cost of worker processes.
Each batch travels with the source's `state_dict()` taken right after it was built, so the
position saved in a checkpoint is that of the last batch *consumed*, not of the batches queued
ahead: resume stays exact with prefetching on.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any, Iterator

import torch

# Building one batch takes milliseconds to a few seconds; a producer that needs longer than this to
# notice the stop is stuck (in a read on a hung file system, say), and waiting on it would hang the run.
JOIN_TIMEOUT_S = 60.0


class PrefetchedBatches:
    """Wraps a resumable batch stream (iter + state_dict/load_state_dict); `depth` batches are built ahead."""

    _DONE = object()

    def __init__(self, source: Any, depth: int = 2, pin_memory: bool = False):
        self.source = source
        self.depth = max(1, depth)
        self.pin_memory = pin_memory
        self._state = source.state_dict()
        self._started = False

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._started:
            raise RuntimeError("load_state_dict must come before iteration starts")
        self.source.load_state_dict(state)
        self._state = self.source.state_dict()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The batches in order. Closing the iterator (the training loop does, on success and on error)
        stops the producer thread and joins it before `close()` returns."""
        self._started = True
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def offer(item: tuple[Any, Any]) -> bool:
            """Queue `item` unless the consumer has gone; False when it has."""
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for batch in self.source:
                    if self.pin_memory:
                        batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    if not offer((batch, self.source.state_dict())) or stop.is_set():
                        return
                offer((self._DONE, None))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
                offer((exc, None))

        thread = threading.Thread(target=produce, name="onebert-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                batch, state = ready.get()
                if batch is self._DONE:
                    return
                if isinstance(batch, BaseException):
                    raise batch
                self._state = state
                yield batch
        finally:
            stop.set()
            _join(thread, ready)


def _join(thread: threading.Thread, ready: queue.Queue) -> None:
    """Wait for the producer to finish the batch it is building (its next stop check); say so if it hangs.

    A daemon thread is not enough: one still inside torch code when the interpreter exits is torn
    down there and the process aborts ("terminate called without an active exception", exit 134)
    after a run that has succeeded.
    """
    thread.join(timeout=JOIN_TIMEOUT_S)
    if thread.is_alive():
        print(f"onebert: warning: the batch prefetch thread did not stop within {JOIN_TIMEOUT_S:g} s",
              file=sys.stderr, flush=True)
    while not ready.empty():  # drop the queued batches now rather than whenever the generator is collected
        ready.get_nowait()
