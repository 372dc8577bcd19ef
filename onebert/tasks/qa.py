"""Extractive question answering (SQuAD v1.1 / v2.0): windows, span labels, n-best decoding, null threshold.

Features: `[CLS] question [SEP] window of the context [SEP]`. The question is cut to
`max_query_length` tokens (BERT's run_squad), the context split into windows of at most
`max_seq_length` tokens with `doc_stride` context tokens shared by consecutive windows
(`Tokenizer.encode_windows`; this is transformers' run_qa meaning of doc_stride: the overlap).
For training, the answer's character span is mapped to tokens through the offsets; a window that
does not hold the whole answer, and any window of an unanswerable question, points at [CLS]
(position 0), as transformers and BERT's v2.0 code do.

Decoding: for every window, every span of context tokens with start <= end and at most
`max_answer_length` tokens is scored start_logit + end_logit. The best `n_best_size` spans over
all windows of an example are kept (the search is exhaustive, not limited to the top-k starts
and ends), and their text is cut from the original context through the offsets. For v2.0 the
null score is the smallest [CLS] start + end over the example's windows (BERT and transformers);
the question is left unanswered when null score - best span score > `null_threshold`.
`tune_null_threshold` finds the threshold that maximises F1 on validation predictions (the
official evaluation's best_f1_thresh), and `apply_null_threshold` re-decides the answers with it,
without running the model again.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from onebert.tasks.readers import QAExample
from onebert.errors import OneBertError
from onebert.tasks.base import Task, kind_of
from onebert.tasks.features import Features, logit_rows
from onebert.tasks.metrics import squad_metrics

logger = logging.getLogger(__name__)


@dataclass
class QAFeatures(Features):
    # offsets[i][t]: (start, end) characters of token t in the context, None outside the context.
    offsets: list[list[tuple[int, int] | None]] = field(default_factory=list)
    skipped_examples: int = 0  # training: answerable questions without an aligned answer


@dataclass
class Span:
    text: str
    start: int  # character offsets into the context; -1 for the null answer
    end: int
    score: float  # start_logit + end_logit
    probability: float = 0.0  # softmax over the n-best list


@dataclass
class QAPrediction:
    id: str
    text: str  # the answer ("" = no answer)
    score: float  # score of the chosen answer (the null score when unanswered)
    start: int  # character span in the context (-1 when unanswered)
    end: int
    best_non_null: Span | None  # the best real span, whatever the threshold
    null_score: float  # min over windows of [CLS] start + end logits
    null_score_diff: float  # null score - best span score (v2.0; higher = more likely no answer)
    n_best: list[Span] = field(default_factory=list)


def qa_features(tokenizer, examples: Sequence[QAExample], max_seq_length: int = 384, doc_stride: int = 128,
                max_query_length: int = 64, training: bool = False) -> QAFeatures:
    """Windows of every example; with training=True also start_positions / end_positions.

    In training, an answerable question whose answers are all unaligned (see
    `onebert.tasks.readers.read_squad`) is skipped and counted in `skipped_examples`.
    """
    keep = list(range(len(examples)))
    skipped = 0
    if training:
        keep = [i for i, e in enumerate(examples) if e.is_impossible or e.training_answer is not None]
        skipped = len(examples) - len(keep)
        if skipped:
            logger.warning("QA training features: %d of %d answerable questions skipped: no answer text at its "
                           "answer_start", skipped, len(examples))
    kept = [examples[i] for i in keep]
    encoded = tokenizer.encode_windows([e.question.lstrip() for e in kept], [e.context for e in kept],
                                       max_length=max_seq_length, stride=doc_stride,
                                       max_query_length=max_query_length, padding=False, return_tensors=None)
    features = QAFeatures(skipped_examples=skipped)
    features.columns["input_ids"] = encoded["input_ids"]
    features.columns["token_type_ids"] = encoded["token_type_ids"]
    features.example_index = [keep[i] for i in encoded["example_index"]]
    for offsets, sequence_ids in zip(encoded["offset_mapping"], encoded["sequence_ids"]):
        features.offsets.append([tuple(o) if s == 1 else None for o, s in zip(offsets, sequence_ids)])
    if training:
        starts, ends = [], []
        for row, e in enumerate(features.example_index):
            start, end = _answer_positions(examples[e], features.offsets[row])
            starts.append(start)
            ends.append(end)
        features.columns["start_positions"] = starts
        features.columns["end_positions"] = ends
    return features


def _answer_positions(example: QAExample, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    answer = example.training_answer
    if example.is_impossible or answer is None:
        return 0, 0
    first_char, last_char = answer.start, answer.start + len(answer.text)
    context = [t for t, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > first_char or offsets[context[-1]][1] < last_char:
        return 0, 0  # the answer is not (wholly) inside this window
    token_starts = [offsets[t][0] for t in context]
    token_ends = [offsets[t][1] for t in context]
    # The first token ending after the answer's first character, the last one starting before its end.
    start = context[min(bisect.bisect_right(token_ends, first_char), len(context) - 1)]
    end = context[max(bisect.bisect_left(token_starts, last_char) - 1, 0)]
    return start, max(start, end)


def decode_qa(start_logits: Any, end_logits: Any, features: QAFeatures, examples: Sequence[QAExample],
              n_best_size: int = 20, max_answer_length: int = 30, version_2: bool = False,
              null_threshold: float = 0.0) -> list[QAPrediction]:
    """The best answer (and n-best list) of every example from the logits of all its windows.

    start_logits / end_logits: [rows, seq] (torch or numpy; padded rows are fine), or lists of
    per-batch [batch, seq] or per-row [seq] arrays, in the order of `features`.
    version_2: allow the null answer (SQuAD v2.0), chosen when null_score_diff > null_threshold.
    """
    starts = logit_rows(start_logits, row_ndim=1)
    ends = logit_rows(end_logits, row_ndim=1)
    if len(starts) != len(features.offsets) or len(ends) != len(features.offsets):
        raise ValueError(f"got logits for {len(starts)}/{len(ends)} rows, the features have {len(features.offsets)}")
    by_example: dict[int, list[int]] = {}
    for row, e in enumerate(features.example_index):
        by_example.setdefault(e, []).append(row)
    predictions = []
    for e, example in enumerate(examples):
        candidates: list[Span] = []
        null_score = float("inf")
        for row in by_example.get(e, ()):
            null_score = min(null_score, float(starts[row][0] + ends[row][0]))
            candidates.extend(_best_spans(starts[row], ends[row], features.offsets[row], example.context,
                                          n_best_size, max_answer_length))
        predictions.append(_choose(example, candidates, null_score, n_best_size, version_2, null_threshold))
    return predictions


def _best_spans(start: np.ndarray, end: np.ndarray, offsets: list[tuple[int, int] | None], context: str,
                n_best_size: int, max_answer_length: int) -> list[Span]:
    tokens = np.array([t for t, o in enumerate(offsets) if o is not None], dtype=np.int64)
    if len(tokens) == 0:
        return []
    # Context tokens of one window are contiguous: scores[i, d] = start[first + i] + end[first + i + d].
    first, n = int(tokens[0]), len(tokens)
    width = min(max_answer_length, n)
    s = start[first:first + n].astype(np.float64)
    e = end[first:first + n].astype(np.float64)
    padded_end = np.concatenate([e, np.full(width, -np.inf)])
    scores = s[:, None] + np.lib.stride_tricks.sliding_window_view(padded_end, width)[:n]
    k = min(n_best_size, int(np.isfinite(scores).sum()))
    if k == 0:
        return []
    flat = scores.reshape(-1)
    top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    top = top[np.argsort(-flat[top], kind="stable")]
    spans = []
    for index in top:
        score = flat[index]
        if not np.isfinite(score):
            continue
        i, d = divmod(int(index), width)
        char_start = offsets[first + i][0]  # type: ignore[index]
        char_end = offsets[first + i + d][1]  # type: ignore[index]
        spans.append(Span(text=context[char_start:char_end], start=char_start, end=char_end, score=float(score)))
    return spans


def _choose(example: QAExample, candidates: list[Span], null_score: float, n_best_size: int, version_2: bool,
            null_threshold: float) -> QAPrediction:
    # Overlapping windows find the same span twice: keep its best score once.
    unique: dict[tuple[int, int], Span] = {}
    for span in candidates:
        key = (span.start, span.end)
        if key not in unique or span.score > unique[key].score:
            unique[key] = span
    n_best = sorted(unique.values(), key=lambda span: -span.score)[:n_best_size]
    if version_2 and np.isfinite(null_score):
        n_best = sorted([*n_best, Span(text="", start=-1, end=-1, score=null_score)], key=lambda span: -span.score)
    if n_best:
        scores = np.array([span.score for span in n_best])
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        for span, probability in zip(n_best, probabilities):  # the spans are this call's own objects
            span.probability = float(probability)
    best = next((span for span in n_best if span.start >= 0), None)
    diff = null_score - best.score if best is not None and np.isfinite(null_score) else float("inf")
    prediction = QAPrediction(id=example.id, text="", score=0.0, start=-1, end=-1, best_non_null=best,
                              null_score=null_score if np.isfinite(null_score) else 0.0, null_score_diff=diff,
                              n_best=n_best)
    return _decide(prediction, version_2, null_threshold)


def _decide(prediction: QAPrediction, version_2: bool, null_threshold: float) -> QAPrediction:
    best = prediction.best_non_null
    if best is not None and (not version_2 or prediction.null_score_diff <= null_threshold):
        return replace(prediction, text=best.text, score=best.score, start=best.start, end=best.end)
    return replace(prediction, text="", score=prediction.null_score, start=-1, end=-1)


def apply_null_threshold(predictions: Sequence[QAPrediction], null_threshold: float) -> list[QAPrediction]:
    """Re-decide v2.0 answers with another threshold (no second forward pass)."""
    return [_decide(p, True, null_threshold) for p in predictions]


def tune_null_threshold(predictions: Sequence[QAPrediction], examples: Sequence[QAExample],
                        metric: str = "f1") -> tuple[float, float]:
    """The null threshold that maximises `metric` ("f1" or "exact") on these predictions.

    As the official v2.0 evaluation's best_f1_thresh, over the best non-null answers and their
    null_score_diff. Returns (threshold, best score in percent).
    """
    if metric not in ("f1", "exact"):
        raise ValueError(f"metric must be 'f1' or 'exact', got {metric!r}")
    result = evaluate_qa(predictions, examples, version_2=True)
    return result[f"best_{metric}_thresh"], result[f"best_{metric}"]


def evaluate_qa(predictions: Sequence[QAPrediction], examples: Sequence[QAExample],
                version_2: bool | None = None) -> dict[str, float]:
    """Official SQuAD scores of the predictions (percent); for v2.0 with HasAns_/NoAns_ and best thresholds.

    version_2=None: v2.0 when some example is unanswerable.
    """
    if version_2 is None:
        version_2 = any(e.is_impossible for e in examples)
    gold = {e.id: ([] if e.is_impossible else e.answer_texts) for e in examples}
    answers = {p.id: p.text for p in predictions}
    if not version_2:
        return squad_metrics(answers, gold, version="1.1")
    non_null = {p.id: (p.best_non_null.text if p.best_non_null else "") for p in predictions}
    no_answer = {p.id: p.null_score_diff for p in predictions}
    return squad_metrics(answers, gold, no_answer_scores=no_answer, best_non_null=non_null, version="2.0")


def answer_record(prediction: QAPrediction) -> dict[str, Any]:
    """The chosen answer and its probability among the n-best candidates ("" / -1 for no answer)."""
    chosen = next((span for span in prediction.n_best if (span.start, span.end) == (prediction.start, prediction.end)),
                  None)
    return {"answer": prediction.text, "start": prediction.start, "end": prediction.end,
            "score": chosen.probability if chosen is not None else 0.0}


def read_questions(path: Path, fmt: str) -> list[QAExample]:
    """SQuAD JSON (answers optional), or JSON lines of {"question", "context"[, "id"]}."""
    from onebert.tasks.readers import ReadOptions, json_object_lines, read_squad, read_text_file
    from onebert.tasks.records import DEFAULT_SPLITS, RECORD_FORMATS, qa_records

    if fmt == "squad":
        return read_squad(path, labelled=False)
    if fmt in RECORD_FORMATS:
        return qa_records(path, fmt, ReadOptions(split=DEFAULT_SPLITS["input"]), labelled=False)
    examples = []
    seen: dict[str, int] = {}
    for number, record in json_object_lines(path, read_text_file(path)):
        for key in ("question", "context"):
            if not isinstance(record.get(key), str):
                raise OneBertError(f"{path}: line {number}: field {key!r} must be a string")
        qid = record.get("id", str(len(examples)))
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise OneBertError(f"{path}: line {number}: field 'id' must be a string or an integer")
        qid = str(qid)
        if qid in seen:
            raise OneBertError(f"{path}: line {number}: duplicate id {qid!r} (also on line {seen[qid]})")
        seen[qid] = number
        examples.append(QAExample(id=qid, question=record["question"], context=record["context"],
                                  source=f"{path}: line {number}"))
    if not examples:
        raise OneBertError(f"{path}: no questions")
    return examples


class QATask(Task):
    """Extractive question answering (SQuAD v1.1 / v2.0): an answer span of the context, or none."""

    name = "qa"
    model_class_name = "BertForQuestionAnswering"
    default_max_seq_length = 384
    metrics = ("f1", "exact_match")
    percent_metrics = ("exact_match", "exact", "f1")  # also HasAns_/NoAns_/best_ forms: the official script's 0-100
    # No length grouping: every question on one paragraph has about the same length, so length-grouped
    # batches are one paragraph's questions, correlated gradients (1.6 F1 on SQuAD v1.1; see BENCHMARKS.md).
    # Its batches are random (a mega-batch of one batch).
    group_size = 1
    example_unit = "questions"
    options = ("doc_stride", "max_query_length", "max_answer_length", "n_best_size", "version_2_with_negative")
    input_formats = ("squad", "jsonl", "json", "parquet", "datasets")
    data_formats = ("squad", "jsonl", "json", "parquet", "datasets")
    serve_request = "questions"
    fills_windows = True

    @classmethod
    def labels_from_config(cls, config) -> None:
        return None

    def config_changes(self) -> dict[str, Any]:
        return {"num_labels": 2, "id2label": None, "problem_type": None}

    def metadata(self) -> dict[str, Any]:
        spec = self.spec
        return dict(doc_stride=spec.doc_stride, max_query_length=spec.max_query_length, version_2=spec.version_2,
                    null_threshold=spec.null_threshold, n_best_size=spec.n_best_size,
                    max_answer_length=spec.max_answer_length)

    def describe(self) -> str:
        return f"SQuAD v{'2.0' if self.spec.version_2 else '1.1'}"

    def run_notes(self) -> dict[str, Any]:
        return {"squad_version": "2.0" if self.spec.version_2 else "1.1"}

    @classmethod
    def training_spec(cls, args, train_examples, validation_examples, max_seq_length, log=print):

        version_2 = args.version_2_with_negative or any(e.is_impossible for e in train_examples)
        if max_seq_length <= args.doc_stride + 2:
            raise OneBertError(f"--doc-stride {args.doc_stride} must be smaller than --max-seq-length "
                               f"{max_seq_length} minus the question")
        return dict(max_seq_length=max_seq_length, doc_stride=args.doc_stride,
                        max_query_length=args.max_query_length, version_2=version_2,
                        n_best_size=args.n_best_size, max_answer_length=args.max_answer_length)

    def read(self, path, columns=None, options=None) -> list[QAExample]:
        """SQuAD JSON, or records with SQuAD's columns (JSON lines, a JSON array, Parquet, a saved dataset)."""
        from onebert.tasks.readers import ReadOptions, read_squad
        from onebert.tasks.records import check_format, is_json_lines, qa_records, record_format

        options = options or ReadOptions()
        check_format(self.name, options.file_format, self.data_formats)
        fmt = record_format(path, options.file_format) or ("jsonl" if is_json_lines(path, options.file_format)
                                                           else None)
        if options.label_names is not None:
            raise OneBertError("--label-names applies to classification and ner data only")
        return qa_records(path, fmt, options) if fmt is not None else read_squad(path)

    def features(self, tokenizer, examples, with_labels: bool) -> QAFeatures:
        spec = self.spec
        return qa_features(tokenizer, examples, max_seq_length=spec.max_seq_length, doc_stride=spec.doc_stride,
                           max_query_length=spec.max_query_length, training=with_labels)

    def tune_on_validation(self, predictions, examples):
        """SQuAD v2.0: the null-answer threshold that maximises F1 here, and the answers under it."""
        if not self.spec.version_2:
            return predictions, {}
        threshold, _ = tune_null_threshold(predictions, examples, metric="f1")
        return apply_null_threshold(predictions, threshold), {"null_threshold": threshold}

    def decode(self, outputs, features, examples) -> list[QAPrediction]:
        spec = self.spec
        return decode_qa(outputs.get("start_logits", []), outputs.get("end_logits", []), features, examples,
                         n_best_size=spec.n_best_size, max_answer_length=spec.max_answer_length,
                         version_2=spec.version_2, null_threshold=spec.null_threshold)

    def score(self, predictions, examples) -> dict[str, Any]:
        return evaluate_qa(predictions, examples, version_2=True if self.spec.version_2 else None)

    def guess_format(self, path: Path, stdin: bool) -> str:
        from onebert.tasks.records import record_format

        found = None if stdin else record_format(path)
        return found or ("squad" if path.suffix.lower() == ".json" else "jsonl")

    def predict_records(self, predict, path, fmt, columns) -> list[dict[str, Any]]:
        return [{"id": p.id, **answer_record(p)} for p in predict(read_questions(path, fmt))]

    def is_single_input(self, inputs) -> bool:
        return isinstance(inputs, (str, dict))

    @classmethod
    def count_windows(cls, tokenizer, items, spec) -> int:
        """Windows as `qa_features` cuts them: the question (at most `max_query_length` tokens) and
        `max_seq_length - question - 3` context tokens, advancing by that minus `doc_stride`."""
        length = spec.max_seq_length
        stride = getattr(spec, "doc_stride", 128)
        max_query = getattr(spec, "max_query_length", 64) or length
        questions = tokenizer.encode_ids([item["question"] for item in items])
        contexts = tokenizer.encode_ids([item["context"] for item in items])
        total = 0
        for question, context in zip(questions, contexts):
            room = length - 3 - min(len(question), max_query)
            step = max(1, room - stride)
            total += 1 + math.ceil(max(0, len(context) - room) / step)
        return total

    def pipeline_outputs(self, predict, items) -> list[dict[str, Any]]:
        examples = []
        for i, item in enumerate(items):
            if not (isinstance(item, dict) and isinstance(item.get("question"), str)
                    and isinstance(item.get("context"), str)):
                raise OneBertError(f"input {i}: expected {{'question': str, 'context': str}}, got {kind_of(item)}")
            examples.append(QAExample(id=str(i), question=item["question"], context=item["context"],
                                      source=f"input {i}"))
        return [answer_record(p) for p in predict(examples)]
