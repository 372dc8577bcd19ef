"""`TaskSpec`: what a fine-tuned model does and how its inputs are built, saved as config.json's `onebert` entry.

The spec is data; what differs per task (its config fields, its extra settings) is asked of its Task.
Models saved before regression was a task of its own (task "classification" with problem_type
"regression") and transformers' regression models load as regression: `Task.resolve` decides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onebert.errors import OneBertError
from onebert.tasks import TASKS, get_task, task_of_architecture
from onebert.tasks.base import Task


@dataclass
class TaskSpec:
    """A task name and its settings (see the module docstring)."""

    task: str
    labels: list[str] | None = None  # class names or tags in the order of the logits (None: regression, QA)
    regression: bool = False  # the old way to say task "regression" (kept so TaskSpec("classification", regression=True) works)
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
        if self.regression:
            self.task = "regression"
        self.regression = self.task == "regression"

    @property
    def handler(self) -> Task:
        """The Task that runs this spec."""
        return TASKS[self.task](self)

    @property
    def default_metric(self) -> str:
        return self.handler.default_metric

    def selection_metrics(self) -> tuple[str, ...]:
        return TASKS[self.task].metrics

    def metadata(self) -> dict[str, Any]:
        """The `onebert` entry of config.json (labels live in id2label, where transformers reads them)."""
        data: dict[str, Any] = {"task": self.task, "max_seq_length": self.max_seq_length, **self.handler.metadata()}
        if self.columns:
            data["columns"] = dict(self.columns)
        return data

    def apply_to(self, config, **facts: Any):
        """A copy of a BertConfig that carries this spec (and `facts`, e.g. the validation scores)."""
        return dataclasses.replace(config, onebert={**self.metadata(), **facts}, **self.handler.config_changes())

    @classmethod
    def from_config(cls, config, source: str = "config.json") -> "TaskSpec":
        meta = dict(config.onebert or {})
        task = meta.get("task")
        if task is None:
            architectures = config.extra.get("architectures") or []
            task = next((task_of_architecture(a) for a in architectures if task_of_architecture(a)), None)
            if task is None:
                raise OneBertError(f"{source}: not a fine-tuned model (no onebert.task, and architectures "
                                   f"{architectures or 'absent'} name no task head); fine-tune it with "
                                   f"`onebert finetune` first")
        if task not in TASKS:
            raise OneBertError(f"{source}: onebert.task is {task!r}; expected one of {', '.join(TASKS)}")
        kind = next((t for t in TASKS.values() if t.accepts(task, config)), get_task(task))
        known = {f.name for f in dataclasses.fields(cls)} - {"task", "labels", "regression"}
        settings = {k: v for k, v in meta.items() if k in known}
        settings.setdefault("max_seq_length", min(kind.default_max_seq_length, config.max_position_embeddings))
        _check_settings(settings, source)
        return cls(task=kind.name, labels=kind.labels_from_config(config), **settings)


def _check_settings(settings: dict[str, Any], source: str) -> None:
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
