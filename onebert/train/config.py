"""The trainer's options (`TrainConfig`): each field that is a command-line option declares its flag, range and
help here, once; onebert/cli/options.py generates pretrain's and finetune's flags from these declarations and
`TrainConfig.from_options` maps parsed flags back onto the fields, so nothing is mapped by hand."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from onebert import ranges
from onebert.errors import OneBertError
from onebert.train.tracking import HELP as TRACKING_HELP


def option(default: Any, help: str, *, type: Any = None, flag: str | None = None, **argparse_kwargs: Any) -> Any:
    """A field that is also a command-line option: `flag` (default --field-name), argparse `type` (a range from
    onebert/ranges.py for every number), `help`, and any other add_argument keyword (choices, nargs, const)."""
    return field(default=default, metadata={"option": {"flag": flag, "type": type, "help": help, **argparse_kwargs}})


@dataclass
class TrainConfig:
    """The loop's options. Fields with option metadata are flags of `onebert pretrain` and `onebert finetune`."""

    output_dir: str
    max_steps: int | None = option(None, "optimizer steps to train", type=ranges.POSITIVE_INT)
    max_time: float | None = option(  # seconds
        None, "time budget (e.g. 30m, 2h): stop on time, learning-rate decay fitted to the budget",
        type=ranges.DURATION, metavar="DURATION")
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step", type=ranges.POSITIVE_INT)
    lr: float = option(1e-4, "peak learning rate (AdamW)", type=ranges.POSITIVE)
    warmup_steps: int | None = option(None, "linear warm-up steps (instead of --warmup-ratio)",
                                      type=ranges.NON_NEGATIVE_INT)
    warmup_ratio: float | None = option(None, "linear warm-up as a fraction of all steps", type=ranges.WARMUP_RATIO)
    schedule: str = option("linear", "decay after warm-up (to 0 at the end)",
                           choices=("linear", "cosine", "constant"))
    weight_decay: float = option(0.01, "AdamW weight decay (not on bias/LayerNorm)", type=ranges.NON_NEGATIVE)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = option(1e-6, "AdamW epsilon", type=ranges.POSITIVE)
    max_grad_norm: float | None = option(1.0, "gradient clipping threshold", type=ranges.POSITIVE)
    seed: int = option(42, "seeds weights, data order, masks and dropout", type=ranges.SEED)
    save_every: int | None = option(
        None, "steps between resumable checkpoints (and one at the end or on Ctrl-C); 0: no resumable "
        "checkpoints at all (the final model is still written)", type=ranges.NON_NEGATIVE_INT)
    keep_last: int = option(3, "resumable checkpoints kept; 0: none are written (the final model still is)",
                            type=ranges.NON_NEGATIVE_INT)
    eval_every: int | None = option(None, "steps between evaluations (and at the end)", type=ranges.POSITIVE_INT)
    log_every: int = option(10, "steps between metric lines", type=ranges.POSITIVE_INT)
    resume: str | None = option(  # None, "auto" or a checkpoint directory
        None, "continue an interrupted run: 'auto' (or the bare flag) = the newest intact checkpoint in the run "
        "directory", nargs="?", const="auto", metavar="auto|CHECKPOINT")
    precision: str = "auto"  # --precision, --device, --compile: onebert/cli/options.py add_runtime_options
    compile: bool = False
    ipex: bool = option(False, "optimize with Intel Extension for PyTorch (must be installed)", action="store_true")
    device: str = "auto"
    max_nonfinite: int = option(  # consecutive non-finite steps before stopping
        5, "a step whose loss or gradients are NaN/inf is skipped (and logged); this many in a row stop the run "
        "with a message (1: stop at the first)", type=ranges.POSITIVE_INT, flag="--max-bad-steps")
    estimate_after: int = 5  # steps before the time budget's first estimate (warm-up, compilation)
    measure_mfu: bool = True
    # Experiment trackers besides metrics.jsonl: "tensorboard", "wandb", "mlflow" (a list or a comma-separated
    # string; None or "none": none). See onebert.train.tracking.
    report_to: str | list[str] | None = option(None, TRACKING_HELP, nargs="+", metavar="NAME")
    # Stop after this many evaluations in a row without improvement of the task's validation metric
    # (fine-tuning; None: never). The count is checkpointed, so a resumed run stops where this one would.
    early_stopping_patience: int | None = option(
        None, "stop after N validations in a row without improvement of --metric (the best model stays in "
        "OUTPUT/best; needs --validation; the count carries over a --resume)", type=ranges.POSITIVE_INT, metavar="N")

    @property
    def keeps_checkpoints(self) -> bool:
        """False for --keep-last 0 or --save-every 0: the run writes no resumable checkpoint, only its model."""
        return self.keep_last != 0 and self.save_every != 0

    @classmethod
    def from_options(cls, values: Mapping[str, Any] | Any, **overrides: Any) -> "TrainConfig":
        """The config from parsed options (an argparse Namespace or a dict keyed by option dest): every field
        whose option is present is taken, the rest keep their defaults; `overrides` win over both."""
        get = values.get if isinstance(values, Mapping) else (lambda key, default: getattr(values, key, default))
        missing = object()
        taken: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            dest = option_dest(item) if "option" in item.metadata else item.name
            value = get(dest, missing)
            if value is not missing and item.name != "output_dir":
                taken[item.name] = value
        taken.update(overrides)
        return cls(**taken)

    def validate(self) -> None:
        """Refuse settings no run can use, with the ranges the command-line options declare (the fields' option
        metadata): the Python API gets the same protection as the CLI (nan or inf would train a NaN model)."""
        if self.max_steps is None and self.max_time is None:
            raise OneBertError("give --max-steps or --max-time (or both): training needs an end")
        for item in dataclasses.fields(self):
            spec = item.metadata.get("option", {})
            value = getattr(self, item.name)
            if isinstance(spec.get("type"), ranges.RangedType) and value is not None:
                spec["type"].range.check(value, option_flag(item))
        ranges.POSITIVE_INT.range.check(self.estimate_after, "estimate_after")
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise OneBertError("give --warmup-steps or --warmup-ratio, not both")
        for beta in self.adam_betas:
            ranges.Range(min=0, max=1, max_inclusive=False).check(beta, "adam_betas")
        from onebert.train.tracking import check_installed, parse_report_to

        check_installed(parse_report_to(self.report_to))


def option_flag(item: dataclasses.Field) -> str:
    """The command-line flag of a TrainConfig field: declared, else --field-name."""
    return item.metadata["option"]["flag"] or f"--{item.name.replace('_', '-')}"


def option_dest(item: dataclasses.Field) -> str:
    """The argparse dest of a field's flag (--max-bad-steps -> max_bad_steps)."""
    return option_flag(item).lstrip("-").replace("-", "_")


def option_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields that are command-line options, in declaration order."""
    return [item for item in dataclasses.fields(TrainConfig) if "option" in item.metadata]


__all__ = ["TrainConfig", "option_dest", "option_fields", "option_flag"]
