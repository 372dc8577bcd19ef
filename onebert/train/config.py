"""The trainer's options (`TrainConfig`); the commands map their flags onto these fields."""

from __future__ import annotations

from dataclasses import dataclass

from onebert.errors import OneBertError


@dataclass
class TrainConfig:
    """The loop's options; the commands map their flags onto these fields."""

    output_dir: str
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    schedule: str = "linear"
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-6
    max_grad_norm: float | None = 1.0
    seed: int = 42
    save_every: int | None = None
    keep_last: int = 3
    eval_every: int | None = None
    log_every: int = 10
    resume: str | None = None  # None, "auto" or a checkpoint directory
    precision: str = "auto"
    compile: bool = False
    ipex: bool = False
    device: str = "auto"
    max_nonfinite: int = 5  # consecutive non-finite steps before stopping
    estimate_after: int = 5  # steps before the time budget's first estimate (warm-up, compilation)
    measure_mfu: bool = True

    def validate(self) -> None:
        if self.max_steps is None and self.max_time is None:
            raise OneBertError("give --max-steps or --max-time (or both): training needs an end")
        for name in ("max_steps", "grad_accum", "log_every", "save_every", "eval_every", "keep_last", "estimate_after"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise OneBertError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.max_nonfinite, int) or self.max_nonfinite < 1:
            raise OneBertError(f"--max-bad-steps must be a positive integer, got {self.max_nonfinite!r}")
        if self.max_time is not None and self.max_time <= 0:
            raise OneBertError(f"--max-time must be positive, got {self.max_time!r} seconds")
        if not self.lr > 0:
            raise OneBertError(f"--lr must be positive, got {self.lr!r}")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise OneBertError("give --warmup-steps or --warmup-ratio, not both")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise OneBertError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise OneBertError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise OneBertError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise OneBertError(f"--max-grad-norm must be positive, got {self.max_grad_norm}")


__all__ = ["TrainConfig"]
