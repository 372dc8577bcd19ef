"""Sequence classification and regression: [CLS] A [SEP] (B [SEP]) -> one label or one number."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from onebert.errors import OneBertError
from onebert.tasks.readers import TextExample, label_ids, regression_targets
from onebert.tasks.base import Task, kind_of, text_lines
from onebert.tasks.features import Features, logit_rows, to_numpy
from onebert.tasks.metrics import classification_metrics, regression_metrics


@dataclass
class ClassificationPrediction:
    label: str | float  # a label name, or the predicted value for regression
    score: float  # the label's softmax probability (the value itself for regression)
    probabilities: list[float] | None = None


def classification_features(tokenizer, examples: Sequence[TextExample], max_seq_length: int = 128,
                            label_list: Sequence[str] | None = None, regression: bool = False,
                            with_labels: bool = True) -> Features:
    """Encode texts (pairs when the examples have text_pair) with longest-first truncation.

    label_list: names in the order of the classifier's outputs (from `build_label_list` on the
    training set). with_labels=False leaves the labels out (prediction).
    """
    texts = [example.text for example in examples]
    pairs = [example.text_pair or "" for example in examples] if any(e.text_pair is not None for e in examples) \
        else None
    encoded = tokenizer(texts, pairs, max_length=max_seq_length, truncation="longest_first", padding=False,
                        return_tensors=None, return_offsets_mapping=False, return_word_ids=False)
    columns: dict[str, list[Any]] = {"input_ids": encoded["input_ids"], "token_type_ids": encoded["token_type_ids"]}
    if with_labels:
        if regression:
            columns["labels"] = regression_targets(examples)
        else:
            if label_list is None:
                raise ValueError("label_list is needed to turn labels into class ids")
            columns["labels"] = label_ids(examples, label_list)
    return Features(columns=columns, example_index=list(range(len(examples))))


def decode_classification(logits: Any, label_list: Sequence[str] | None = None,
                          regression: bool = False) -> list[ClassificationPrediction]:
    """logits [N, num_labels] (torch or numpy, or a list of per-batch arrays) -> one prediction per row;
    regression: [N] or [N, 1]."""
    values = np.stack(logit_rows(logits, row_ndim=1)) if isinstance(logits, (list, tuple)) else to_numpy(logits)
    if regression:
        return [ClassificationPrediction(label=float(v), score=float(v)) for v in values.reshape(-1)]
    if label_list is None:
        raise ValueError("label_list is needed to name the predicted classes")
    if values.ndim != 2 or values.shape[1] != len(label_list):
        raise ValueError(f"logits of shape {values.shape} do not match {len(label_list)} labels")
    probabilities = _softmax(values)
    best = probabilities.argmax(axis=1)
    return [ClassificationPrediction(label=label_list[int(k)], score=float(p[k]), probabilities=p.tolist())
            for k, p in zip(best, probabilities)]


def evaluate_classification(predictions: Sequence[ClassificationPrediction], examples: Sequence[TextExample],
                            label_list: Sequence[str] | None = None, regression: bool = False,
                            positive: int = 1) -> dict[str, float]:
    """accuracy / precision / recall / f1 / f1_macro / mcc, or pearson / spearman / mse for regression.

    Binary scores are for class `positive` of label_list (default the second name in sorted
    order, "1" for GLUE's 0/1 labels).
    """
    if len(predictions) != len(examples):
        raise ValueError(f"got {len(predictions)} predictions for {len(examples)} examples")
    if regression:
        return regression_metrics([p.label for p in predictions], regression_targets(examples))
    if label_list is None:
        raise ValueError("label_list is needed to score class predictions")
    gold = label_ids(examples, label_list)
    index = {name: i for i, name in enumerate(label_list)}
    predicted = [index[p.label] for p in predictions]  # type: ignore[index]
    return classification_metrics(predicted, gold, num_labels=len(label_list), positive=positive)


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _examples_of(items: Sequence[Any]) -> list[TextExample]:
    from onebert.errors import OneBertError

    examples = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            text, pair = item, None
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            text, pair = item
        else:
            raise OneBertError(f"input {i}: expected a text or a pair of two texts, got {kind_of(item)}")
        examples.append(TextExample(text=text, text_pair=pair, source=f"input {i}"))
    return examples


class ClassificationTask(Task):
    """A label per text or text pair (SST-2, MNLI, ...): accuracy, F1, MCC and a confusion matrix."""

    name = "classification"
    auto_bf16 = True
    model_class_name = "BertForSequenceClassification"
    metrics = ("accuracy", "f1", "f1_macro", "mcc", "precision", "recall")
    # Sentences of similar length batched together: little padding, and the mean loss per sequence does not
    # weigh short sentences more (unlike NER's per-token mean; see NerTask).
    group_size = 50
    options = ("text_column", "text_pair_column", "label_column", "regression")
    input_formats = ("text", "tsv", "csv", "jsonl", "json", "parquet", "datasets")
    data_formats = ("tsv", "csv", "jsonl", "json", "parquet", "datasets")
    serve_request = "texts_or_pairs"
    plots = True
    regression = False

    @classmethod
    def accepts(cls, name: str, config) -> bool:
        return name == cls.name and not is_regression_config(config)

    def config_changes(self) -> dict[str, Any]:
        return {"id2label": dict(enumerate(self.spec.labels or [])), "problem_type": "single_label_classification"}

    def describe(self) -> str:
        return f"{len(self.spec.labels)} classes"

    @classmethod
    def training_task(cls, args, train_examples) -> str:
        from onebert.tasks.readers import looks_like_regression

        return "regression" if getattr(args, "regression", False) or looks_like_regression(train_examples) \
            else cls.name

    @classmethod
    def training_spec(cls, args, train_examples, validation_examples, max_seq_length, log=print):
        from onebert.errors import OneBertError
        from onebert.tasks.readers import build_label_list

        labels = build_label_list(train_examples)
        if len(labels) < 2:
            raise OneBertError(f"{args.train}: every example has the label {labels[0]!r}; a classifier needs "
                               "at least two classes (or --task regression)")
        if validation_examples is not None:  # an unknown label is named now, not after training
            label_ids(validation_examples, labels)
        return dict(labels=labels, max_seq_length=max_seq_length, columns=columns_option(args))

    def read(self, path, columns=None, options=None) -> list[TextExample]:
        return self.read_examples(path, columns, options, labelled=True)

    def read_examples(self, path, columns, options, labelled: bool) -> list[TextExample]:
        from onebert.tasks.readers import ReadOptions, read_classification
        from onebert.tasks.records import check_format, classification_records, record_format

        options = options or ReadOptions()
        check_format(self.name, options.file_format, self.data_formats)
        fmt = record_format(path, options.file_format)
        if fmt is not None:
            return classification_records(path, fmt, options, columns, labelled=labelled)
        if not labelled:
            columns = {k: v for k, v in (columns or {}).items() if k != "label_column"}
        if options.label_names is not None:
            raise OneBertError(f"--label-names names the integer labels of Parquet, JSON-array and datasets "
                               f"files; {path} is a {options.file_format or Path(path).suffix or 'table'} file")
        return read_classification(path, file_format=options.file_format, labelled=labelled, **(columns or {}))

    def features(self, tokenizer, examples, with_labels: bool) -> Features:
        return classification_features(tokenizer, examples, max_seq_length=self.spec.max_seq_length,
                                       label_list=self.spec.labels, regression=self.regression,
                                       with_labels=with_labels)

    def training_stats(self, out, batch):
        import torch

        return {"correct": (out.logits.argmax(-1) == batch["labels"]).sum(),
                "predicted": torch.full((), float(batch["labels"].numel()), device=out.logits.device)}

    def decode(self, outputs, features, examples) -> list[ClassificationPrediction]:
        width = 1 if self.regression else len(self.spec.labels)
        logits = np.stack(outputs["logits"]) if outputs else np.zeros((0, width))
        return decode_classification(logits, label_list=self.spec.labels, regression=self.regression)

    def score(self, predictions, examples) -> dict[str, Any]:
        """evaluate_classification's metrics and the confusion matrix (rows gold, columns predicted)."""
        labels = self.spec.labels
        metrics: dict[str, Any] = evaluate_classification(predictions, examples, label_list=labels)
        index = {name: i for i, name in enumerate(labels)}
        matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
        np.add.at(matrix, (label_ids(examples, labels), [index[p.label] for p in predictions]), 1)
        metrics.update(labels=list(labels), confusion_matrix=matrix.tolist())
        return metrics

    def record(self, prediction: ClassificationPrediction) -> dict[str, Any]:
        return {"label": prediction.label, "score": prediction.score,
                "scores": dict(zip(self.spec.labels, prediction.probabilities))}

    def guess_format(self, path: Path, stdin: bool) -> str:
        from onebert.tasks.records import record_format

        suffix = path.suffix.lower()
        if not stdin and record_format(path) is not None:
            return record_format(path)  # type: ignore[return-value]
        if stdin or suffix in (".txt", ".text", ""):
            return "text"
        return {".tsv": "tsv", ".tab": "tsv", ".csv": "csv"}.get(suffix, "jsonl")

    def predict_records(self, predict, path, fmt, columns) -> list[dict[str, Any]]:
        if fmt == "text":
            examples = [TextExample(text=line, source=f"{path}: line {n}") for n, line in enumerate(text_lines(path), 1)]
        else:
            from onebert.tasks.readers import ReadOptions
            from onebert.tasks.records import DEFAULT_SPLITS

            examples = self.read_examples(path, columns, ReadOptions(file_format=fmt, split=DEFAULT_SPLITS["input"]),
                                          labelled=False)
        return [self.record(p) for p in predict(examples)]

    def is_single_input(self, inputs) -> bool:
        return isinstance(inputs, str) or (isinstance(inputs, tuple) and len(inputs) == 2
                                           and all(isinstance(x, str) for x in inputs))

    def pipeline_outputs(self, predict, items) -> list[dict[str, Any]]:
        examples = _examples_of(items)
        # Single texts and pairs are encoded apart ([CLS] A [SEP] vs [CLS] A [SEP] B [SEP]); a server's
        # batch may hold both.
        outputs: list[dict[str, Any]] = [{} for _ in items]
        for is_pair in (False, True):
            rows = [i for i, example in enumerate(examples) if (example.text_pair is not None) == is_pair]
            for i, prediction in zip(rows, predict([examples[i] for i in rows])):
                outputs[i] = self.record(prediction)
        return outputs


def is_regression_config(config) -> bool:
    """transformers' rule for a sequence-classification head: problem_type "regression", or one output
    and no problem_type (so models saved as task "classification" with problem_type "regression" too)."""
    return config.is_regression


def columns_option(args) -> dict[str, str]:
    return {k: getattr(args, k) for k in ("text_column", "text_pair_column", "label_column")
            if getattr(args, k, None)}
