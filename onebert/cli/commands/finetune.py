"""`onebert finetune`: train a task head (classification/regression, NER, QA) on a pretrained BERT."""

from __future__ import annotations

import argparse

from onebert import ranges
from onebert.cli.options import add_runtime_options, add_train_options

HELP = "fine-tune a pretrained BERT for classification, NER or question answering"
DESCRIPTION = (
    "Fine-tune a BERT (a `onebert pretrain` output or any HuggingFace BERT directory with its tokenizer files) "
    "on labelled data: --task classification (TSV/CSV/JSONL, single texts or pairs, labels), regression (the "
    "same files with numbers; detected when classification labels are decimals), "
    "ner (CoNLL) or qa (SQuAD v1.1/v2.0 JSON); for every task also Parquet, JSON-array files and `datasets` "
    "save_to_disk directories with the columns of the Hub datasets (text/label, tokens/ner_tags, SQuAD's). Validation runs every epoch (or --eval-every steps) with the "
    "task's standard metric; the best model is kept in OUTPUT/best, the last one in OUTPUT/final, both in "
    "HuggingFace layout with the tokenizer and the task's labels (and for SQuAD v2.0 the null-answer threshold "
    "tuned on the validation set), ready for `onebert evaluate`, `onebert predict` and `onebert.pipeline`. "
    "Metrics go to OUTPUT/metrics.jsonl. "
    "Example: onebert finetune --task classification --model minilm/ --train sst2/train.tsv "
    "--validation sst2/dev.tsv --output runs/sst2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from onebert.tasks import TASKS
    from onebert.tasks.records import add_format_arguments

    io = parser.add_argument_group("task, data, model and output")
    io.add_argument("--task", choices=tuple(TASKS), help="what to learn (required)")
    io.add_argument("--model", metavar="DIR", help="pretrained model directory with its tokenizer files, or a "
                                                   "run directory (its best/, else final/, model) (required)")
    io.add_argument("--train", metavar="FILE|DIR", help="training data (required; a DatasetDict: its train split)")
    io.add_argument("--validation", metavar="FILE|DIR", default=None, help="validation data: scored every epoch, "
                    "the best model is kept (without it: only final/; a DatasetDict: its validation split)")
    add_format_arguments(io)
    io.add_argument("--output", metavar="DIR",
                    help="run directory: best/, final/, metrics, checkpoints (required; new, empty or an earlier run's)")
    io.add_argument("--overwrite", action="store_true",
                    help="replace an earlier fine-tuning run in --output (only a run directory onebert made and "
                         "that holds nothing else; never other files)")

    length = parser.add_argument_group("length and batch")
    length.add_argument("--epochs", type=ranges.EPOCHS, default=3.0, help="passes over the training data")
    length.add_argument("--batch-size", type=ranges.POSITIVE_INT, default=32,
                        help="sequences per micro-batch on each process")
    length.add_argument("--eval-batch-size", type=ranges.POSITIVE_INT, default=64,
                        help="sequences per batch at validation")

    features = parser.add_argument_group("inputs")
    features.add_argument("--max-seq-length", "--max-length", type=ranges.TEXT_LENGTH, default=None,
                          dest="max_seq_length", metavar="N",
                          help="tokens per sequence (default: 128; 384 for qa); --max-length is the same option")
    features.add_argument("--text-column", default=None, help="classification: column of the (first) text")
    features.add_argument("--text-pair-column", default=None, help="classification: column of the second text")
    features.add_argument("--label-column", default=None, help="classification: column of the label")
    features.add_argument("--regression", action="store_true",
                          help="classification: predict a number with MSE, as --task regression (detected when "
                               "labels are decimals)")
    features.add_argument("--doc-stride", type=ranges.POSITIVE_INT, default=128,
                          help="qa: context tokens shared by adjacent windows")
    features.add_argument("--max-query-length", type=ranges.POSITIVE_INT, default=64, help="qa: question tokens kept")
    features.add_argument("--max-answer-length", type=ranges.POSITIVE_INT, default=30,
                          help="qa: longest answer in tokens")
    features.add_argument("--n-best-size", type=ranges.POSITIVE_INT, default=20,
                          help="qa: candidate answers kept per question")
    features.add_argument("--version-2-with-negative", action="store_true",
                          help="qa: questions may have no answer (SQuAD v2.0; detected from the training data too)")

    _add_run_arguments(parser)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("validation, logging, checkpoints")
    run.add_argument("--metric", default=None,
                     help="validation metric that picks the best model (default: accuracy; pearson for regression; "
                          "entity f1 for ner; f1 for qa)")
    # The loop's options: flags, ranges and help declared once on TrainConfig (onebert/train/config.py).
    add_train_options(parser, {
        "task, data, model and output": ["resume"],
        "length and batch": ["max_steps", "grad_accum"],
        "optimizer": ["lr", "warmup_ratio", "warmup_steps", "schedule", "weight_decay", "adam_eps", "max_grad_norm",
                      "max_nonfinite", "seed"],
        "validation, logging, checkpoints": ["eval_every", "log_every", "save_every", "keep_last",
                                             "early_stopping_patience", "report_to"],
    }, defaults={"lr": 5e-5, "warmup_ratio": 0.1, "adam_eps": 1e-8, "keep_last": 1}, helps={
        "max_steps": "optimizer steps (overrides --epochs)",
        "seed": "seeds the new head, the data order and dropout",
        "eval_every": "steps between validations (default: one epoch)",
        "save_every": "steps between resumable checkpoints (default: only at the end or on Ctrl-C); 0: no "
                      "resumable checkpoints at all (best/ and final/ are still written)",
    })
    add_runtime_options(parser.add_argument_group("hardware and speed"), compile=True, bf16_alias=True)


def run(args: argparse.Namespace) -> int:
    from onebert.errors import OneBertError
    from onebert.io_utils import check_output_dir, looks_like_run_dir, replace_run_dir
    from onebert.tasks import get_task
    from onebert.train.finetuning import BEST_DIR, FINAL_DIR, finetune

    for name in ("task", "model", "train", "output"):
        if not getattr(args, name):
            raise OneBertError(f"--{name} is required")
    for name in ("batch_size", "eval_batch_size", "doc_stride", "max_query_length", "max_answer_length", "n_best_size"):
        if getattr(args, name) < 1:
            raise OneBertError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not args.epochs > 0 and args.max_steps is None:
        raise OneBertError(f"--epochs must be positive, got {args.epochs}")
    task = get_task(args.task)
    given = [f"--{n.replace('_', '-')}" for n in ("text_column", "text_pair_column", "label_column", "regression")
             if getattr(args, n) and n not in task.options]
    if given:
        raise OneBertError(f"{', '.join(given)} apply to --task classification or regression only")
    output = check_output_dir(args.output, "--output", inputs=[args.train, args.validation, args.model],
                              made_by_onebert=looks_like_run_dir, kind="run directory")
    if args.resume is None and any((output / name).exists() for name in (BEST_DIR, FINAL_DIR)):
        if not args.overwrite:
            raise OneBertError(f"{output}: already holds a fine-tuned model; choose another --output, --resume an "
                               "interrupted run, or --overwrite to replace it")
        replace_run_dir(output)
    return finetune(args)
