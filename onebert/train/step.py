"""One optimizer step: the step's micro-batches, loss normalisers, accumulation, clipping, bad-step skipping.

Loss normalisation. A step sees `grad_accum` micro-batches on each of `world_size` ranks. Before any
forward pass the step sums the task's counts (masked tokens, sequences, ...) over the micro-batches
and all-reduces them, and the task divides each micro-batch's summed loss by those global totals.
The gradients then add up to exactly those of one big batch, however unevenly the masked tokens
fall; DDP averages gradients over ranks, so each rank's loss is multiplied by world_size.

Host-device synchronisation. The step reads one number from the device: the gradient norm, which
decides whether the update is finite (a non-finite one is skipped and counted; several in a row stop
the run). Metrics stay on the device and are read on logging steps only (`onebert.train.meter`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from onebert.errors import OneBertError
from onebert.train.distributed import DistContext
from onebert.train.optim import set_lr
from onebert.train.task import Batch, TrainingTask


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def step_totals(task: TrainingTask, micro: list[Batch], dist: DistContext,
                comm_device: torch.device) -> tuple[list[str], torch.Tensor, dict[str, Any]]:
    """The task's counts summed over a step's micro-batches and all ranks: the loss normalisers.

    On a CPU the totals are plain floats; on a GPU they stay 0-dim device tensors, so reading them
    costs no synchronisation.
    """
    counts = [task.count(b) for b in micro]
    keys = sorted(counts[0])
    missing = [k for k in ("sequences", "tokens") if k not in keys]
    if missing:
        raise ValueError(f"{type(task).__name__}.count() must report {missing}")
    vector = dist.all_reduce_sum(torch.tensor([sum(c[k] for c in counts) for k in keys], dtype=torch.float64,
                                              device=comm_device))
    if comm_device.type == "cpu":
        return keys, vector, dict(zip(keys, vector.tolist()))
    return keys, vector, dict(zip(keys, vector.float().unbind()))


def accumulate_gradients(task: TrainingTask, model_fn: nn.Module, micro: list[Batch], totals: dict[str, Any],
                         device: torch.device, autocast: contextlib.AbstractContextManager,
                         scaler: "torch.amp.GradScaler", dist: DistContext) -> dict[str, torch.Tensor]:
    """Forward and backward over the step's micro-batches; .grad then holds the whole global batch's gradient.

    Each micro-batch's loss is already its share of the global sum (see the module docstring), so
    the gradients simply add up. DDP averages over ranks, hence the factor world_size; it
    all-reduces on the last micro-batch only.
    """
    stats: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro):
        batch = to_device(batch, device)
        last = i == len(micro) - 1
        no_sync = model_fn.no_sync() if dist.enabled and not last else contextlib.nullcontext()
        with no_sync:
            with autocast:
                loss, micro_stats = task.loss(model_fn, batch, totals)
            scaler.scale(loss * dist.world_size).backward()
        for key, value in micro_stats.items():
            value = value.detach().float()
            stats[key] = stats[key] + value if key in stats else value
    return stats


@dataclass
class StepResult:
    """What one step leaves for the meter; everything but the gradient norm is still on the device."""

    count_keys: list[str]
    counts: torch.Tensor  # the global counts, in count_keys order
    stats: dict[str, torch.Tensor]  # the task's summed statistics
    grad_norm: float  # non-finite: the update was skipped


class OptimizerStep:
    """Calling it runs one optimizer step on the next `grad_accum` micro-batches of `batches`."""

    def __init__(self, task: TrainingTask, model_fn: nn.Module, params: list[torch.nn.Parameter],
                 optimizer: torch.optim.Optimizer, scaler: "torch.amp.GradScaler", *, device: torch.device,
                 autocast: contextlib.AbstractContextManager, dist: DistContext, comm_device: torch.device,
                 grad_accum: int, max_grad_norm: float | None, max_nonfinite: int, skipped_steps: int = 0,
                 write: Callable[[str], None] = print):
        self.task, self.model_fn, self.params, self.optimizer, self.scaler = task, model_fn, params, optimizer, scaler
        self.device, self.autocast, self.dist, self.comm_device = device, autocast, dist, comm_device
        self.grad_accum, self.max_grad_norm, self.max_nonfinite = grad_accum, max_grad_norm, max_nonfinite
        self.skipped_steps = skipped_steps  # checkpointed: counts over the whole run
        self.nonfinite_in_a_row = 0
        self.write = write

    def __call__(self, batches: Iterator[Batch], step: int, lr: float) -> StepResult:
        # Fetch the whole step's micro-batches first: the loss normaliser needs all their counts.
        micro = [next(batches) for _ in range(self.grad_accum)]
        count_keys, counts, totals = step_totals(self.task, micro, self.dist, self.comm_device)
        set_lr(self.optimizer, lr)
        stats = self._accumulate(micro, totals, step)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm or float("inf"))
        grad_norm_value = float(grad_norm)  # the step's one host-device sync (see module docstring)
        self._update(grad_norm_value, step)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(count_keys, counts, stats, grad_norm_value)

    def _accumulate(self, micro: list[Batch], totals: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        try:
            return accumulate_gradients(self.task, self.model_fn, micro, totals, self.device, self.autocast,
                                        self.scaler, self.dist)
        except RuntimeError as exc:  # torch.OutOfMemoryError on GPUs; a plain RuntimeError from the CPU allocator
            if not isinstance(exc, torch.OutOfMemoryError) and "can't allocate memory" not in str(exc):
                raise
            batch_size = self.task.batch_size
            raise OneBertError(f"step {step + 1}: out of {self.device.type} memory with {batch_size} sequences "
                               f"per micro-batch; use a smaller --batch-size and a larger --grad-accum (the same "
                               f"global batch of {batch_size * self.dist.world_size * self.grad_accum})") from None

    def _update(self, grad_norm: float, step: int) -> None:
        """Apply the update if the gradients are finite; skip and count it if not."""
        if math.isfinite(grad_norm):
            self.scaler.step(self.optimizer)
            self.nonfinite_in_a_row = 0
        elif self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # fp16 overflow: the scaler skips the update and lowers its scale
        else:
            self.skipped_steps += 1
            self.nonfinite_in_a_row += 1
            self.write(f"step {step + 1}: non-finite gradient norm ({grad_norm}); update skipped")
            if self.nonfinite_in_a_row >= self.max_nonfinite:
                raise OneBertError(f"step {step + 1}: the loss or gradients were non-finite for "
                                   f"{self.nonfinite_in_a_row} steps in a row; lower --lr, use --precision fp32, "
                                   "or resume from an earlier checkpoint")


__all__ = ["OptimizerStep", "StepResult", "accumulate_gradients", "step_totals", "to_device"]
