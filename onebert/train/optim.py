"""AdamW with BERT's parameter groups, and the learning-rate schedule.

Parameter groups follow the original BERT optimizer (google-research/bert, optimization.py): no
weight decay on biases and LayerNorm weights, decay on everything else (the embeddings included).
We pick LayerNorms by module type rather than by name, so a renamed norm cannot slip into decay.

The schedule is a pure function of the update number u = 1, 2, ..., T:
  warm-up   lr = peak * u / W                       for u <= W
  decay     lr = peak * f_A * shape((u - A) / (T - A))   for u > W
with shape(p) = 1 - p (linear), (1 + cos(pi p)) / 2 (cosine) or 1 (constant), anchor A = W and
f_A = 1 until a re-fit. `refit(u, T')` is how a time budget (`--max-time`) ends on time: once the
step time is known the loop estimates the total T' and re-anchors the decay at the current step and
its current factor, so the learning rate stays continuous and still reaches 0 at the (new) end.
This is the academic-budget recipe (Izsak et al., 2021, "How to Train BERT with an Academic
Budget"): the decay is fitted to the time available rather than to a step count guessed up front.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from onebert.errors import OneBertError

SCHEDULES = ("linear", "cosine", "constant")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and biases + LayerNorm parameters without decay."""
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():  # tied weights appear once
        if not param.requires_grad:
            continue
        if id(param) in no_decay_ids or name.endswith("bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-6) -> torch.optim.AdamW:
    """AdamW with one fused kernel for all parameters where this PyTorch has one, else the foreach path.

    eps = 1e-6 as in BERT (the PyTorch default 1e-8 is for image models).
    """
    groups = parameter_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    defaults = optimizer.defaults
    return "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") else "for-loop"


@dataclass
class LRSchedule:
    """Warm-up then decay; its whole state is these fields, saved in checkpoints as plain numbers."""

    peak_lr: float
    warmup_steps: int
    total_steps: int
    kind: str = "linear"
    anchor_step: int = 0
    anchor_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise OneBertError(f"--schedule: unknown schedule '{self.kind}' (choose one of {', '.join(SCHEDULES)})")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise OneBertError(f"schedule: need warmup_steps >= 0 and total_steps >= 1, "
                               f"got {self.warmup_steps} and {self.total_steps}")
        self.anchor_step = max(self.anchor_step, self.warmup_steps)

    def factor(self, update: int) -> float:
        """The multiplier of the peak learning rate for update number `update` (1-based)."""
        if update < self.warmup_steps:
            return update / self.warmup_steps
        if self.kind == "constant":
            return self.anchor_factor
        span = self.total_steps - self.anchor_step
        progress = 1.0 if span <= 0 else min(1.0, max(0.0, (update - self.anchor_step) / span))
        shape = 1.0 - progress if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.anchor_factor * shape

    def lr(self, update: int) -> float:
        return self.peak_lr * self.factor(update)

    def refit(self, update: int, total_steps: int, warmup_ratio: float | None = None) -> None:
        """Make the schedule end at `total_steps`, continuous at `update` (the last update done).

        While still warming up, a warm-up given as a ratio is re-derived from the new total; after
        it, the decay is re-anchored here so the learning rate does not jump.
        """
        total_steps = max(total_steps, update + 1)
        if update < self.warmup_steps:
            if warmup_ratio is not None:
                self.warmup_steps = max(update + 1, round(warmup_ratio * total_steps))
            self.anchor_step = self.warmup_steps
            self.total_steps = max(total_steps, self.warmup_steps + 1)
            return
        self.anchor_factor = self.factor(update)
        self.anchor_step = update
        self.total_steps = total_steps

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
