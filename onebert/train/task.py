"""What the trainer needs from a job: the `TrainingTask` interface (pretraining, fine-tuning)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from onebert.train.distributed import DistContext

Batch = dict[str, torch.Tensor]


class TrainingTask:
    """What the loop needs from a job. Subclasses: `onebert.train.pretraining.PretrainingTask`, fine-tuning tasks.

    `train_batches()` is an endless iterator of CPU micro-batches for this rank; `data_state()` is
    the position after the last batch it yielded and `load_data_state()` restores it, so a resumed
    run sees exactly the batches the interrupted one would have.
    """

    batch_size: int = 1  # sequences per micro-batch on one rank (for the printed global batch)
    percent_metrics: tuple[str, ...] = ()  # endings of metric names in percent 0-100 (for the console lines)

    def train_batches(self) -> Iterator[Batch]:
        raise NotImplementedError

    def data_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_data_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def count(self, batch: Batch) -> dict[str, float]:
        """Per-micro-batch counts, summed over the step's micro-batches and ranks before the forward passes.

        Must include "sequences" and "tokens" (real tokens); "flops" enables MFU; other keys are the
        loss normalisers (e.g. the number of masked tokens).
        """
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch, totals: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-batch's share of the step loss (its sum divided by the global totals), and
        statistics as summed 0-dim tensors (e.g. mlm_loss_sum, mlm_correct) to be reported."""
        raise NotImplementedError

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn summed statistics (train or eval) into reported metrics (losses, accuracies)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, autocast: contextlib.AbstractContextManager, device: torch.device,
                 dist: DistContext) -> dict[str, float] | None:
        """Summed statistics over this rank's part of the held-out data (None: no held-out data)."""
        return None

    def on_evaluate(self, step: int, metrics: dict[str, float], model: nn.Module, run_dir: Path) -> bool | None:
        """Called on rank 0 after each evaluation (fine-tuning keeps its best model here). Returns whether the
        validation metric improved (what --early-stopping-patience counts), None where nothing is tracked."""
        return None

    def save_final(self, model: nn.Module, directory: Path) -> None:
        """Write the trained model where users pick it up (a HuggingFace-layout directory)."""
        model.save_pretrained(directory)


__all__ = ["Batch", "TrainingTask"]
