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
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from onebert.tasks.readers import QAExample
from onebert.tasks import Features, logit_rows
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
