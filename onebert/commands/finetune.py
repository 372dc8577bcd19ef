"""`onebert finetune`: train a task head (classification/regression, NER, QA) on a pretrained BERT."""

from __future__ import annotations

import argparse

from onebert import ranges

HELP = "fine-tune a pretrained BERT for classification, NER or question answering"
DESCRIPTION = (
    "Fine-tune a BERT (a `onebert pretrain` output or any HuggingFace BERT directory with its tokenizer files) "
    "on labelled data: --task classification (TSV/CSV/JSONL, single texts or pairs, labels or --regression), "
    "ner (CoNLL) or qa (SQuAD v1.1/v2.0 JSON). Validation runs every epoch (or --eval-every steps) with the "
    "task's standard metric; the best model is kept in OUTPUT/best, the last one in OUTPUT/final, both in "
    "HuggingFace layout with the tokenizer and the task's labels (and for SQuAD v2.0 the null-answer threshold "
    "tuned on the validation set), ready for `onebert evaluate`, `onebert predict` and `onebert.pipeline`. "
    "Metrics go to OUTPUT/metrics.jsonl. "
    "Example: onebert finetune --task classification --model minilm/ --train sst2/train.tsv "
    "--validation sst2/dev.tsv --output runs/sst2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from onebert.tasks import TASKS

    io = parser.add_argument_group("task, data, model and output")
    io.add_argument("--task", choices=TASKS, help="what to learn (required)")
    io.add_argument("--model", metavar="DIR", help="pretrained model directory with its tokenizer files (required)")
    io.add_argument("--train", metavar="FILE", help="training data (required)")
    io.add_argument("--validation", metavar="FILE", default=None,
                    help="validation data: scored every epoch, the best model is kept (without it: only final/)")
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
                          help="classification: predict a number with MSE (detected when labels are decimals)")
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
    import math

    import torch

    from onebert.config import BertConfig
    from onebert.errors import OneBertError
    from onebert.io_utils import check_output_dir, looks_like_run_dir
    from onebert.predict import DEFAULT_MAX_SEQ_LENGTH, load_tokenizer, model_class, resolve_model_dir
    from onebert.train import precision as prec
    from onebert.train.distributed import init_distributed, shutdown
    from onebert.train.finetuning import BEST_DIR, FINAL_DIR, FineTuningTask, read_best
    from onebert.train.trainer import TrainConfig, train

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
    if args.task != "classification":
        given = [f"--{n.replace('_', '-')}" for n in ("text_column", "text_pair_column", "label_column", "regression")
                 if getattr(args, n)]
        if given:
            raise OneBertError(f"{', '.join(given)} apply to --task classification only")
    output = check_output_dir(args.output, "--output", inputs=[args.train, args.validation, args.model],
                              made_by_onebert=looks_like_run_dir, kind="run directory")
    if args.resume is None and any((output / name).exists() for name in (BEST_DIR, FINAL_DIR)):
        raise OneBertError(f"{output}: already holds a fine-tuned model; choose another --output "
                           "(or --resume an interrupted run)")

    # ---- model directory, tokenizer, data: all checked before anything is written
    model_dir = resolve_model_dir(args.model)
    base_config = BertConfig.load(model_dir)
    tokenizer = load_tokenizer(model_dir, base_config)
    max_seq_length = args.max_seq_length or min(DEFAULT_MAX_SEQ_LENGTH[args.task], base_config.max_position_embeddings)
    if not 3 <= max_seq_length <= base_config.max_position_embeddings:
        raise OneBertError(f"--max-seq-length must be in 3..{base_config.max_position_embeddings} (the model's "
                           f"positions), got {max_seq_length}")
    train_examples, validation_examples, spec = _read_data(args, max_seq_length)

    loop_config = TrainConfig(
        output_dir=args.output, max_steps=1, grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup_steps, warmup_ratio=None if args.warmup_steps is not None else args.warmup_ratio,
        schedule=args.schedule, weight_decay=args.weight_decay, adam_eps=args.adam_eps,
        max_grad_norm=args.max_grad_norm, max_nonfinite=args.max_bad_steps, seed=args.seed,
        save_every=args.save_every, keep_last=args.keep_last,
        log_every=args.log_every, resume=args.resume, precision=args.precision, compile=args.compile,
        device=args.device)
    loop_config.validate()

    dist = init_distributed(prec.device_type(args.device))
    say = print if dist.is_main else (lambda *a, **k: None)
    try:
        best = read_best(output, args.metric or spec.default_metric) if args.resume is not None else None
        task = FineTuningTask(spec, base_config, tokenizer, train_examples, args.batch_size, seed=args.seed,
                              validation_examples=validation_examples, eval_batch_size=args.eval_batch_size,
                              metric=args.metric, rank=dist.rank, world_size=dist.world_size, best_value=best,
                              log=say)
        steps_per_epoch = math.ceil(task.sampler.batches_per_epoch / args.grad_accum)
        loop_config.max_steps = args.max_steps or max(1, math.ceil(args.epochs * task.sampler.batches_per_epoch
                                                                   / args.grad_accum))
        loop_config.eval_every = (args.eval_every or steps_per_epoch) if validation_examples else None
        torch.manual_seed(args.seed)  # the new head's initial weights
        model = model_class(spec.task).from_pretrained(model_dir, config=spec.apply_to(base_config),
                                                       ignore_mismatched_heads=True)
        say(f"model: {model_dir} ({base_config.num_hidden_layers} layers, hidden {base_config.hidden_size}) "
            f"as {type(model).__name__}")
        say(_describe_data(spec, args, train_examples, validation_examples, task, steps_per_epoch,
                           loop_config.max_steps))
        options = {k: v for k, v in vars(args).items() if k not in ("_module", "command", "config", "bf16")}
        notes = {"labels": ", ".join(spec.labels) if spec.labels and len(spec.labels) <= 20 else
                 (f"{len(spec.labels)} labels" if spec.labels else "none"),
                 "steps_per_epoch": steps_per_epoch}
        if spec.task == "qa":
            notes["squad_version"] = "2.0" if spec.version_2 else "1.1"
        result = train(task, model, loop_config, options=options, dist=dist, notes=notes)
    finally:
        shutdown(dist)
    if result.interrupted:
        return 130
    if dist.is_main:
        if task.best_value is not None:
            say(f"best validation {task.metric} = {task.best_value:.4f}: {output / BEST_DIR}")
        say(f"final model: {output / FINAL_DIR}")
    return 0


def _read_data(args: argparse.Namespace, max_seq_length: int):
    """Training and validation examples, and the task spec (labels from the training data)."""
    from onebert.data.tasks import (build_label_list, label_ids, looks_like_regression, read_classification, read_conll,
                                    read_squad, regression_targets)
    from onebert.errors import OneBertError
    from onebert.predict import TaskSpec
    from onebert.tasks.ner import build_tag_list

    columns = {k: getattr(args, k) for k in ("text_column", "text_pair_column", "label_column") if getattr(args, k)}
    if args.task == "classification":
        def read(path):
            return read_classification(path, **columns)
    elif args.task == "ner":
        read = read_conll
    else:
        read = read_squad
    train_examples = read(args.train)
    validation_examples = read(args.validation) if args.validation else None
    if args.task == "classification":
        regression = args.regression or looks_like_regression(train_examples)
        spec = TaskSpec("classification", labels=None if regression else build_label_list(train_examples),
                        regression=regression, max_seq_length=max_seq_length, columns=columns)
        if spec.labels is not None and len(spec.labels) < 2:
            raise OneBertError(f"{args.train}: every example has the label {spec.labels[0]!r}; a classifier needs "
                               "at least two classes (or --regression)")
        if validation_examples is not None:  # an unknown label or a non-number is named now, not after training
            if regression:
                regression_targets(validation_examples)
            else:
                label_ids(validation_examples, spec.labels)
    elif args.task == "ner":
        spec = TaskSpec("ner", labels=build_tag_list(train_examples), max_seq_length=max_seq_length)
        unseen = sorted({t for e in validation_examples or () for t in e.tags or () if t not in spec.labels})
        if unseen:
            print(f"note: {args.validation}: tags {', '.join(unseen)} do not occur in {args.train}; the model "
                  "cannot predict them")
    else:
        version_2 = args.version_2_with_negative or any(e.is_impossible for e in train_examples)
        if max_seq_length <= args.doc_stride + 2:
            raise OneBertError(f"--doc-stride {args.doc_stride} must be smaller than --max-seq-length "
                               f"{max_seq_length} minus the question")
        spec = TaskSpec("qa", max_seq_length=max_seq_length, doc_stride=args.doc_stride,
                        max_query_length=args.max_query_length, version_2=version_2,
                        n_best_size=args.n_best_size, max_answer_length=args.max_answer_length)
    return train_examples, validation_examples, spec


def _describe_data(spec, args, train_examples, validation_examples, task, steps_per_epoch: int, max_steps: int) -> str:
    kind = ("regression" if spec.regression else f"{len(spec.labels)} classes") if spec.task == "classification" \
        else f"{len(spec.labels)} tags" if spec.task == "ner" else f"SQuAD v{'2.0' if spec.version_2 else '1.1'}"
    rows = len(task.features)
    unit = {"classification": "examples", "ner": "sentences", "qa": "questions"}[spec.task]
    windows = f" -> {rows:,} windows" if rows != len(train_examples) else ""
    validation = f"{len(validation_examples):,} validation {unit}" if validation_examples else "no validation set"
    return (f"data: {spec.task} ({kind}); {len(train_examples):,} training {unit}{windows}, {validation}; "
            f"{task.sampler.batches_per_epoch:,} batches = {steps_per_epoch:,} steps per epoch, {max_steps:,} steps")
