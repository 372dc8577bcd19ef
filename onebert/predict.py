"""Inference with a fine-tuned model: one code path for validation during training, `onebert evaluate`,
`onebert predict` and `onebert.pipeline`.

A fine-tuned directory describes itself in config.json, so nothing else is needed to use it:
`onebert` = {"task": "classification" | "ner" | "qa", the feature settings (max_seq_length,
doc_stride, ...), the text columns it was trained on, and for SQuAD v2.0 the null-answer threshold
tuned on the validation set}; the class or tag names are transformers' `id2label`, regression is
`problem_type: "regression"`. A directory fine-tuned by transformers (no `onebert` key) works too:
the task is read from its `architectures`.

Speed: rows are sorted by length (longest first, so a batch that does not fit fails at once) and
cut into batches, so padding stays small; the model's unpadding skips the rest. Outputs go back to
the rows' original order before decoding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from onebert.errors import OneBertError
from onebert.tasks import TASKS, Features, collate

MODEL_CLASSES = {"classification": "BertForSequenceClassification", "ner": "BertForTokenClassification",
                 "qa": "BertForQuestionAnswering"}
_TASK_OF_ARCHITECTURE = {name: task for task, name in MODEL_CLASSES.items()}
DEFAULT_MAX_SEQ_LENGTH = {"classification": 128, "ner": 128, "qa": 384}
# Metrics to select the best checkpoint by, per task; mse is the one where lower is better.
SELECTION_METRICS = {
    "classification": ("accuracy", "f1", "f1_macro", "mcc", "precision", "recall"),
    "regression": ("pearson", "spearman", "mse"),
    "ner": ("f1", "precision", "recall", "accuracy"),
    "qa": ("f1", "exact_match"),
}
LOWER_IS_BETTER = frozenset({"mse"})
_INPUT_KEYS = ("input_ids", "token_type_ids")


@dataclass
class TaskSpec:
    """What a fine-tuned model does and how its inputs are built; saved as config.json's `onebert` entry."""

    task: str
    labels: list[str] | None = None  # class names or tags in the order of the logits (None: regression, QA)
    regression: bool = False
    max_seq_length: int = 128
    doc_stride: int = 128  # QA: context tokens shared by consecutive windows
    max_query_length: int = 64  # QA: question tokens kept
    version_2: bool = False  # QA: questions may have no answer (SQuAD v2.0)
    null_threshold: float = 0.0  # QA v2.0: answer only when null score - best span score <= this
    n_best_size: int = 20
    max_answer_length: int = 30
    columns: dict[str, str] = field(default_factory=dict)  # text_column / text_pair_column / label_column

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise OneBertError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")

    @property
    def default_metric(self) -> str:
        """The task's standard metric: accuracy, Pearson r, entity F1, SQuAD F1."""
        return {"classification": "pearson" if self.regression else "accuracy", "ner": "f1", "qa": "f1"}[self.task]

    def selection_metrics(self) -> tuple[str, ...]:
        return SELECTION_METRICS["regression" if self.regression else self.task]

    def metadata(self) -> dict[str, Any]:
        """The `onebert` entry of config.json (labels live in id2label, where transformers reads them)."""
        data: dict[str, Any] = {"task": self.task, "max_seq_length": self.max_seq_length}
        if self.task == "qa":
            data.update(doc_stride=self.doc_stride, max_query_length=self.max_query_length,
                        version_2=self.version_2, null_threshold=self.null_threshold,
                        n_best_size=self.n_best_size, max_answer_length=self.max_answer_length)
        if self.columns:
            data["columns"] = dict(self.columns)
        return data

    def apply_to(self, config, **facts: Any):
        """A copy of a BertConfig that carries this spec (and `facts`, e.g. the validation scores)."""
        changes: dict[str, Any] = {"onebert": {**self.metadata(), **facts}}
        if self.task == "qa":
            changes.update(num_labels=2, id2label=None, problem_type=None)
        elif self.regression:
            changes.update(num_labels=1, id2label=None, problem_type="regression")
        else:
            changes.update(id2label=dict(enumerate(self.labels or [])),
                           problem_type="single_label_classification" if self.task == "classification" else None)
        return dataclasses.replace(config, **changes)

    @classmethod
    def from_config(cls, config, source: str = "config.json") -> "TaskSpec":
        meta = dict(config.onebert or {})
        task = meta.get("task")
        if task is None:
            architectures = config.extra.get("architectures") or []
            task = next((_TASK_OF_ARCHITECTURE[a] for a in architectures if a in _TASK_OF_ARCHITECTURE), None)
            if task is None:
                raise OneBertError(f"{source}: not a fine-tuned model (no onebert.task, and architectures "
                                   f"{architectures or 'absent'} name no task head); fine-tune it with "
                                   f"`onebert finetune` first")
        if task not in TASKS:
            raise OneBertError(f"{source}: onebert.task is {task!r}; expected one of {', '.join(TASKS)}")
        regression = task == "classification" and (config.problem_type == "regression" or
                                                   (config.num_labels == 1 and config.problem_type is None))
        labels = None
        if task != "qa" and not regression:
            labels = [config.id2label[i] for i in range(len(config.id2label))] if config.id2label else \
                [str(i) for i in range(config.num_labels)]
        known = {f.name for f in dataclasses.fields(cls)} - {"task", "labels", "regression"}
        settings = {k: v for k, v in meta.items() if k in known}
        settings.setdefault("max_seq_length", min(DEFAULT_MAX_SEQ_LENGTH[task], config.max_position_embeddings))
        for name in ("max_seq_length", "doc_stride", "max_query_length", "n_best_size", "max_answer_length"):
            value = settings.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise OneBertError(f"{source}: onebert.{name} must be a positive integer, got {value!r}")
        threshold = settings.get("null_threshold", 0.0)
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not np.isfinite(threshold):
            raise OneBertError(f"{source}: onebert.null_threshold must be a finite number, got {threshold!r}")
        columns = settings.get("columns") or {}
        if not isinstance(columns, dict):
            raise OneBertError(f"{source}: onebert.columns must be an object, got {columns!r}")
        return cls(task=task, labels=labels, regression=regression, **settings)


# ---------------------------------------------------------------------- loading


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory, or a run directory whose best/ (else final/) model is meant."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for name in ("best", "final"):
        if (path / name / "config.json").is_file():
            return path / name
    if not path.exists():
        raise OneBertError(f"{path}: no such model directory")
    raise OneBertError(f"{path}: no config.json (nor best/ or final/ inside); is this a model directory?")


def load_tokenizer(directory: Path, config):
    from onebert.tokenizer import Tokenizer

    if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise OneBertError(f"{directory}: no tokenizer files (tokenizer.json or vocab.txt); copy the tokenizer "
                           "the model was trained with into this directory")
    tokenizer = Tokenizer.from_pretrained(directory)
    tokenizer.check_fits(config, where=str(directory))
    return tokenizer


def model_class(task: str):
    import onebert.model as model_module

    return getattr(model_module, MODEL_CLASSES[task])


@dataclass
class Predictor:
    """A fine-tuned model ready to run: model (eval mode, on its device), tokenizer and task spec."""

    model: Any
    tokenizer: Any
    spec: TaskSpec
    device: Any
    batch_size: int = 32
    precision: str = "fp32"
    directory: Path | None = None
    progress: bool = False  # a progress bar on a terminal (the commands; not the pipeline)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str = "auto", batch_size: int = 32,
             max_length: int | None = None, task: str | None = None, precision: str = "fp32") -> "Predictor":
        from onebert.config import BertConfig
        from onebert.train import precision as prec

        directory = resolve_model_dir(model_dir)
        config = BertConfig.load(directory)
        spec = TaskSpec.from_config(config, source=str(directory / "config.json"))
        if task is not None and task != spec.task:
            raise OneBertError(f"{directory}: the model was fine-tuned for {spec.task}, not {task}")
        if batch_size < 1:
            raise OneBertError(f"batch size must be positive, got {batch_size}")
        if max_length is not None:
            if max_length < 3:
                raise OneBertError(f"max_length must be at least 3, got {max_length}")
            spec = dataclasses.replace(spec, max_seq_length=max_length)
        if spec.max_seq_length > config.max_position_embeddings:
            raise OneBertError(f"{directory}: max_seq_length {spec.max_seq_length} exceeds the model's "
                               f"{config.max_position_embeddings} positions")
        tokenizer = load_tokenizer(directory, config)
        model = model_class(spec.task).from_pretrained(directory)
        missing = model.load_report.initialised + model.load_report.reinitialised
        if missing:
            raise OneBertError(f"{directory}: the checkpoint has no trained {spec.task} head "
                               f"({', '.join(missing[:4])} missing); fine-tune it with `onebert finetune` first")
        torch_device = prec.resolve_device(device)
        model.to(torch_device).eval()
        return cls(model=model, tokenizer=tokenizer, spec=spec, device=torch_device, batch_size=batch_size,
                   precision=prec.resolve_precision(precision, torch_device), directory=directory)

    def autocast(self) -> contextlib.AbstractContextManager:
        from onebert.train import precision as prec

        return prec.autocast(self.device, self.precision)

    def predict(self, examples: Sequence[Any]) -> list[Any]:
        """Task predictions (ClassificationPrediction / NerPrediction / QAPrediction), one per example."""
        if not examples:
            return []
        features = encode(self.spec, self.tokenizer, examples, with_labels=False)
        outputs = forward(self.model, features, batch_size=self.batch_size, device=self.device,
                          autocast=self.autocast(), pad_token_id=self.tokenizer.pad_token_id, progress=self.progress)
        return decode(self.spec, outputs, features, examples)

    def evaluate(self, examples: Sequence[Any]) -> tuple[dict[str, Any], list[Any]]:
        predictions = self.predict(examples)
        return score(self.spec, predictions, examples), predictions


# ---------------------------------------------------------------------- the three steps


def encode(spec: TaskSpec, tokenizer, examples: Sequence[Any], with_labels: bool) -> Features:
    """Model inputs of the examples (with training targets when with_labels)."""
    if spec.task == "classification":
        from onebert.tasks.classification import classification_features

        return classification_features(tokenizer, examples, max_seq_length=spec.max_seq_length,
                                       label_list=spec.labels, regression=spec.regression, with_labels=with_labels)
    if spec.task == "ner":
        from onebert.tasks.ner import ner_features

        return ner_features(tokenizer, examples, max_seq_length=spec.max_seq_length, tag_list=spec.labels,
                            with_labels=with_labels)
    from onebert.tasks.qa import qa_features

    return qa_features(tokenizer, examples, max_seq_length=spec.max_seq_length, doc_stride=spec.doc_stride,
                       max_query_length=spec.max_query_length, training=with_labels)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices, longest first, in batches of batch_size: little padding, and an oversized batch fails first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def forward(model, features: Features, *, batch_size: int, device, autocast=None, pad_token_id: int = 0,
            progress: bool = False) -> dict[str, list[np.ndarray]]:
    """Run the model over every feature row; per-row float32 outputs in the rows' order.

    "logits": [num_labels] per row (classification) or [length, num_labels] (NER);
    "start_logits" / "end_logits": [length] per row (QA). Padding is cut off each row.
    progress: a progress bar on a terminal (stderr).
    """
    import torch

    autocast = autocast or contextlib.nullcontext()
    lengths = features.lengths()
    results: dict[str, list[Any]] = {}
    batches = length_sorted_batches(lengths, batch_size)
    if progress and sys.stderr.isatty() and len(batches) > 1:
        from tqdm import tqdm

        batches = tqdm(batches, unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True)
    with torch.inference_mode():
        for rows in batches:
            batch = collate([{k: features.columns[k][i] for k in _INPUT_KEYS} for i in rows], pad_token_id)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                out = model(**batch)
            names = ("start_logits", "end_logits") if out.start_logits is not None else ("logits",)
            for name in names:
                values = getattr(out, name).float().cpu().numpy()
                column = results.setdefault(name, [None] * len(lengths))
                token_level = name != "logits" or values.ndim == 3  # NER and QA: one value per token
                for j, i in enumerate(rows):
                    column[i] = values[j, :lengths[i]] if token_level else values[j]
    return results


def decode(spec: TaskSpec, outputs: dict[str, list[np.ndarray]], features: Features,
           examples: Sequence[Any]) -> list[Any]:
    if spec.task == "classification":
        from onebert.tasks.classification import decode_classification

        logits = np.stack(outputs["logits"]) if outputs else np.zeros((0, 1 if spec.regression else len(spec.labels)))
        return decode_classification(logits, label_list=spec.labels, regression=spec.regression)
    if spec.task == "ner":
        from onebert.tasks.ner import decode_ner

        return decode_ner(outputs.get("logits", []), features, examples, spec.labels)
    from onebert.tasks.qa import decode_qa

    return decode_qa(outputs.get("start_logits", []), outputs.get("end_logits", []), features, examples,
                     n_best_size=spec.n_best_size, max_answer_length=spec.max_answer_length,
                     version_2=spec.version_2, null_threshold=spec.null_threshold)


def score(spec: TaskSpec, predictions: Sequence[Any], examples: Sequence[Any]) -> dict[str, Any]:
    """The task's standard metrics (see onebert.tasks.metrics); classification adds its confusion matrix."""
    if spec.task == "classification":
        from onebert.tasks.readers import label_ids
        from onebert.tasks.classification import evaluate_classification

        metrics = evaluate_classification(predictions, examples, label_list=spec.labels, regression=spec.regression)
        if not spec.regression:
            index = {name: i for i, name in enumerate(spec.labels)}
            matrix = np.zeros((len(spec.labels), len(spec.labels)), dtype=np.int64)
            np.add.at(matrix, (label_ids(examples, spec.labels), [index[p.label] for p in predictions]), 1)
            metrics.update(labels=list(spec.labels), confusion_matrix=matrix.tolist())
        return metrics
    if spec.task == "ner":
        from onebert.tasks.ner import evaluate_ner

        return evaluate_ner(predictions, examples)
    from onebert.tasks.qa import evaluate_qa

    return evaluate_qa(predictions, examples, version_2=True if spec.version_2 else None)


# ---------------------------------------------------------------------- output records


def classification_record(prediction, spec: TaskSpec) -> dict[str, Any]:
    if spec.regression:
        return {"score": float(prediction.label)}
    return {"label": prediction.label, "score": prediction.score,
            "scores": dict(zip(spec.labels, prediction.probabilities))}


def entity_records(prediction, words: Sequence[str], text: str,
                   spans: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Entities with character offsets into `text`; spans[i] = (start, end) of word i in it."""
    records = []
    for entity in prediction.entities(words):
        start, end = spans[entity["start"]][0], spans[entity["end"] - 1][1]
        records.append({"entity": entity["type"], "word": text[start:end], "start": start, "end": end,
                        "score": entity["score"]})
    return records


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of a raw text as BERT splits them (whitespace, then punctuation: CoNLL-like tokens), with
    their character spans in the text."""
    from tokenizers.pre_tokenizers import BertPreTokenizer

    pieces = BertPreTokenizer().pre_tokenize_str(text)
    return [word for word, _ in pieces], [span for _, span in pieces]


def joined_words(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Pre-split words (CoNLL input) as one text with single spaces, and each word's span in it."""
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), spans


def answer_record(prediction) -> dict[str, Any]:
    """The chosen answer and its probability among the n-best candidates ("" / -1 for no answer)."""
    chosen = next((span for span in prediction.n_best if (span.start, span.end) == (prediction.start, prediction.end)),
                  None)
    return {"answer": prediction.text, "start": prediction.start, "end": prediction.end,
            "score": chosen.probability if chosen is not None else 0.0}


__all__ = ["TaskSpec", "Predictor", "resolve_model_dir", "load_tokenizer", "model_class", "encode", "forward",
           "decode", "score", "length_sorted_batches", "classification_record", "entity_records", "split_words", "joined_words",
           "answer_record", "SELECTION_METRICS", "LOWER_IS_BETTER", "DEFAULT_MAX_SEQ_LENGTH"]
