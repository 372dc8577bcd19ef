"""`onebert pretrain`: train a BERT from scratch (masked LM + next-sentence prediction) on prepared data."""

from __future__ import annotations

import argparse
import re

from onebert import ranges

HELP = "pretrain a BERT (MLM + NSP) on a data directory from `onebert prepare`"
DESCRIPTION = (
    "Pretrain a BERT from random weights on a data directory written by `onebert prepare`. Checkpoints "
    "(RUN_DIR/checkpoints) allow an exact --resume; metrics go to RUN_DIR/metrics.jsonl (plot them with "
    "`onebert plot RUN_DIR`); the trained model is written to RUN_DIR/final in HuggingFace layout. "
    "Several processes: torchrun --nproc_per_node=N -m onebert pretrain ... "
    "(global batch = --batch-size x N x --grad-accum). "
    "Example: onebert pretrain --data data/ --model-config mini --output runs/mini --max-time 30m")


def parse_duration(text: str) -> float:
    """Seconds from '90', '90s', '30m', '1.5h', '1h30m', '2d'."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", value)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhd])", "", value).strip():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 90s, 30m, 1h30m, 2h)")
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(number) * scale[unit] for number, unit in parts)


# '1' followed by 400 zeros parses to inf seconds: durations are range-checked like every number.
_MAX_TIME = ranges.RangedType(ranges.TIME_BUDGET, parse=parse_duration, what="a duration")


def tracking_help() -> str:
    from onebert.train.tracking import HELP as TRACKING_HELP

    return TRACKING_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from onebert.model.config import PRESETS

    io = parser.add_argument_group("data, model and output")
    io.add_argument("--data", metavar="DATA_DIR", help="a data directory written by `onebert prepare` (required)")
    io.add_argument("--model-config", default="mini", metavar="NAME|FILE",
                    help=f"a preset ({', '.join(PRESETS)}; takes the data's vocabulary size) or a config.json")
    io.add_argument("--output", metavar="RUN_DIR",
                    help="the run directory: checkpoints, metrics, final model (required; new, empty or an "
                         "earlier run's)")
    io.add_argument("--resume", nargs="?", const="auto", default=None, metavar="auto|CHECKPOINT",
                    help="continue a run: 'auto' (or the bare flag) = the newest intact checkpoint in RUN_DIR")

    length = parser.add_argument_group("length and batch")
    length.add_argument("--max-steps", type=ranges.POSITIVE_INT, default=None, help="optimizer steps to train")
    length.add_argument("--max-time", type=_MAX_TIME, default=None, metavar="DURATION",
                        help="time budget (e.g. 30m, 2h): stop on time, learning-rate decay fitted to the budget")
    length.add_argument("--batch-size", type=ranges.POSITIVE_INT, default=32,
                        help="sequences per micro-batch on each process")
    length.add_argument("--grad-accum", type=ranges.POSITIVE_INT, default=1,
                        help="micro-batches accumulated per optimizer step")

    optim = parser.add_argument_group("optimizer")
    optim.add_argument("--lr", type=ranges.POSITIVE, default=1e-4, help="peak learning rate (AdamW)")
    optim.add_argument("--warmup-steps", type=ranges.NON_NEGATIVE_INT, default=None, help="linear warm-up steps")
    optim.add_argument("--warmup-ratio", type=ranges.WARMUP_RATIO, default=None,
                       help="warm-up as a fraction of all steps (default 0.06 when no --warmup-steps)")
    optim.add_argument("--schedule", choices=("linear", "cosine", "constant"), default="linear",
                       help="decay after warm-up (to 0 at the end)")
    optim.add_argument("--weight-decay", type=ranges.NON_NEGATIVE, default=0.01,
                       help="AdamW weight decay (not on bias/LayerNorm)")
    optim.add_argument("--max-grad-norm", type=ranges.POSITIVE, default=1.0, help="gradient clipping threshold")
    optim.add_argument("--max-bad-steps", type=ranges.POSITIVE_INT, default=5,
                       help="a step whose loss or gradients are NaN/inf is skipped (and logged); this many "
                            "in a row stop the run with a message (1: stop at the first)")
    optim.add_argument("--seed", type=ranges.SEED, default=42, help="seeds weights, data order, masks and dropout")

    masking = parser.add_argument_group("masking")
    masking.add_argument("--mlm-probability", type=ranges.number(0, 1, min_inclusive=False, max_inclusive=False),
                         default=0.15,
                         help="fraction of tokens predicted in training (evaluation always uses 0.15)")
    masking.add_argument("--max-predictions", type=ranges.POSITIVE_INT, default=None,
                         help="most predictions per sequence (default: mlm-probability x max_seq_length)")
    masking.add_argument("--whole-word-masking", action="store_true", help="mask all pieces of a word together")

    run = parser.add_argument_group("logging, evaluation, checkpoints")
    run.add_argument("--log-every", type=ranges.POSITIVE_INT, default=10, help="steps between metric lines")
    run.add_argument("--eval-every", type=ranges.POSITIVE_INT, default=500,
                     help="steps between held-out evaluations (and at the end)")
    run.add_argument("--eval-max-instances", type=ranges.POSITIVE_INT, default=None,
                     help="evaluate on at most this many held-out instances (default: all)")
    run.add_argument("--save-every", type=ranges.POSITIVE_INT, default=500,
                     help="steps between checkpoints (and at the end)")
    run.add_argument("--keep-last", type=ranges.POSITIVE_INT, default=3, help="checkpoints kept")
    run.add_argument("--report-to", nargs="+", default=None, metavar="NAME", help=tracking_help())

    speed = parser.add_argument_group("hardware and speed")
    speed.add_argument("--device", choices=("auto", "cpu", "cuda", "xpu", "mps"), default="auto")
    speed.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                       help="auto: bf16 where the hardware has it (CUDA, XPU, CPUs with AVX512-BF16/AMX), else fp32")
    speed.add_argument("--bf16", action="store_true", help="shorthand for --precision bf16")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")
    speed.add_argument("--ipex", action="store_true", help="optimize with Intel Extension for PyTorch (must be installed)")
    speed.add_argument("--num-workers", type=ranges.NON_NEGATIVE_INT, default=1,
                       help="0: build batches in the training thread; >= 1: build that many ahead in a background thread")


def run(args: argparse.Namespace) -> int:
    from onebert.data.masking import MaskingConfig
    from onebert.errors import OneBertError
    from onebert.io_utils import check_output_dir, looks_like_run_dir
    from onebert.train.config import TrainConfig
    from onebert.train.pretraining import pretrain

    if not args.data:
        raise OneBertError("--data is required (a directory written by `onebert prepare`)")
    if not args.output:
        raise OneBertError("--output is required (the run directory)")
    # New, empty or a run directory (resume, or a fresh run where none was checkpointed): never a
    # directory of the user's, whose files config.yaml / metrics.jsonl could be replaced.
    check_output_dir(args.output, "--output", inputs=[args.data], made_by_onebert=looks_like_run_dir,
                     kind="run directory")
    if args.bf16:
        if args.precision not in ("auto", "bf16"):
            raise OneBertError(f"--bf16 contradicts --precision {args.precision}")
        args.precision = "bf16"
    if args.batch_size < 1:
        raise OneBertError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise OneBertError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.warmup_steps is None and args.warmup_ratio is None:
        args.warmup_ratio = 0.06

    masking = MaskingConfig(mlm_probability=args.mlm_probability, max_predictions_per_seq=args.max_predictions,
                            whole_word=args.whole_word_masking)
    loop_config = TrainConfig(
        output_dir=args.output, max_steps=args.max_steps, max_time=args.max_time, grad_accum=args.grad_accum,
        lr=args.lr, warmup_steps=args.warmup_steps, warmup_ratio=args.warmup_ratio if args.warmup_steps is None else None,
        schedule=args.schedule, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        max_nonfinite=args.max_bad_steps, seed=args.seed,
        save_every=args.save_every, keep_last=args.keep_last, eval_every=args.eval_every, log_every=args.log_every,
        resume=args.resume, precision=args.precision, compile=args.compile, ipex=args.ipex, device=args.device,
        report_to=args.report_to)
    loop_config.validate()  # a tracker that is not installed is named before the data is read
    options = {k: v for k, v in vars(args).items() if k not in ("_module", "command", "config", "bf16")}
    result = pretrain(args.data, args.model_config, loop_config, batch_size=args.batch_size, masking=masking,
                      eval_max_instances=args.eval_max_instances, num_workers=args.num_workers, options=options)
    return 130 if result.interrupted else 0
