"""`onebert pretrain`: train a BERT from scratch (masked LM + next-sentence prediction) on prepared data."""

from __future__ import annotations

import argparse

from onebert import ranges
from onebert.cli.options import add_runtime_options, add_train_options

HELP = "pretrain a BERT (MLM + NSP) on a data directory from `onebert prepare`"
DESCRIPTION = (
    "Pretrain a BERT from random weights on a data directory written by `onebert prepare`. Checkpoints "
    "(RUN_DIR/checkpoints) allow an exact --resume; metrics go to RUN_DIR/metrics.jsonl (plot them with "
    "`onebert plot RUN_DIR`); the trained model is written to RUN_DIR/final in HuggingFace layout. "
    "Several processes: torchrun --nproc_per_node=N -m onebert pretrain ... "
    "(global batch = --batch-size x N x --grad-accum). "
    "Example: onebert pretrain --data data/ --model-config mini --output runs/mini --max-time 30m")


# The duration parser lives with the ranges (TrainConfig.max_time declares it); kept importable from here.
parse_duration = ranges.parse_duration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from onebert.model.config import PRESETS

    io = parser.add_argument_group("data, model and output")
    io.add_argument("--data", metavar="DATA_DIR", help="a data directory written by `onebert prepare` (required)")
    io.add_argument("--model-config", default="mini", metavar="NAME|FILE",
                    help=f"a preset ({', '.join(PRESETS)}; takes the data's vocabulary size) or a config.json")
    io.add_argument("--output", metavar="RUN_DIR",
                    help="the run directory: checkpoints, metrics, final model (required; new, empty or an "
                         "earlier run's)")

    length = parser.add_argument_group("length and batch")
    length.add_argument("--batch-size", type=ranges.POSITIVE_INT, default=32,
                        help="sequences per micro-batch on each process")

    masking = parser.add_argument_group("masking")
    masking.add_argument("--mlm-probability", type=ranges.number(0, 1, min_inclusive=False, max_inclusive=False),
                         default=0.15,
                         help="fraction of tokens predicted in training (evaluation always uses 0.15)")
    masking.add_argument("--max-predictions", type=ranges.POSITIVE_INT, default=None,
                         help="most predictions per sequence (default: mlm-probability x max_seq_length)")
    masking.add_argument("--whole-word-masking", action="store_true", help="mask all pieces of a word together")

    run = parser.add_argument_group("logging, evaluation, checkpoints")
    run.add_argument("--eval-max-instances", type=ranges.POSITIVE_INT, default=None,
                     help="evaluate on at most this many held-out instances (default: all)")
    # The loop's options: flags, ranges and help declared once on TrainConfig (onebert/train/config.py).
    add_train_options(parser, {
        "data, model and output": ["resume"],
        "length and batch": ["max_steps", "max_time", "grad_accum"],
        "optimizer": ["lr", "warmup_steps", "warmup_ratio", "schedule", "weight_decay", "adam_eps", "max_grad_norm",
                      "max_nonfinite", "seed"],
        "logging, evaluation, checkpoints": ["log_every", "eval_every", "save_every", "keep_last", "report_to"],
        "hardware and speed": ["ipex"],
    }, defaults={"eval_every": 500, "save_every": 500}, helps={
        "warmup_ratio": "linear warm-up as a fraction of all steps (default 0.06 when no --warmup-steps)",
        "eval_every": "steps between held-out evaluations (and at the end)",
    })
    speed = next(g for g in parser._action_groups if g.title == "hardware and speed")
    add_runtime_options(speed, compile=True, bf16_alias=True)
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
    if args.batch_size < 1:
        raise OneBertError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise OneBertError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.warmup_steps is None and args.warmup_ratio is None:
        args.warmup_ratio = 0.06

    masking = MaskingConfig(mlm_probability=args.mlm_probability, max_predictions_per_seq=args.max_predictions,
                            whole_word=args.whole_word_masking)
    # Every loop option is a TrainConfig field declared once; the options' dests map onto the fields.
    loop_config = TrainConfig.from_options(
        args, output_dir=args.output, warmup_ratio=args.warmup_ratio if args.warmup_steps is None else None)
    options = {k: v for k, v in vars(args).items() if k not in ("_module", "command", "config", "bf16")}
    result = pretrain(args.data, args.model_config, loop_config, batch_size=args.batch_size, masking=masking,
                      eval_max_instances=args.eval_max_instances, num_workers=args.num_workers, options=options)
    return 130 if result.interrupted else 0
