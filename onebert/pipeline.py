"""`onebert.pipeline`: a fine-tuned model as a Python function from inputs to labels, entities or answers.

    pipe = onebert.pipeline(model="runs/sst2")          # the task is read from the model directory
    pipe(["a gripping film", "dull"])                   # [{"label": "1", "score": 0.97, "scores": {...}}, ...]

Inputs per task, and what comes back (one output per input, in the inputs' order):
- classification: texts or (text, text_pair) pairs -> {"label", "score", "scores": {label: probability}};
  a regression model -> {"score": value}.
- ner: texts -> a list of {"entity", "word", "start", "end", "score"} per text (character offsets;
  the text is split into words as BERT splits it, and an entity's score is its words' mean probability).
- qa: {"question", "context"} dicts -> {"answer", "start", "end", "score"} (character offsets into
  the context, score = the answer's probability among the n-best candidates; "" and -1 when the
  model, a SQuAD v2.0 one, decides there is no answer).
A single input (a string, a (text, pair) tuple, a QA dict) gives a single output.

Inputs are batched and sorted by length (`onebert.predict.forward`, the code path of `onebert
evaluate` and `onebert predict`), so a call with many inputs of mixed lengths computes little padding.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from onebert.errors import OneBertError
from onebert.predict import Predictor, answer_record, classification_record, entity_records, split_words


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
        single = self._is_single(inputs)
        items = [inputs] if single else list(inputs)
        outputs = getattr(self, f"_{self.task}")(items)
        return outputs[0] if single else outputs

    def _is_single(self, inputs: Any) -> bool:
        if isinstance(inputs, str) or (self.task == "qa" and isinstance(inputs, dict)):
            return True
        return (self.task == "classification" and isinstance(inputs, tuple) and len(inputs) == 2
                and all(isinstance(x, str) for x in inputs))

    def _classification(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        from onebert.data.tasks import TextExample

        examples = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                text, pair = item, None
            elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
                text, pair = item
            else:
                raise OneBertError(f"input {i}: expected a text or a pair of two texts, got {_kind(item)}")
            _refuse_surrogates(i, text, pair)
            examples.append(TextExample(text=text, text_pair=pair, source=f"input {i}"))
        # Single texts and pairs are encoded apart ([CLS] A [SEP] vs [CLS] A [SEP] B [SEP]); a server's
        # batch may hold both.
        outputs: list[dict[str, Any]] = [{} for _ in items]
        for is_pair in (False, True):
            rows = [i for i, example in enumerate(examples) if (example.text_pair is not None) == is_pair]
            for i, prediction in zip(rows, self.predictor.predict([examples[i] for i in rows])):
                outputs[i] = classification_record(prediction, self.spec)
        return outputs

    def _ner(self, items: Sequence[Any]) -> list[list[dict[str, Any]]]:
        from onebert.data.tasks import NerExample

        split = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise OneBertError(f"input {i}: expected a text, got {_kind(item)}")
            _refuse_surrogates(i, item)
            split.append(split_words(item))
        examples = [NerExample(words=words, source=f"input {i}") for i, (words, _) in enumerate(split)]
        # A text without words (empty, only spaces) has no entities and needs no model call.
        filled = [i for i, example in enumerate(examples) if example.words]
        predictions = self.predictor.predict([examples[i] for i in filled])
        outputs: list[list[dict[str, Any]]] = [[] for _ in items]
        for i, prediction in zip(filled, predictions):
            words, spans = split[i]
            outputs[i] = entity_records(prediction, words, items[i], spans)
        return outputs

    def _qa(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        from onebert.data.tasks import QAExample

        examples = []
        for i, item in enumerate(items):
            if not (isinstance(item, dict) and isinstance(item.get("question"), str)
                    and isinstance(item.get("context"), str)):
                raise OneBertError(f"input {i}: expected {{'question': str, 'context': str}}, got {_kind(item)}")
            _refuse_surrogates(i, item["question"], item["context"])
            examples.append(QAExample(id=str(i), question=item["question"], context=item["context"],
                                      source=f"input {i}"))
        return [answer_record(p) for p in self.predictor.predict(examples)]


def _refuse_surrogates(i: int, *texts: str | None) -> None:
    """A lone surrogate makes the tokenizer refuse the whole batch; name the input that holds it."""
    from onebert.data.text_input import describe_surrogate, lone_surrogate

    for text in texts:
        index = None if text is None else lone_surrogate(text)
        if index is not None:
            raise OneBertError(f"input {i}: {describe_surrogate(text, index)}")


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(map(str, value))[:5]}"
    return type(value).__name__


def pipeline(task: str | None = None, model: str | os.PathLike | None = None, device: str = "auto",
             batch_size: int = 32, max_length: int | None = None, precision: str = "fp32") -> Pipeline:
    """Load a fine-tuned model directory (or a `onebert finetune` output: its best/ model) for inference.

    task: "classification", "ner" or "qa"; None reads it from the model (an explicit task must match).
    max_length: tokens per sequence (default: the model's fine-tuning max_seq_length).
    """
    if model is None:
        raise OneBertError("pipeline: give model=DIR, a fine-tuned model directory")
    return Pipeline(Predictor.load(model, device=device, batch_size=batch_size, max_length=max_length, task=task,
                                   precision=precision))


__all__ = ["pipeline", "Pipeline"]
