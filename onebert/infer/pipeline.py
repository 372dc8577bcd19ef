"""`onebert.pipeline`: a fine-tuned model as a Python function from inputs to labels, entities or answers.

    pipe = onebert.pipeline(model="runs/sst2")          # the task is read from the model directory
    pipe(["a gripping film", "dull"])                   # [{"label": "1", "score": 0.97, "scores": {...}}, ...]

Inputs per task, and what comes back (one output per input, in the inputs' order):
- classification: texts or (text, text_pair) pairs -> {"label", "score", "scores": {label: probability}};
- regression: the same inputs -> {"score": value}.
- ner: texts -> a list of {"entity", "word", "start", "end", "score"} per text (character offsets;
  the text is split into words as BERT splits it, and an entity's score is its words' mean probability).
- qa: {"question", "context"} dicts -> {"answer", "start", "end", "score"} (character offsets into
  the context, score = the answer's probability among the n-best candidates; "" and -1 when the
  model, a SQuAD v2.0 one, decides there is no answer).
A single input (a string, a (text, pair) tuple, a QA dict) gives a single output.

Inputs are batched and sorted by length (`onebert.infer.predictor.forward`, the code path of `onebert
evaluate` and `onebert predict`), so a call with many inputs of mixed lengths computes little padding.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from onebert.errors import OneBertError
from onebert.infer.predictor import Predictor


class Pipeline:
    """A loaded model: call it on inputs. `.task`, `.model` (the torch module), `.tokenizer`, `.spec`."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.task = predictor.spec.task
        self.model = predictor.model
        self.tokenizer = predictor.tokenizer
        self.spec = predictor.spec

    def __repr__(self) -> str:
        return f"Pipeline(task={self.task!r}, model={str(self.predictor.directory)!r})"

    def __call__(self, inputs: Any) -> Any:
        handler = self.spec.handler
        single = handler.is_single_input(inputs)
        items = [inputs] if single else list(inputs)
        for i, item in enumerate(items):
            _refuse_surrogates(i, item)
        outputs = handler.pipeline_outputs(self.predictor.predict, items)
        return outputs[0] if single else outputs

def _refuse_surrogates(i: int, item: Any) -> None:
    """A lone surrogate makes the tokenizer refuse the whole batch; name the input that holds it."""
    from onebert.text_input import describe_surrogate, lone_surrogate

    texts = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else [item]
    for text in texts:
        index = lone_surrogate(text) if isinstance(text, str) else None
        if index is not None:
            raise OneBertError(f"input {i}: {describe_surrogate(text, index)}")


def pipeline(task: str | None = None, model: str | os.PathLike | None = None, device: str = "auto",
             batch_size: int = 32, max_length: int | None = None, precision: str = "fp32") -> Pipeline:
    """Load a fine-tuned model directory (or a `onebert finetune` output: its best/ model) for inference.

    task: a name of onebert.tasks.TASKS; None reads it from the model (an explicit task must match).
    max_length: tokens per sequence (default: the model's fine-tuning max_seq_length).
    """
    if model is None:
        raise OneBertError("pipeline: give model=DIR, a fine-tuned model directory")
    return Pipeline(Predictor.load(model, device=device, batch_size=batch_size, max_length=max_length, task=task,
                                   precision=precision))


__all__ = ["pipeline", "Pipeline"]

