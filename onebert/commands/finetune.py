"""`onebert finetune`: train a task head (classification/regression, NER, QA) on a pretrained BERT."""

from __future__ import annotations

import argparse

from onebert import ranges

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
    io.add_argument("--model", metavar="DIR", help="pretrained model directory with its tokenizer files (required)")
    io.add_argument("--train", metavar="FILE|DIR", help="training data (required; a DatasetDict: its train split)")
    io.add_argument("--validation", metavar="FILE|DIR", default=None, help="validation data: scored every epoch, "
                    "the best model is kept (without it: only final/; a DatasetDict: its validation split)")
    add_format_arguments(io)
    io.add_argument("--output", metavar="DIR",
                    help="run directory: best/, final/, metrics, checkpoints (required; new, empty or an earlier run's)")
    io.add_argument("--resume", nargs="?", const="auto", default=None, metavar="auto|CHECKPOINT",
                    help="continue an interrupted run from its newest checkpoint")

    length = parser.add_argument_group("length and batch")
    length.add_argument("--epochs", type=ranges.EPOCHS, default=3.0, help="passes over the training data")
    length.add_argument("--max-steps", type=ranges.POSITIVE_INT, default=None,
                        help="optimizer steps (overrides --epochs)")
    length.add_argument("--batch-size", type=ranges.POSITIVE_INT, default=32,
                        help="sequences per micro-batch on each process")
    length.add_argument("--grad-accum", type=ranges.POSITIVE_INT, default=1,
                        help="micro-batches accumulated per optimizer step")
    length.add_argument("--eval-batch-size", type=ranges.POSITIVE_INT, default=64,
                        help="sequences per batch at validation")

    optim = parser.add_argument_group("optimizer")
    optim.add_argument("--lr", type=ranges.POSITIVE, default=5e-5, help="peak learning rate (AdamW)")
    optim.add_argument("--warmup-ratio", type=ranges.WARMUP_RATIO, default=0.1,
                       help="linear warm-up as a fraction of all steps")
    optim.add_argument("--warmup-steps", type=ranges.NON_NEGATIVE_INT, default=None,
                       help="linear warm-up steps (instead of the ratio)")
    optim.add_argument("--schedule", choices=("linear", "cosine", "constant"), default="linear",
                       help="decay after warm-up (to 0 at the end)")
    optim.add_argument("--weight-decay", type=ranges.NON_NEGATIVE, default=0.01,
                       help="AdamW weight decay (not on bias/LayerNorm)")
    optim.add_argument("--adam-eps", type=ranges.POSITIVE, default=1e-8, help="AdamW epsilon")
    optim.add_argument("--max-grad-norm", type=ranges.POSITIVE, default=1.0, help="gradient clipping threshold")
    optim.add_argument("--max-bad-steps", type=ranges.POSITIVE_INT, default=5,
                       help="a step whose loss or gradients are NaN/inf is skipped (and logged); this many "
                            "in a row stop the run with a message (1: stop at the first)")
    optim.add_argument("--seed", type=ranges.SEED, default=42, help="seeds the new head, the data order and dropout")

    features = parser.add_argument_group("inputs")
    features.add_argument("--max-seq-length", type=ranges.TEXT_LENGTH, default=None,
                          help="tokens per sequence (default: 128; 384 for qa)")
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

    run = parser.add_argument_group("validation, logging, checkpoints")
    run.add_argument("--metric", default=None,
                     help="validation metric that picks the best model (default: accuracy; pearson for regression; "
                          "entity f1 for ner; f1 for qa)")
    run.add_argument("--eval-every", type=ranges.POSITIVE_INT, default=None,
                     help="steps between validations (default: one epoch)")
    run.add_argument("--log-every", type=ranges.POSITIVE_INT, default=10, help="steps between metric lines")
    run.add_argument("--save-every", type=ranges.POSITIVE_INT, default=None,
                     help="steps between resumable checkpoints (default: only at the end or on Ctrl-C)")
    run.add_argument("--keep-last", type=ranges.POSITIVE_INT, default=1, help="resumable checkpoints kept")

    speed = parser.add_argument_group("hardware and speed")
    speed.add_argument("--device", choices=("auto", "cpu", "cuda", "xpu", "mps"), default="auto")
    speed.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="fp32",
                       help="autocast precision (auto: bf16 where the hardware has it)")
    speed.add_argument("--bf16", action="store_true", help="shorthand for --precision bf16")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")


def run(args: argparse.Namespace) -> int:
    from onebert.errors import OneBertError
    from onebert.io_utils import check_output_dir, looks_like_run_dir
    from onebert.tasks import get_task
    from onebert.train.finetuning import BEST_DIR, FINAL_DIR, finetune

    for name in ("task", "model", "train", "output"):
        if not getattr(args, name):
            raise OneBertError(f"--{name} is required")
    if args.bf16:
        if args.precision not in ("fp32", "bf16"):
            raise OneBertError(f"--bf16 contradicts --precision {args.precision}")
        args.precision = "bf16"
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
        raise OneBertError(f"{output}: already holds a fine-tuned model; choose another --output "
                           "(or --resume an interrupted run)")
    return finetune(args)
