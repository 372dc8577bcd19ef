"""Sequence classification and regression: [CLS] A [SEP] (B [SEP]) -> one label or one number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from onebert.tasks.readers import TextExample, label_ids, regression_targets
from onebert.tasks import Features, logit_rows, to_numpy
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
