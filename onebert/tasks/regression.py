"""Sentence (pair) regression: [CLS] A [SEP] (B [SEP]) -> one number (STS-B), MSE loss, Pearson r."""

from __future__ import annotations

from typing import Any

from onebert.tasks.classification import (ClassificationPrediction, ClassificationTask, columns_option,
                                          evaluate_classification, is_regression_config)


class RegressionTask(ClassificationTask):
    """ClassificationTask's inputs and files; one output, and a number instead of a label."""

    name = "regression"
    auto_bf16 = False  # values, not labels: bf16 would move them
    metrics = ("pearson", "spearman", "mse")
    lower_is_better = frozenset({"mse"})
    options = ("text_column", "text_pair_column", "label_column", "regression")
    plots = False
    regression = True

    @classmethod
    def accepts(cls, name: str, config) -> bool:
        return name == cls.name or (name == "classification" and is_regression_config(config))

    @classmethod
    def labels_from_config(cls, config) -> None:
        return None

    def config_changes(self) -> dict[str, Any]:
        return {"num_labels": 1, "id2label": None, "problem_type": "regression"}

    def describe(self) -> str:
        return "regression"

    @classmethod
    def training_task(cls, args, train_examples) -> str:
        return cls.name

    @classmethod
    def training_spec(cls, args, train_examples, validation_examples, max_seq_length, log=print):
        from onebert.tasks.readers import regression_targets
        regression_targets(train_examples)
        if validation_examples is not None:  # a non-number is named now, not after training
            regression_targets(validation_examples)
        return dict(max_seq_length=max_seq_length, columns=columns_option(args))

    def training_stats(self, out, batch):
        return {}

    def score(self, predictions, examples) -> dict[str, Any]:
        return evaluate_classification(predictions, examples, regression=True)

    def record(self, prediction: ClassificationPrediction) -> dict[str, Any]:
        return {"score": float(prediction.label)}
