"""`onebert evaluate`: score a fine-tuned model on labelled data with its task's standard metrics."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from onebert import ranges
from onebert.cli.options import add_runtime_options

HELP = "score a fine-tuned model on labelled data (a table on stderr, one JSON object on stdout)"
DESCRIPTION = (
    "Evaluate a fine-tuned model directory (or a `onebert finetune` output, whose best/ model is used) on "
    "labelled data in the format of its task: classification TSV/CSV/JSONL (the text and label columns of "
    "fine-tuning are remembered), CoNLL for ner, SQuAD JSON for qa, or for each Parquet, a JSON array or a "
    "`datasets` save_to_disk directory. Prints a readable table on stderr and "
    "one JSON object on stdout: accuracy, precision, recall, f1, f1_macro, mcc (+ confusion_matrix) for "
    "classification; pearson, spearman, mse for regression; entity precision/recall/f1 and per_type for ner; "
    "exact_match and f1 (+ HasAns_/NoAns_ and best_f1 for SQuAD v2.0) for qa. "
    "Example: onebert evaluate --model runs/sst2 --data sst2/dev.tsv --plots plots/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", help="fine-tuned model directory (required)")
    from onebert.tasks.records import add_format_arguments

    parser.add_argument("--data", metavar="FILE|DIR", help="labelled data in the task's format (required; a "
                                                           "DatasetDict directory gives its validation split)")
    add_format_arguments(parser)
    parser.add_argument("--batch-size", type=ranges.POSITIVE_INT, default=64, help="sequences per batch")
    parser.add_argument("--text-column", default=None, help="classification: text column (default: as fine-tuned)")
    parser.add_argument("--text-pair-column", default=None, help="classification: second text column")
    parser.add_argument("--label-column", default=None, help="classification: label column")
    parser.add_argument("--null-threshold", type=ranges.number(-1e4, 1e4), default=None,
                        help="qa v2.0: answer only when null score - best span score <= this (default: the saved one)")
    parser.add_argument("--plots", metavar="DIR", default=None,
                        help="write a confusion matrix (classification) or per-entity scores (ner) as PNG here "
                             "(confusion_matrix.png / entity_scores.png; an existing one is replaced only if "
                             "it is a PNG)")
    add_runtime_options(parser, bf16_alias=True, inference=True)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import time

    from onebert.errors import OneBertError
    from onebert.infer.engines import ran_on, stderr_log
    from onebert.infer.predictor import Predictor

    for name in ("model", "data"):
        if not getattr(args, name):
            raise OneBertError(f"--{name} is required")
    if args.plots:
        from onebert.eval_plots import check_plot_dir

        check_plot_dir(args.plots)  # a wrong --plots is named before the evaluation, not after it
    predictor = Predictor.load(args.model, device=args.device, batch_size=args.batch_size, precision=args.precision,
                               runtime=args.runtime, log=stderr_log)
    predictor.progress = True
    spec = predictor.spec
    if args.null_threshold is not None:
        if "null_threshold" not in spec.handler.metadata():
            raise OneBertError("--null-threshold applies to qa models only")
        predictor.spec = dataclasses.replace(spec, null_threshold=args.null_threshold)
    examples = read_labelled(spec, args.data, args)
    start = time.perf_counter()
    metrics, _ = predictor.evaluate(examples)
    seconds = time.perf_counter() - start
    # The scale convention, stated once: the scores named here are percentages 0-100 (SQuAD's, as its
    # official script), every other score a fraction 0-1 (see onebert.train.metrics_log).
    percent = spec.handler.percent_metrics
    result: dict[str, Any] = {"task": spec.task, "model": str(predictor.directory), "data": str(args.data),
                              "examples": len(examples), **metrics,
                              "percent_metrics": [k for k in metrics if percent and k.endswith(percent)]}
    if args.plots:
        import importlib.util

        if importlib.util.find_spec("onebert.eval_plots") is None:
            raise OneBertError("--plots needs onebert.eval_plots, which this installation lacks")
        from onebert.eval_plots import plot_evaluation

        if not spec.handler.plots:
            raise OneBertError("--plots draws classification (confusion matrix) and ner (per-entity) results only")
        result["plots"] = [str(p) for p in plot_evaluation(metrics, args.plots)]
    print(format_table(result, seconds), file=sys.stderr)
    print(f"evaluate: {ran_on(predictor)}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def read_labelled(spec, path: str, args: argparse.Namespace) -> list[Any]:
    from onebert.tasks.records import read_options

    return spec.handler.read(path, columns(spec, args), read_options(args, "data"))


def columns(spec, args: argparse.Namespace) -> dict[str, str]:
    """The text/label columns: those given now, else those the model was fine-tuned with."""
    chosen = dict(spec.columns)
    for name in ("text_column", "text_pair_column", "label_column"):
        if getattr(args, name, None):
            chosen[name] = getattr(args, name)
    if getattr(args, "text_column", None) and not getattr(args, "text_pair_column", None):
        chosen.pop("text_pair_column", None)  # a new text column alone means single texts
    return chosen


def format_table(result: dict[str, Any], seconds: float) -> str:
    lines = [f"{result['task']}: {result['examples']:,} examples from {result['data']} "
             f"(model {result['model']}; {seconds:.1f}s, {result['examples'] / max(seconds, 1e-9):,.0f}/s)"]
    skip = {"task", "model", "data", "examples", "labels", "confusion_matrix", "per_type", "plots", "percent_metrics"}
    width = max((len(k) for k in result if k not in skip), default=6)
    for key, value in result.items():
        if key in skip:
            continue
        text = f"{value:,.0f}" if key.endswith("total") else f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {text:>10}")
    if "per_type" in result:
        lines.append(f"  {'type':<8} {'precision':>9} {'recall':>9} {'f1':>9} {'number':>7}")
        for kind, scores in result["per_type"].items():
            lines.append(f"  {kind:<8} {scores['precision']:>9.4f} {scores['recall']:>9.4f} {scores['f1']:>9.4f} "
                         f"{scores['number']:>7,}")
    if "confusion_matrix" in result and len(result["labels"]) <= 12:
        labels = [str(label)[:10] for label in result["labels"]]
        cell = max(6, *(len(label) for label in labels))
        lines.append("  confusion matrix (rows gold, columns predicted):")
        lines.append("  " + " " * cell + "".join(f" {label:>{cell}}" for label in labels))
        for label, row in zip(labels, result["confusion_matrix"]):
            lines.append(f"  {label:>{cell}}" + "".join(f" {count:>{cell},}" for count in row))
    if "plots" in result:
        lines.append("  plots: " + ", ".join(result["plots"]))
    return "\n".join(lines)
