"""The `Task` interface: everything that differs between fine-tuning tasks, behind one object.

The commands, the training loop, `onebert.infer.predictor`, the pipeline and the server never ask which task
they run; they call the spec's Task (`task_of(spec)`), one class per file in this package
(classification, regression, ner, qa), registered by name in `onebert.tasks.TASKS`.

A Task instance is bound to a `TaskSpec` (the saved, per-model data: labels, lengths, QA settings);
the class attributes are what holds for every model of the task.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from onebert.tasks.features import Features

if TYPE_CHECKING:  # annotations only
    import torch


class Task:
    """One fine-tuning task. Subclasses set the class attributes and implement the data methods."""

    name: ClassVar[str]
    model_class_name: ClassVar[str]  # the onebert.model head it fine-tunes
    default_max_seq_length: ClassVar[int] = 128
    metrics: ClassVar[tuple[str, ...]]  # the ones that may select the best model; the first is the default
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    # Endings of the metric names this task reports in percent 0-100 (SQuAD's, as its official script);
    # every other score is a fraction 0-1 (onebert.train.metrics_log states the convention).
    percent_metrics: ClassVar[tuple[str, ...]] = ()
    # Length grouping (see onebert.train.finetuning): global batches per length-sorted mega-batch; 1 is
    # plain random batches. Each task says why it picks its value.
    group_size: ClassVar[int] = 50
    example_unit: ClassVar[str] = "examples"  # what the training lines count
    options: ClassVar[tuple[str, ...]] = ()  # the task-specific `onebert finetune` options it accepts
    input_formats: ClassVar[tuple[str, ...]] = ()  # `onebert predict --format` values (first: the fallback)
    data_formats: ClassVar[tuple[str, ...]] = ()  # the labelled-data formats `read` takes (`--format` of finetune)
    serve_request: ClassVar[str] = "texts"  # the /predict body shape, a key of onebert.serve.routes' table
    plots: ClassVar[bool] = False  # `onebert evaluate --plots` draws this task's results
    # Inputs fill the model's length (QA's question + context windows) rather than being short sentences:
    # the inference runtime is timed at that length (onebert.infer.engines.select).
    fills_windows: ClassVar[bool] = False
    # `--precision auto` may predict in bf16 (onebert/infer/engines.py): only where its outputs were measured
    # unchanged against fp32 on real data (classification: SST-2, MRPC; NER: CoNLL-2003; BENCHMARKS.md).
    # Regression values move with bf16; QA's null-threshold decisions were not measured.
    auto_bf16: ClassVar[bool] = False

    def __init__(self, spec):
        self.spec = spec

    # ---- what a model of the task is
    @property
    def default_metric(self) -> str:
        return self.metrics[0]

    @classmethod
    def accepts(cls, name: str, config) -> bool:
        """Is a config.json whose task is `name` a model of this task? (Regression also accepts
        "classification" configs with problem_type "regression": models saved before it was a task.)"""
        return name == cls.name

    @classmethod
    def labels_from_config(cls, config) -> list[str] | None:
        """The names of the logits (id2label), None for tasks without named outputs."""
        return [config.id2label[i] for i in range(len(config.id2label))] if config.id2label else \
            [str(i) for i in range(config.num_labels)]

    def config_changes(self) -> dict[str, Any]:
        """BertConfig fields that describe this head (num_labels, id2label, problem_type)."""
        return {"id2label": dict(enumerate(self.spec.labels or [])), "problem_type": None}

    def metadata(self) -> dict[str, Any]:
        """Task-specific entries of config.json's `onebert` object (besides task and max_seq_length)."""
        return {}

    def describe(self) -> str:
        """A few words on what the model predicts, for the start-of-run summary."""
        return f"{len(self.spec.labels or [])} labels"

    def run_notes(self) -> dict[str, Any]:
        """Facts for the run's metrics log header (QA: the SQuAD version)."""
        return {}

    # ---- fine-tuning
    @classmethod
    def training_task(cls, args: argparse.Namespace, train_examples: Sequence[Any]) -> str:
        """The task `onebert finetune --task NAME` really trains (classification: regression on numbers)."""
        return cls.name

    @classmethod
    def training_spec(cls, args: argparse.Namespace, train_examples: Sequence[Any],
                      validation_examples: Sequence[Any] | None, max_seq_length: int, log: Callable = print):
        """The TaskSpec fields to fine-tune with (labels from the training data), the data checked against them.
        (Fields, not a TaskSpec: the spec imports the registry, which imports the tasks.)"""
        raise NotImplementedError

    def read(self, path: str | Path, columns: dict[str, str] | None = None, options=None) -> list[Any]:
        """Labelled examples from a file (or saved dataset) in one of `data_formats`; `options` is a
        readers.ReadOptions (the format, label names, the split of a DatasetDict)."""
        raise NotImplementedError

    def features(self, tokenizer, examples: Sequence[Any], with_labels: bool) -> Features:
        raise NotImplementedError

    def loss_count_key(self) -> str:
        """What a batch's mean loss is over: "sequences", or "labelled" tokens (then batches count them)."""
        return "sequences"

    def loss_count(self, batch: dict[str, Any]) -> int:
        """How many terms this micro-batch's mean loss averages (its share of the global batch's mean)."""
        return batch["input_ids"].shape[0]

    def batch_counts(self, batch: dict[str, Any]) -> None:
        """Adds what `loss_count_key` needs to a collated training batch (nothing for per-sequence losses)."""

    def training_stats(self, out, batch: dict[str, Any]) -> dict[str, "torch.Tensor"]:
        """Extra sums for the training log (correct / predicted for a running accuracy); none by default."""
        return {}

    def tune_on_validation(self, predictions: list[Any], examples: Sequence[Any]) -> tuple[list[Any], dict[str, float]]:
        """Settings tuned on the validation predictions (QA v2.0's null threshold) and the predictions under them."""
        return predictions, {}

    # ---- inference
    def decode(self, outputs: dict[str, list[Any]], features: Features, examples: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def score(self, predictions: Sequence[Any], examples: Sequence[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def predict_records(self, predict: Callable[[list[Any]], list[Any]], path: Path, fmt: str,
                        columns: dict[str, str]) -> list[dict[str, Any]]:
        """`onebert predict`: one JSON record per input of the file."""
        raise NotImplementedError

    def guess_format(self, path: Path, stdin: bool) -> str:
        return self.input_formats[0]

    def is_single_input(self, inputs: Any) -> bool:
        """The pipeline: is `inputs` one input (a str, a pair, a QA dict) rather than a list of them?"""
        return isinstance(inputs, str)

    def pipeline_outputs(self, predict: Callable[[list[Any]], list[Any]], items: Sequence[Any]) -> list[Any]:
        """The pipeline and the server: one output record per input item."""
        raise NotImplementedError

    @classmethod
    def count_windows(cls, tokenizer, items: Sequence[Any], spec) -> int:
        """About how many model sequences of `spec.max_seq_length` tokens `items` need: the server's measure
        of a request's share of the model thread. One per item by default (texts that do not fit are
        refused, not split); tasks that split long inputs into windows (NER, QA) count their windows.

        spec: a TaskSpec, or any object with `max_seq_length` (and the task's own settings, which
        default to TaskSpec's when absent)."""
        return len(items)


def kind_of(value: Any) -> str:
    """How an unexpected pipeline input is named in its error."""
    if isinstance(value, dict):
        return f"an object with keys {sorted(map(str, value))[:5]}"
    return type(value).__name__



def text_lines(path: Path) -> list[str]:
    """Every line is one input (an empty line too, so output line N answers input line N)."""
    from onebert.tasks.readers import read_text_file

    lines = read_text_file(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


__all__ = ["Task", "kind_of", "text_lines"]
