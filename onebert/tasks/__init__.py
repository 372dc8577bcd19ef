"""Fine-tuning tasks: one `Task` (onebert.tasks.base) per file, registered here by name.

classification (labels), regression (a number), ner (a tag per word), qa (an answer span). Each reads its
files (`readers`), builds features (`features.Features`, `collate`), decodes outputs and scores them
(`metrics`), and says what its saved config, predict records and served requests look like. Everything
outside this package asks the spec's Task (`TaskSpec.handler`) instead of comparing task names.
"""

from __future__ import annotations

from onebert.errors import OneBertError
from onebert.tasks.base import Task
from onebert.tasks.classification import ClassificationTask
from onebert.tasks.features import IGNORE_INDEX, Features, collate, logit_rows, to_numpy
from onebert.tasks.ner import NerTask
from onebert.tasks.qa import QATask
from onebert.tasks.regression import RegressionTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassificationTask, RegressionTask, NerTask, QATask)}


def get_task(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise OneBertError(f"unknown task {name!r}; use one of {', '.join(TASKS)}") from None


def task_of_architecture(architecture: str) -> str | None:
    """The task of a transformers `architectures` entry (BertForSequenceClassification -> classification;
    `Task.resolve` then tells regression apart)."""
    return next((name for name, task in TASKS.items() if task.model_class_name == architecture), None)


__all__ = ["TASKS", "get_task", "task_of_architecture", "Task", "Features", "collate", "IGNORE_INDEX",
           "logit_rows", "to_numpy"]
