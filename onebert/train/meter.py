"""Training metrics between logging steps: the task's statistics, throughput and MFU.

Statistics stay on the device and are summed there; a logging step is the only place they leave it
(one synchronisation, one all-reduce). tokens/s counts real tokens (padding excluded), and the time
spent evaluating or saving inside an interval is excluded from it.

MFU = model FLOPs per second achieved / (peak FLOP/s x ranks), where the task counts the model FLOPs
of each micro-batch (for BERT `onebert.model.training_flops`: 6 x non-embedding weights x tokens +
12 x layers x hidden x sum of squared sequence lengths for attention + the MLM head at masked
positions only) and the peak is a timed matmul in the training dtype on this device
(`precision.measure_peak_flops`).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator

import torch

from onebert import runtime
from onebert.train.distributed import DistContext
from onebert.train.metrics_log import MetricsLog, Progress
from onebert.train.step import StepResult
from onebert.train.task import TrainingTask

SHOWN = ("loss", "mlm_accuracy", "accuracy", "lr", "tokens_per_s", "mfu")  # on the console's metric line
MAX_PEAK_REMEASURES = 3


class Meter:
    """Sums what the steps of one logging interval leave and turns it into a metrics record."""

    def __init__(self, task: TrainingTask, dist: DistContext, device: torch.device, precision: str,
                 comm_device: torch.device, peak_flops: float | None, log: MetricsLog, progress: Progress,
                 sequences: float = 0.0, tokens: float = 0.0):
        self.task, self.dist, self.device, self.precision, self.comm_device = task, dist, device, precision, comm_device
        self.peak_flops, self.peak_remeasures = peak_flops, 0
        self.log, self.progress = log, progress
        self.sequences, self.tokens = sequences, tokens  # checkpointed: totals over the whole run
        self._reset()

    def _reset(self) -> None:
        self.count_keys: list[str] = []
        self.stat_sums: dict[str, torch.Tensor] = {}
        self.counts_sum: torch.Tensor | None = None
        self.grad_norm_sum, self.steps, self.paused_s = 0.0, 0, 0.0
        self.interval_start = time.monotonic()

    def add(self, result: StepResult) -> None:
        self.count_keys = result.count_keys
        self.counts_sum = result.counts if self.counts_sum is None else self.counts_sum + result.counts
        for key, value in result.stats.items():
            self.stat_sums[key] = self.stat_sums[key] + value if key in self.stat_sums else value
        if math.isfinite(result.grad_norm):
            self.grad_norm_sum += result.grad_norm
        self.steps += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (evaluation, checkpoints) is not training throughput."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.paused_s += time.monotonic() - start

    def report(self, step: int, lr: float, train_seconds: Callable[[], float], skipped_steps: int) -> dict[str, Any]:
        """Read the interval's sums off the device, log them (rank 0) and start a new interval."""
        runtime.synchronize(self.device)
        keys = sorted(self.stat_sums)
        stat_vector = self.dist.all_reduce_sum(torch.stack([self.stat_sums[k] for k in keys]).double()
                                               .to(self.comm_device))
        metrics = self.task.summarize(dict(zip(keys, stat_vector.tolist())))
        throughput = dict(zip(self.count_keys, self.counts_sum.tolist()))
        seconds = max(time.monotonic() - self.interval_start - self.paused_s, 1e-9)
        self.sequences += throughput["sequences"]
        self.tokens += throughput["tokens"]
        record = {"split": "train", "step": step, **metrics, "lr": lr,
                  "grad_norm": self.grad_norm_sum / max(self.steps, 1),
                  "seq_per_s": throughput["sequences"] / seconds, "tokens_per_s": throughput["tokens"] / seconds}
        if self.peak_flops and "flops" in throughput:
            record["mfu"] = self._mfu(throughput["flops"] / seconds / self.dist.world_size)
        record["elapsed_s"] = round(train_seconds(), 2)
        if skipped_steps:
            record["skipped_steps"] = skipped_steps
        if self.dist.is_main:
            self.log.write(record)
            self.progress.show(record, SHOWN)
        self._reset()
        return record

    def _mfu(self, achieved: float) -> float:
        if achieved > self.peak_flops and self.peak_remeasures < MAX_PEAK_REMEASURES:
            self.peak_remeasures += 1
            # The peak was measured while something else used the machine: measure again.
            self.peak_flops = max(self.peak_flops, runtime.measure_peak_flops(self.device, self.precision))
            self.progress.write(f"peak {self.precision} matmul re-measured: {self.peak_flops / 1e9:,.1f} GFLOP/s")
        return achieved / self.peak_flops


__all__ = ["Meter"]
