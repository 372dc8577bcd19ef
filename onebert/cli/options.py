"""Options several commands share, declared once: the runtime (--device, --precision, --compile), the training
loop's options (generated from the TrainConfig fields, onebert/train/config.py), the help formatter, and the
hints for options users bring from transformers' scripts.

Before this module every command declared its own --device and --precision: pretrain defaulted to
auto and the others to fp32, finetune refused --device cuda:1 that embed accepted. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Any, Iterable, Mapping, Sequence

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")  # onebert.infer.engines.RUNTIMES (this module imports no torch)
DEVICE_KINDS = ("auto", "cpu", "cuda", "xpu", "mps")
DEVICE_HELP = "where to run: auto (cuda, else xpu, else mps, else cpu), cpu, cuda, cuda:N, xpu, xpu:N or mps"
PRECISION_HELP = ("number format of the forward pass: auto (on a GPU bf16, or fp16 without it; on a CPU with "
                  "native bf16 the faster of fp32 and bf16 autocast, timed on the run's first batch and remembered "
                  "per machine and model shape; a resumed run keeps its precision; fp32 elsewhere), fp32, bf16 or "
                  "fp16 (CUDA/XPU only)")
INFERENCE_PRECISION_HELP = (
    "number format of the model: auto (on a GPU bf16; on a CPU fp32, or for classification and NER the faster "
    "of fp32 and bf16 where the CPU has native bf16, measured on this machine for this model; regression, QA "
    "and embeddings stay fp32), fp32, bf16, fp16 (CUDA/XPU) or int8 (CPU: dynamic int8 quantization on "
    "onnxruntime)")
RUNTIME_HELP = ("what runs the model: auto (the fastest of those installed here, measured once per machine and "
                "model shape and remembered in ~/.cache/onebert, or $ONEBERT_RUNTIME when set), torch, onnxruntime "
                "or openvino (the model's ONNX export, made once and cached; CPU only)")


def check_device(text: str) -> str:
    """--device on every command: 'auto', 'cpu', 'mps', 'cuda', 'xpu', or 'cuda:N' / 'xpu:N' for one device.
    Checked after parsing (not as an argparse type: tests/test_option_ranges.py keeps custom types for numbers)."""
    from onebert.errors import OneBertError, show_value

    value = str(text).strip().lower()
    if value in DEVICE_KINDS or re.fullmatch(r"(cuda|xpu):\d{1,3}", value):
        return value
    raise OneBertError(f"--device: not a device: {show_value(text)} (choose {', '.join(DEVICE_KINDS)}, cuda:N "
                       "or xpu:N)")


def add_runtime_options(parser: argparse.ArgumentParser | Any, *, precision: bool = True, compile: bool = False,
                        bf16_alias: bool = False, inference: bool = False) -> None:
    """--device (every command that loads a model), --precision (one default, auto, everywhere), --compile.

    `inference`: the inference commands' --precision (int8 too) and --runtime (onebert.infer.engines).
    `bf16_alias` keeps the old --bf16 flag of the commands that had it, as a deprecated spelling of
    --precision bf16 (resolved by `finish_runtime_options` after parsing)."""
    parser.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    if precision:
        parser.add_argument("--precision", choices=INFERENCE_PRECISIONS if inference else PRECISIONS, default="auto",
                            help=INFERENCE_PRECISION_HELP if inference else PRECISION_HELP)
    if inference:
        parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    if bf16_alias:
        parser.add_argument("--bf16", action="store_true", help="deprecated: the same as --precision bf16")
    if compile:
        parser.add_argument("--compile", action="store_true", help="torch.compile the model")


def finish_runtime_options(args: argparse.Namespace, prog: str) -> None:
    """Check --device; fold the deprecated --bf16 into --precision (saying so on stderr), refusing it beside
    another precision."""
    from onebert.errors import OneBertError

    if hasattr(args, "device"):
        args.device = check_device(args.device)
    if not getattr(args, "bf16", False):
        return
    if args.precision not in ("auto", "bf16"):
        raise OneBertError(f"--bf16 contradicts --precision {args.precision}")
    print(f"{prog}: --bf16 is deprecated; use --precision bf16", file=sys.stderr)
    args.precision = "bf16"


def add_train_options(parser: argparse.ArgumentParser, groups: Mapping[str, Sequence[str]], *,
                      defaults: Mapping[str, Any] | None = None, helps: Mapping[str, str] | None = None) -> None:
    """The TrainConfig fields named in `groups` ({group title: [field, ...]}) as options, each with the range,
    help and flag its field declares; a command changes only `defaults` and, where its meaning differs, `helps`."""
    from onebert.train.config import option_fields, option_flag

    fields = {item.name: item for item in option_fields()}
    defaults, helps = dict(defaults or {}), dict(helps or {})
    for title, names in groups.items():
        # A group the command already made (its own options first) receives the loop's options too.
        group = next((g for g in parser._action_groups if g.title == title), None) or parser.add_argument_group(title)
        for name in names:
            item = fields[name]
            spec = dict(item.metadata["option"])
            spec.pop("flag")
            kwargs = {k: v for k, v in spec.items() if v is not None}
            if kwargs.get("action") != "store_true":
                kwargs["default"] = defaults.pop(name, item.default)
            kwargs["help"] = helps.pop(name, kwargs["help"])
            group.add_argument(option_flag(item), **kwargs)
    if defaults or helps:  # a typo in a command's table would otherwise be silently ignored
        raise ValueError(f"not TrainConfig options in these groups: {sorted({*defaults, *helps})}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that appends '(default: X)' only where X tells something: not for a required option,
    a None default ('(required) (default: None)' said nothing twice), a flag's False, or a help that says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or action.default in (None, False, argparse.SUPPRESS) or "(default" in text
                or "%(default)" in text or isinstance(action, argparse._VersionAction)):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


# The names transformers' example scripts (TrainingArguments, run_glue.py, ...) use, and onebert's.
TRANSFORMERS_NAMES: dict[str, str] = {
    "learning_rate": "--lr",
    "model_name_or_path": "--model",
    "num_train_epochs": "--epochs",
    "per_device_train_batch_size": "--batch-size",
    "per_device_eval_batch_size": "--eval-batch-size",
    "output_dir": "--output",
    "fp16": "--precision fp16",
    "bf16": "--precision bf16",
    "max_seq_length": "--max-seq-length",
    "warmup_ratio": "--warmup-ratio",
    "warmup_steps": "--warmup-steps",
    "weight_decay": "--weight-decay",
    "seed": "--seed",
    "gradient_accumulation_steps": "--grad-accum",
    "max_grad_norm": "--max-grad-norm",
    "lr_scheduler_type": "--schedule",
    "logging_steps": "--log-every",
    "eval_steps": "--eval-every",
    "save_steps": "--save-every",
    "save_total_limit": "--keep-last",
    "train_file": "--train",
    "validation_file": "--validation",
    "resume_from_checkpoint": "--resume",
    "overwrite_output_dir": "--overwrite",
}
IMPLIED = {"do_train": "training is what `onebert finetune` does", "do_eval": "validation runs when --validation "
           "is given", "do_predict": "use `onebert predict`"}


def suggest(name: str, known: Iterable[str], *, file_key: bool = False) -> str:
    """A hint for an unknown option `name` ('--learning_rate', 'learning-rate'): onebert's name for a
    transformers option, the dashed spelling of an underscored one, else the closest known option.
    `file_key`: the hint is for a config-file key, so names are said as keys ('lr', 'precision: fp16')."""
    known = [k for k in known if k.startswith("--")]
    bare = name.lstrip("-").split("=", 1)[0]
    key = bare.replace("-", "_").lower()

    def said(flag: str) -> str:
        if not file_key:
            return flag
        option, _, value = flag.lstrip("-").partition(" ")
        return f"'{option}: {value}'" if value else f"'{option}'"

    shown = f"'{bare}'" if file_key else f"--{bare}"
    if key in IMPLIED:
        return f"{shown} is not needed: {IMPLIED[key]}"
    target = TRANSFORMERS_NAMES.get(key)
    if target is not None and target.split()[0] in known:
        return f"{shown} is transformers' name; onebert's is {said(target)}"
    dashed = "--" + key.replace("_", "-")
    if dashed in known:
        return f"did you mean {said(dashed)}?"
    close = difflib.get_close_matches(dashed, known, n=1, cutoff=0.6)
    return f"did you mean {said(close[0])}?" if close else ""


def unrecognized_message(extras: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """argparse's 'unrecognized arguments: ...' with a hint for each unknown option among them."""
    known = [flag for action in parser._actions for flag in action.option_strings]
    hints = [hint for arg in extras if arg.startswith("-") and (hint := suggest(arg, known))]
    text = f"unrecognized arguments: {' '.join(extras)}"
    return text + ("; " + "; ".join(hints) if hints else "")


def option_help_missing(parser: argparse.ArgumentParser) -> list[str]:
    """Options of `parser` without a help text (a test walks every command with this)."""
    return [action.option_strings[0] if action.option_strings else action.dest for action in parser._actions
            if not (action.help or "").strip() and action.help is not argparse.SUPPRESS
            and not isinstance(action, argparse._SubParsersAction)]


__all__ = ["HelpFormatter", "add_runtime_options", "add_train_options", "finish_runtime_options", "check_device",
           "suggest", "unrecognized_message"]


def model_or_run_dir(path: str, prog: str) -> str:
    """--model as given, or for a run directory its best/ (else final/) model, said on stderr, so every command
    that reads a model takes what `onebert finetune --output` wrote. Anything else is returned unchanged for
    the command to report in its own words."""
    from pathlib import Path

    from onebert.errors import OneBertError

    from onebert.infer.predictor import resolve_model_dir
    try:
        resolved = resolve_model_dir(path)
    except OneBertError:
        return path
    if resolved != Path(path):
        print(f"{prog}: {path} is a run directory; using its {resolved.name}/ model ({resolved})", file=sys.stderr)
    return str(resolved)
