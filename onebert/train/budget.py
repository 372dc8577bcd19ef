"""When training ends: --max-steps, the --max-time budget, and stop requests (Ctrl-C, SIGTERM).

Time budget. With `max_time`, training stops when the budget is spent (measured from the start of
the run, across resumes). After a few steps the budget estimates the total number of steps from the
measured step time (evaluation and checkpoint time included, amortised) and re-fits the schedule so
the learning rate decays to 0 at the estimated end; it re-fits at every logging step. All ranks
agree on every decision (one all-reduce per step), so they stop at the same step.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import torch

from onebert.train.config import TrainConfig
from onebert.train.distributed import DistContext
from onebert.train.metrics_log import Progress
from onebert.train.optim import LRSchedule

PLANNED_STEPS = 1_000_000  # the schedule's length under a pure time budget until its first estimate


def warmup_steps(config: TrainConfig, total: int) -> int:
    if config.warmup_steps is not None:
        return config.warmup_steps
    if config.warmup_ratio is not None:
        return round(config.warmup_ratio * total)
    return 0


def initial_schedule(config: TrainConfig) -> LRSchedule:
    planned_total = config.max_steps or PLANNED_STEPS  # a time budget re-fits this after its first estimate
    return LRSchedule(config.lr, warmup_steps(config, planned_total), max(planned_total, 1), kind=config.schedule)


def refit_after_resume(schedule: LRSchedule, step: int, config: TrainConfig) -> None:
    if config.max_steps is not None and config.max_time is None and schedule.total_steps != config.max_steps:
        schedule.refit(step, config.max_steps)  # --max-steps changed on resume: decay to the new end


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads between steps, so a stop never splits a step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            self._previous.clear()
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Budget:
    """The run's clock and end: started when the loop starts, carried across resumes."""

    def __init__(self, config: TrainConfig, step: int, seconds_before: float, dist: DistContext,
                 comm_device: torch.device):
        self.config, self.dist, self.comm_device = config, dist, comm_device
        self.start_step, self.seconds_before = step, seconds_before
        self.start_time = time.monotonic()
        self.estimate_start: tuple[int, float] | None = None

    def train_seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.start_time

    def reached(self, step: int, schedule: LRSchedule) -> bool:
        """Checked before each step: the step limit, or the end the time budget estimated."""
        if self.config.max_steps is not None and step >= self.config.max_steps:
            return True
        return step >= schedule.total_steps and self.config.max_time is not None

    def _estimate(self, step: int) -> tuple[bool, int]:
        """(time spent?, a new estimate of the total steps or 0) on this rank."""
        config = self.config
        if config.max_time is None:
            return False, 0
        elapsed = self.train_seconds()
        per_step = None
        if self.estimate_start is None and step >= self.start_step + config.estimate_after:
            # A first, rough estimate (it includes start-up costs such as compilation), so
            # that warm-up starts now; later estimates time the steps after this one.
            self.estimate_start = (step, elapsed)
            per_step = (elapsed - self.seconds_before) / (step - self.start_step)
        elif self.estimate_start is not None and step % config.log_every == 0:
            per_step = (elapsed - self.estimate_start[1]) / max(step - self.estimate_start[0], 1)
        new_total = 0
        if per_step is not None:
            new_total = step + int(max(config.max_time - elapsed, 0.0) / max(per_step, 1e-9))
            if config.max_steps is not None:
                new_total = min(new_total, config.max_steps)
        return elapsed >= config.max_time, new_total

    def agree(self, step: int, stop_requested: bool, schedule: LRSchedule, progress: Progress) -> tuple[bool, bool]:
        """After each step, all ranks together: (stop requested?, time spent?); re-fits the schedule."""
        time_up, new_total = self._estimate(step)
        flags = torch.tensor([float(stop_requested), float(time_up), float(new_total)], dtype=torch.float64,
                             device=self.comm_device)
        interrupt, time_up_all, agreed_total = self.dist.all_reduce_max(flags).tolist()
        if agreed_total > 0:
            schedule.refit(step, int(agreed_total), self.config.warmup_ratio)
            progress.set_total(schedule.total_steps)
        return bool(interrupt), bool(time_up_all)


__all__ = ["Budget", "StopRequest", "initial_schedule", "refit_after_resume", "warmup_steps"]
