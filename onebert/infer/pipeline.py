"""`onebert.pipeline`: a model as a Python function, called as transformers' `pipeline()` is.

    pipe = onebert.pipeline("text-classification", model="runs/sst2")   # or model= alone: the task is read
    pipe("a gripping film")                    # [{"label": "1", "score": 0.97}]
    pipe(["a gripping film", "dull"], top_k=None)                      # every label, sorted, per text

Task names: transformers' (`text-classification` / `sentiment-analysis`, `token-classification` / `ner`,
`question-answering`, `fill-mask`, `feature-extraction`) or onebert's (classification, regression, ner, qa).
Outputs have the shapes of transformers' pipelines (onebert.infer.conventions says how, and where onebert's
per-word NER differs); tests/test_pipeline_conventions.py compares them with transformers on one directory:
- text classification (also regression models: {"label": id2label[0], "score": value}): a string gives
  [{"label", "score"}], a list a list of those, a {"text", "text_pair"} dict (or a (text, pair) tuple)
  {"label", "score"}; `top_k=N` / `top_k=None` (all labels): a list sorted by score per input;
- token classification: per text a list of {"entity" (B-/I- tag), "score", "index", "word", "start",
  "end"} (aggregation_strategy="none", the default) or, for simple / first / average / max, of
  {"entity_group", "score", "word", "start", "end"} (character offsets into the text);
- question answering: `pipe(question=..., context=...)`, a {"question", "context"} dict or a list of
  them -> {"score", "start", "end", "answer"} ("" and -1 when a SQuAD v2.0 model decides there is no
  answer; score = the answer's probability among the n-best candidates); top_k > 1: a list;
- fill-mask (a pretraining / masked-LM directory): per [MASK] the top_k (5) {"score", "token",
  "token_str", "sequence"};
- feature-extraction (any encoder directory): per text the last layer's features, [1, tokens, hidden]
  nested lists ([CLS] and [SEP] included).
`batch_size` is taken at construction and per call. The server answers with onebert's own records
(`Pipeline.records`: {"label", "score", "scores"}, entity spans, answers), unchanged.

Inputs are batched and sorted by length (`onebert.infer.predictor.forward`, the code path of `onebert
evaluate` and `onebert predict`), so a call with many inputs of mixed lengths computes little padding.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from onebert.errors import OneBertError
from onebert.infer.predictor import Predictor


_UNSET: Any = object()  # "top_k not given": transformers' legacy text-classification shape

# transformers' task names -> the onebert tasks they stand for (text-classification takes regression models too).
_SEQUENCE_TASKS = ("classification", "regression")
TASK_ALIASES = {"text-classification": _SEQUENCE_TASKS, "sentiment-analysis": _SEQUENCE_TASKS,
                "token-classification": ("ner",), "question-answering": ("qa",)}


class Pipeline:
    """A loaded fine-tuned model: call it on inputs. `.task`, `.model` (the torch module), `.tokenizer`, `.spec`."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.task = predictor.spec.task
        self.model = predictor.model
        self.tokenizer = predictor.tokenizer
        self.spec = predictor.spec

    def __repr__(self) -> str:
        return f"Pipeline(task={self.task!r}, model={str(self.predictor.directory)!r})"

    def records(self, items: Sequence[Any]) -> list[Any]:
        """onebert's own output record per input (the server's /predict and `onebert predict` format)."""
        items = list(items)
        for i, item in enumerate(items):
            _refuse_surrogates(i, item)
        return self.spec.handler.pipeline_outputs(self.predictor.predict, items)

    def record_predictor(self) -> "RecordPredictor":
        """This model as the server's predictor: called on a list of inputs, it returns their records."""
        return RecordPredictor(self)

    def __call__(self, inputs: Any = None, *, top_k: Any = _UNSET, aggregation_strategy: str = "none",
                 batch_size: int | None = None, question: Any = None, context: Any = None) -> Any:
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise OneBertError(f"batch_size must be a positive integer, got {batch_size!r}")
        kept = self.predictor.batch_size
        self.predictor.batch_size = batch_size or kept
        try:
            # The input shape the task takes (`Task.serve_request`, as for the server's /predict) picks the call.
            kind = self.spec.handler.serve_request
            if kind == "questions":
                return self._answers(inputs, question, context, 1 if top_k is _UNSET else top_k)
            if question is not None or context is not None:
                raise OneBertError(f"question= and context= are for question answering, not {self.task}")
            if kind == "texts":
                if top_k is not _UNSET:
                    raise OneBertError(f"top_k is for text classification and question answering, not {self.task}")
                return self._entities(inputs, aggregation_strategy)
            return self._classify(inputs, top_k)
        finally:
            self.predictor.batch_size = kept

    def _classify(self, inputs: Any, top_k: Any) -> Any:
        from onebert.infer.conventions import check_top_k, classification_item, classification_output

        legacy = top_k is _UNSET
        if not legacy:
            check_top_k(top_k, allow_none=True)
        single = isinstance(inputs, dict) or self.spec.handler.is_single_input(inputs)
        items = [classification_item(item) for item in ([inputs] if single else _as_list(inputs))]
        id2label = self.model.config.id2label or {}
        label = id2label.get(0, "LABEL_0")
        outputs = [classification_output(record, None if legacy else top_k, legacy, label)
                   for record in self.records(items)]
        if single:
            # transformers' TextClassificationPipeline: a string without top_k answers in a list of one.
            return [outputs[0]] if legacy and isinstance(inputs, str) else outputs[0]
        return outputs

    def _entities(self, inputs: Any, strategy: str) -> Any:
        from onebert.infer.conventions import token_entities
        from onebert.tasks.ner import NerExample, _predict_texts_with_words, split_words
        from onebert.tokenizer import UNK

        single = isinstance(inputs, str)
        texts = [inputs] if single else _as_list(inputs)
        split = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                from onebert.tasks.base import kind_of

                raise OneBertError(f"input {i}: expected a text, got {kind_of(text)}")
            _refuse_surrogates(i, text)
            split.append(split_words(text))
        examples = [NerExample(words=words, source=f"input {i}") for i, (words, _) in enumerate(split)]
        predictions = _predict_texts_with_words(self.predictor.predict, examples)
        outputs = []
        for text, (words, spans), prediction in zip(texts, split, predictions):
            first_pieces, index, position = [], [], 1  # position 0 is [CLS]
            for word in words:
                pieces = self.tokenizer.tokenize(word) or [UNK]
                first_pieces.append(pieces[0])
                index.append(position)
                position += len(pieces)
            tags, scores = (prediction.tags, prediction.scores) if prediction else ([], [])
            outputs.append(token_entities(tags, scores, words, spans, first_pieces, index, text, strategy))
        return outputs[0] if single else outputs

    def _answers(self, inputs: Any, question: Any, context: Any, top_k: int) -> Any:
        from onebert.infer.conventions import check_top_k, qa_answers, qa_item
        from onebert.tasks.readers import QAExample

        check_top_k(top_k, allow_none=False)
        if question is not None or context is not None:
            if inputs is not None:
                raise OneBertError("give the inputs, or question= and context=, not both")
            if isinstance(question, str) and isinstance(context, str):
                inputs = {"question": question, "context": context}
            elif isinstance(question, (list, tuple)) and isinstance(context, (list, tuple)) \
                    and len(question) == len(context):
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
            else:
                raise OneBertError("question= and context= must be two texts, or two lists of the same length")
        single = isinstance(inputs, dict)
        items = [qa_item(i, item) for i, item in enumerate([inputs] if single else _as_list(inputs))]
        for i, item in enumerate(items):
            _refuse_surrogates(i, item)
        examples = [QAExample(id=str(i), question=item["question"], context=item["context"], source=f"input {i}")
                    for i, item in enumerate(items)]
        outputs = [qa_answers(prediction, top_k) for prediction in self.predictor.predict(examples)]
        return outputs[0] if single else outputs


class RecordPredictor:
    """A Pipeline whose call is `records` (onebert's format): what `onebert serve` batches requests into."""

    def __init__(self, pipe: Pipeline):
        self.pipeline = pipe
        self.task, self.model, self.tokenizer, self.spec = pipe.task, pipe.model, pipe.tokenizer, pipe.spec
        self.torch_model = pipe.predictor.torch_model  # what the server's embedder shares, whatever runs `model`

    def __call__(self, items: Sequence[Any]) -> list[Any]:
        return self.pipeline.records(items)


class FeatureExtractionPipeline:
    """`onebert.pipeline("feature-extraction", model=DIR)`: per text the encoder's last hidden states,
    [1, tokens, hidden] nested lists, as transformers' FeatureExtractionPipeline."""

    task = "feature-extraction"

    def __init__(self, directory: str | os.PathLike, device: str = "auto", batch_size: int = 32,
                 max_length: int | None = None, precision: str = "fp32", runtime: str = "auto"):
        from onebert.infer.embedder import Embedder
        from onebert.infer.predictor import resolve_model_dir

        self.embedder = Embedder(resolve_model_dir(directory), device=device, max_length=max_length,
                                 precision=precision, runtime=runtime)
        self.model, self.tokenizer, self.batch_size = self.embedder.model, self.embedder.tokenizer, batch_size

    def __call__(self, inputs: str | Sequence[str], batch_size: int | None = None) -> Any:
        from onebert.infer.predictor import forward
        from onebert.tasks import Features

        single = isinstance(inputs, str)
        texts = [inputs] if single else _as_list(inputs)
        for i, text in enumerate(texts):
            _refuse_surrogates(i, text)
        embedder = self.embedder
        from onebert.infer.embedder import _checked_texts

        texts = _checked_texts(texts)
        ids = embedder._token_ids(texts, 0, [])
        hidden = forward(embedder.model, Features(columns={"input_ids": ids}), batch_size=batch_size or self.batch_size,
                         device=embedder.device, autocast=embedder.autocast(), pad_token_id=self.tokenizer.pad_token_id,
                         outputs=lambda out, batch: {"hidden": (out.last_hidden_state, True)})["hidden"]
        outputs = [[rows.tolist()] for rows in hidden]
        return outputs[0] if single else outputs


def _as_list(inputs: Any) -> list[Any]:
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    from onebert.tasks.base import kind_of

    raise OneBertError(f"expected an input or a list of inputs, got {kind_of(inputs)}")


def _refuse_surrogates(i: int, item: Any) -> None:
    """A lone surrogate makes the tokenizer refuse the whole batch; name the input that holds it."""
    from onebert.text_input import describe_surrogate, lone_surrogate

    texts = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else [item]
    for text in texts:
        index = lone_surrogate(text) if isinstance(text, str) else None
        if index is not None:
            raise OneBertError(f"input {i}: {describe_surrogate(text, index)}")


def pipeline(task: str | None = None, model: str | os.PathLike | None = None, device: str = "auto",
             batch_size: int = 32, max_length: int | None = None, precision: str = "fp32", top_k: int = 5,
             runtime: str = "auto") -> Any:
    """Load a model directory (or a run directory: its best/, else final/ model) for inference.

    task: transformers' name or onebert's (see the module docstring); None reads it from the fine-tuned
    model (an explicit task must match the model's). fill-mask and feature-extraction take a pretraining
    output or any encoder; the rest a fine-tuned model. max_length: tokens per sequence (default: the model's
    fine-tuning max_seq_length). top_k: fill-mask's default number of answers per [MASK]. precision / runtime:
    as `onebert predict --precision / --runtime` (onebert.infer.engines; fill-mask runs on torch).
    """
    if model is None:
        raise OneBertError("pipeline: give model=DIR, a model directory")
    if task == "fill-mask":
        from onebert.infer.fill_mask import FillMaskPipeline

        return FillMaskPipeline(model, device=device, batch_size=batch_size, top_k=top_k)
    if task == "feature-extraction":
        return FeatureExtractionPipeline(model, device=device, batch_size=batch_size, max_length=max_length,
                                         precision=precision, runtime=runtime)
    names = TASK_ALIASES.get(task, (task,)) if task is not None else None
    # One onebert task: Predictor.load checks it; several (text-classification): the model's own, checked here.
    loaded = Predictor.load(model, device=device, batch_size=batch_size, max_length=max_length,
                            task=names[0] if names is not None and len(names) == 1 else None, precision=precision,
                            runtime=runtime)
    if names is not None and len(names) > 1 and loaded.spec.task not in names:
        raise OneBertError(f"{loaded.directory}: the model was fine-tuned for {loaded.spec.task}, not {task}")
    return Pipeline(loaded)


__all__ = ["pipeline", "Pipeline", "FeatureExtractionPipeline", "RecordPredictor", "TASK_ALIASES"]
