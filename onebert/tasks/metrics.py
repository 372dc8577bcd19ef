"""The standard metrics of each task, computed exactly as their reference implementations.

- Classification: accuracy, precision / recall / F1 (binary for the positive class, macro over
  classes otherwise; as scikit-learn, with 0 where a ratio is 0/0), Matthews correlation
  (the multi-class form, as scikit-learn). Regression: Pearson and Spearman (ties get their
  average rank, as scipy.stats.spearmanr). All as fractions in [0, 1] (or [-1, 1]).
- NER: entity-level precision / recall / F1 as conlleval and seqeval: entities are chunks of
  B/I(/E/S) tags of one type, a prediction counts only when type, start and end all match.
  IOB1 and IOB2 input give the same chunks. Fractions in [0, 1], plus per-type scores.
- QA: the official SQuAD v1.1 / v2.0 evaluation: answers normalised (lower case, punctuation
  and the articles a/an/the removed, whitespace collapsed), EM and token F1 maximised over the
  gold answers, v2.0 unanswerable questions scored against "", HasAns_/NoAns_ breakdowns and the
  best no-answer threshold. In percent, as the official scripts print them.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping, Sequence

import numpy as np

# ---------------------------------------------------------------------- classification


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    predictions, labels = _pair(predictions, labels)
    return float((predictions == labels).mean()) if len(labels) else 0.0


def precision_recall_f1(predictions: Sequence[int], labels: Sequence[int], average: str = "binary",
                        positive: int = 1, num_labels: int | None = None) -> tuple[float, float, float]:
    """average="binary": scores of class `positive`; "macro": unweighted mean over the classes
    present in labels or predictions (or 0..num_labels-1 when given), as scikit-learn."""
    predictions, labels = _pair(predictions, labels)
    if average == "binary":
        classes = [positive]
    elif average == "macro":
        classes = list(range(num_labels)) if num_labels else sorted(set(labels.tolist()) | set(predictions.tolist()))
    else:
        raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")
    scores = []
    for cls in classes:
        tp = int(((predictions == cls) & (labels == cls)).sum())
        predicted = int((predictions == cls).sum())
        actual = int((labels == cls).sum())
        p, r = _ratio(tp, predicted), _ratio(tp, actual)
        scores.append((p, r, _ratio(2 * tp, predicted + actual)))
    mean = np.mean(scores, axis=0) if scores else np.zeros(3)
    return float(mean[0]), float(mean[1]), float(mean[2])


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Multi-class MCC (Gorodkin 2004), equal to (TP·TN − FP·FN)/sqrt(...) for two classes; 0 if undefined."""
    predictions, labels = _pair(predictions, labels)
    classes = np.union1d(predictions, labels)
    index = {c: i for i, c in enumerate(classes.tolist())}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for t, p in zip(labels.tolist(), predictions.tolist()):
        confusion[index[t], index[p]] += 1
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    n, correct = confusion.sum(), np.trace(confusion)
    cov_ytyp = correct * n - t_sum @ p_sum
    cov_ypyp = n * n - p_sum @ p_sum
    cov_ytyt = n * n - t_sum @ t_sum
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def classification_metrics(predictions: Sequence[int], labels: Sequence[int], num_labels: int,
                           positive: int = 1) -> dict[str, float]:
    """accuracy and mcc; precision / recall / f1 of class `positive` for two classes, else macro
    (plus f1_macro always, so binary tasks can be compared on either)."""
    result = {"accuracy": accuracy(predictions, labels)}
    average = "binary" if num_labels == 2 else "macro"
    p, r, f = precision_recall_f1(predictions, labels, average, positive)
    result.update(precision=p, recall=r, f1=f)
    result["f1_macro"] = precision_recall_f1(predictions, labels, "macro")[2]
    result["mcc"] = matthews_corrcoef(predictions, labels)
    return result


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"got {len(x)} predictions for {len(y)} targets")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / denominator) if denominator > 0 else 0.0


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span (scipy.stats.rankdata 'average')."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of each run of equal values, then the average rank of each run.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the average ranks (the tie-corrected Spearman rho)."""
    return pearson(average_ranks(x), average_ranks(y))


def regression_metrics(predictions: Sequence[float], targets: Sequence[float]) -> dict[str, float]:
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    return {"pearson": pearson(predictions, targets), "spearman": spearman(predictions, targets),
            "mse": float(np.mean((predictions - targets) ** 2)) if len(targets) else 0.0}


def _pair(predictions: Sequence[int], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if len(predictions) != len(labels):
        raise ValueError(f"got {len(predictions)} predictions for {len(labels)} labels")
    return predictions, labels


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


# ---------------------------------------------------------------------- NER (conlleval / seqeval)


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def _chunk_ends(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    # conlleval's endOfChunk with seqeval's IOBES additions; for B/I/O tags the two agree.
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != kind


def _chunk_starts(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != kind


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) word indices of the entities in one sentence's tags, inclusive."""
    entities = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = _split_tag(tag)
        if _chunk_ends(prev_tag, prefix, prev_type, kind) and prev_tag != "O":
            entities.append((prev_type, begin, i - 1))
        if _chunk_starts(prev_tag, prefix, prev_type, kind):
            begin = i
        prev_tag, prev_type = prefix, kind
    return entities


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision / recall / F1 over sentences (conlleval's "overall" line) and per type.

    Returns {"precision", "recall", "f1", "accuracy" (token level), "per_type": {TYPE: {"precision",
    "recall", "f1", "number" (gold entities)}}}, fractions in [0, 1].
    """
    if len(gold) != len(predicted):
        raise ValueError(f"got {len(predicted)} predicted sentences for {len(gold)} gold sentences")
    true_entities: set[tuple[int, str, int, int]] = set()
    pred_entities: set[tuple[int, str, int, int]] = set()
    tokens = correct_tokens = 0
    for s, (gold_tags, pred_tags) in enumerate(zip(gold, predicted)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"sentence {s}: {len(pred_tags)} predicted tags for {len(gold_tags)} words")
        true_entities.update((s, *e) for e in get_entities(gold_tags))
        pred_entities.update((s, *e) for e in get_entities(pred_tags))
        tokens += len(gold_tags)
        correct_tokens += sum(g == p for g, p in zip(gold_tags, pred_tags))
    correct = true_entities & pred_entities
    result: dict = _prf(len(correct), len(pred_entities), len(true_entities))
    result["accuracy"] = _ratio(correct_tokens, tokens)
    per_type = {}
    for kind in sorted({e[1] for e in true_entities | pred_entities}):
        n_correct = sum(1 for e in correct if e[1] == kind)
        n_pred = sum(1 for e in pred_entities if e[1] == kind)
        n_true = sum(1 for e in true_entities if e[1] == kind)
        per_type[kind] = {**_prf(n_correct, n_pred, n_true), "number": n_true}
    result["per_type"] = per_type
    return result


def _prf(correct: int, predicted: int, true: int) -> dict[str, float]:
    precision, recall = _ratio(correct, predicted), _ratio(correct, true)
    return {"precision": precision, "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall)}


# ---------------------------------------------------------------------- SQuAD (official v1.1 / v2.0)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop articles, collapse whitespace (in the official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match_score(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    gold_tokens, pred_tokens = _answer_tokens(gold), _answer_tokens(prediction)
    if not gold_tokens or not pred_tokens:
        # An empty answer (v2.0 no-answer) scores 1 only against another empty answer.
        return float(gold_tokens == pred_tokens)
    common = collections.Counter(gold_tokens) & collections.Counter(pred_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_gold_answers(answers: Iterable[str]) -> list[str]:
    """The official v2.0 rule: answers that normalise to nothing are dropped; none left means ""."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def squad_metrics(predictions: Mapping[str, str], gold: Mapping[str, Sequence[str]],
                  no_answer_scores: Mapping[str, float] | None = None,
                  best_non_null: Mapping[str, str] | None = None, version: str | None = None) -> dict[str, float]:
    """Official SQuAD scores in percent: exact_match, f1, total; for v2.0 also HasAns_/NoAns_.

    gold: question id -> gold answer texts ([] for unanswerable). predictions: id -> text ("" =
    no answer). version: "1.1" or "2.0" (default: "2.0" when some question has no answer). The
    two official scripts differ only at the edges, reproduced here: v1.1 scores a missing
    prediction 0 and keeps gold answers that normalise to nothing; v2.0 leaves missing
    predictions out of the totals, drops such gold answers and scores "" against "" as 1.
    With `no_answer_scores` (id -> null score minus best span score; higher = more likely no
    answer) and `best_non_null` (id -> the best non-empty answer), also best_exact / best_f1 and
    the thresholds that reach them (`find_best_threshold`).
    """
    if version is None:
        version = "2.0" if any(not answers for answers in gold.values()) else "1.1"
    if version not in ("1.1", "2.0"):
        raise ValueError(f"version must be '1.1' or '2.0', got {version!r}")
    v2 = version == "2.0"
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid, answers in gold.items():
        golds = squad_gold_answers(answers) if v2 else list(answers)
        prediction = predictions.get(qid)
        if prediction is None:
            if not v2:
                exact[qid] = f1[qid] = 0.0
            continue
        exact[qid] = max(exact_match_score(prediction, g) for g in golds)
        f1[qid] = max((f1_score(prediction, g) if v2 else _f1_v1(prediction, g)) for g in golds)
    result: dict[str, float] = {"exact_match": _mean_percent(exact.values()), "f1": _mean_percent(f1.values()),
                                "total": len(exact)}
    if v2:
        has_answer = {qid: bool(answers) for qid, answers in gold.items()}
        for name, wanted in (("HasAns", True), ("NoAns", False)):
            ids = [q for q in exact if has_answer[q] == wanted]
            if ids:
                result[f"{name}_exact"] = _mean_percent(exact[q] for q in ids)
                result[f"{name}_f1"] = _mean_percent(f1[q] for q in ids)
                result[f"{name}_total"] = len(ids)
        if no_answer_scores is not None:
            non_null = best_non_null if best_non_null is not None else predictions
            for name, scorer in (("exact", exact_match_score), ("f1", f1_score)):
                raw = {qid: max(scorer(non_null[qid], g) for g in squad_gold_answers(gold[qid]))
                       for qid in exact if qid in non_null}
                best, threshold = find_best_threshold(non_null, raw, no_answer_scores, has_answer)
                result[f"best_{name}"] = best
                result[f"best_{name}_thresh"] = threshold
    return result


def _f1_v1(prediction: str, gold: str) -> float:
    # v1.1's f1_score: no special case for empty answers (an empty pair scores 0).
    return f1_score(prediction, gold) if _answer_tokens(prediction) and _answer_tokens(gold) else 0.0


def find_best_threshold(predictions: Mapping[str, str], scores: Mapping[str, float],
                        no_answer_scores: Mapping[str, float], has_answer: Mapping[str, bool]) -> tuple[float, float]:
    """The official v2.0 `find_best_thresh`: answer a question iff its no-answer score <= threshold.

    predictions must be the answers given when answering (the best non-null span), scores their
    EM or F1 against the gold answers. Starting from "answer nothing", questions are switched to
    answered in order of increasing no-answer score, keeping the best total. Returns (best score
    in percent, threshold); like the official script the threshold is 0.0 when answering nothing
    is best.
    """
    current = best = sum(1 for qid in has_answer if not has_answer[qid])
    threshold = 0.0
    for qid in sorted(no_answer_scores, key=lambda q: no_answer_scores[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            delta = scores[qid]
        else:
            delta = -1 if predictions.get(qid) else 0
        current += delta
        if current > best:
            best = current
            threshold = no_answer_scores[qid]
    return 100.0 * best / max(len(scores), 1), float(threshold)


def _mean_percent(values: Iterable[float]) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0
