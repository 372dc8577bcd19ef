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
    # Experiment trackers besides metrics.jsonl: "tensorboard", "wandb", "mlflow" (a list or a comma-separated
    # string; None or "none": none). See onebert.train.tracking.
    report_to: str | list[str] | None = None
    # Stop after this many evaluations in a row without improvement of the task's validation metric
    # (fine-tuning; None: never). The count is checkpointed, so a resumed run stops where this one would.
    early_stopping_patience: int | None = None

    def validate(self) -> None:
        """Refuse settings no run can use, with the ranges the command-line options declare (onebert/ranges.py):
        the Python API gets the same protection as the CLI (nan or inf would train a NaN model)."""
        from onebert import ranges

        if self.max_steps is None and self.max_time is None:
            raise OneBertError("give --max-steps or --max-time (or both): training needs an end")
        for name in ("max_steps", "grad_accum", "log_every", "save_every", "eval_every", "keep_last", "estimate_after"):
            value = getattr(self, name)
            if value is not None:
                ranges.POSITIVE_INT.range.check(value, f"--{name.replace('_', '-')}")
        ranges.POSITIVE_INT.range.check(self.max_nonfinite, "--max-bad-steps")
        if self.max_time is not None:
            ranges.TIME_BUDGET.check(self.max_time, "--max-time")
        ranges.POSITIVE.range.check(self.lr, "--lr")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise OneBertError("give --warmup-steps or --warmup-ratio, not both")
        if self.warmup_steps is not None:
            ranges.NON_NEGATIVE_INT.range.check(self.warmup_steps, "--warmup-steps")
        if self.warmup_ratio is not None:
            ranges.WARMUP_RATIO.range.check(self.warmup_ratio, "--warmup-ratio")
        ranges.NON_NEGATIVE.range.check(self.weight_decay, "--weight-decay")
        ranges.POSITIVE.range.check(self.adam_eps, "--adam-eps")
        for beta in self.adam_betas:
            ranges.Range(min=0, max=1, max_inclusive=False).check(beta, "adam_betas")
        if self.max_grad_norm is not None:
            ranges.POSITIVE.range.check(self.max_grad_norm, "--max-grad-norm")
        ranges.SEED.range.check(self.seed, "--seed")
        if self.early_stopping_patience is not None:
            ranges.POSITIVE_INT.range.check(self.early_stopping_patience, "--early-stopping-patience")
        from onebert.train.tracking import check_installed, parse_report_to

        check_installed(parse_report_to(self.report_to))


__all__ = ["TrainConfig"]
