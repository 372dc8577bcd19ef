"""transformers' `pipeline()` output shapes, built from onebert's task predictions.

`onebert.pipeline` answers in the shapes of transformers' pipelines of the same task (tested side by side
in tests/test_pipeline_conventions.py); the server keeps onebert's own records (`Pipeline.records`). Here:
- text classification: `top_k` (1 by default; None = every label), transformers' odd legacy shape
  (a string without `top_k` gives a one-element list) and `{"text", "text_pair"}` pairs;
- token classification: `aggregation_strategy` none / simple / first / average / max over onebert's
  per-word predictions. onebert's NER heads label a word by its first piece (BERT's CoNLL recipe), so a
  word is one prediction: "none" gives one entry per tagged word (`index` = its first piece's position in
  [CLS] ... [SEP], `word` = that piece), and first / average / max all use that first-piece prediction.
  On words that are one piece each this equals transformers exactly; on a multi-piece word transformers'
  "none"/"simple" have an entry per piece and "average"/"max" may mix in the (untrained) later pieces;
- question answering: `{"score", "start", "end", "answer"}`, `top_k` alternatives from the n-best list.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from onebert.errors import OneBertError

AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")


# ---------------------------------------------------------------------- text classification


def classification_item(item: Any) -> Any:
    """transformers' pair form {"text", "text_pair"} as onebert's (text, pair) tuple; anything else as is."""
    if isinstance(item, dict) and set(item) <= {"text", "text_pair"} and "text" in item:
        return (item["text"], item["text_pair"]) if item.get("text_pair") is not None else item["text"]
    return item


def classification_output(record: dict[str, Any], top_k: int | None, legacy: bool,
                          regression_label: str) -> Any:
    """One input's answer from its onebert record: {"label", "score"} (legacy: no top_k given), else the
    top_k labels sorted by score (all for None), as TextClassificationPipeline.postprocess."""
    if "scores" not in record:  # regression: transformers applies no function and names the one output
        scores = [{"label": regression_label, "score": record["score"]}]
    else:
        scores = [{"label": label, "score": score} for label, score in record["scores"].items()]
    if legacy:
        best = max(scores, key=lambda entry: entry["score"])  # the first of equal ones, as argmax
        return dict(best)
    ranked = sorted(scores, key=lambda entry: entry["score"], reverse=True)
    return ranked if top_k is None else ranked[:top_k]


# ---------------------------------------------------------------------- token classification


def token_entities(tags: Sequence[str], scores: Sequence[float], words: Sequence[str],
                   spans: Sequence[tuple[int, int]], first_pieces: Sequence[str], piece_index: Sequence[int],
                   text: str, strategy: str) -> list[dict[str, Any]]:
    """A text's entities as TokenClassificationPipeline returns them, from one (tag, score) per word.

    first_pieces[i] / piece_index[i]: word i's first word piece and its position in the encoded sequence."""
    if strategy not in AGGREGATION_STRATEGIES:
        raise OneBertError(f"aggregation_strategy must be one of {', '.join(AGGREGATION_STRATEGIES)}, got {strategy!r}")
    if strategy == "none":
        return [{"entity": tag, "score": float(score), "index": index, "word": piece, "start": start, "end": end}
                for tag, score, piece, index, (start, end) in zip(tags, scores, first_pieces, piece_index, spans)
                if tag != "O"]
    entities = [{"entity": tag, "score": float(score), "start": start, "end": end}
                for tag, score, (start, end) in zip(tags, scores, spans)]
    return [group for group in _group_entities(entities, text) if group["entity_group"] != "O"]


def _tag(name: str) -> tuple[str, str]:
    """transformers' get_tag: B-X / I-X, and a tag without a prefix continues ("I")."""
    if name.startswith("B-") or name.startswith("I-"):
        return name[0], name[2:]
    return "I", name


def _group_entities(entities: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """transformers' group_entities: adjacent entries of one type merge unless the next one is B-."""
    groups: list[list[dict[str, Any]]] = []
    for entity in entities:
        bi, tag = _tag(entity["entity"])
        if groups and tag == _tag(groups[-1][-1]["entity"])[1] and bi != "B":
            groups[-1].append(entity)
        else:
            groups.append([entity])
    out = []
    for group in groups:
        start, end = group[0]["start"], group[-1]["end"]
        # The word as the text spells it (transformers joins the lower-cased pieces: equal on plain text).
        out.append({"entity_group": group[0]["entity"].split("-", 1)[-1],
                    "score": float(np.nanmean([e["score"] for e in group])),
                    "word": text[start:end], "start": start, "end": end})
    return out


# ---------------------------------------------------------------------- question answering


def qa_item(i: int, item: Any) -> dict[str, str]:
    if isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("context"), str):
        return {"question": item["question"], "context": item["context"]}
    from onebert.tasks.base import kind_of

    raise OneBertError(f"input {i}: expected {{'question': str, 'context': str}}, got {kind_of(item)}")


def qa_answers(prediction, top_k: int) -> Any:
    """The chosen answer ({"score", "start", "end", "answer"}); top_k > 1: a list, the chosen answer first,
    then the next n-best spans by probability ("" and -1 for SQuAD v2.0's no-answer)."""
    from onebert.tasks.qa import answer_record

    chosen = {key: answer_record(prediction)[key] for key in ("score", "start", "end", "answer")}
    if top_k == 1:
        return chosen
    rest = [{"score": span.probability, "start": span.start, "end": span.end, "answer": span.text}
            for span in prediction.n_best if (span.start, span.end) != (chosen["start"], chosen["end"])]
    return [chosen, *rest][:top_k]


def check_top_k(top_k: Any, allow_none: bool) -> None:
    if top_k is None and allow_none:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise OneBertError(f"top_k must be a positive integer{' or None' if allow_none else ''}, got {top_k!r}")


__all__ = ["AGGREGATION_STRATEGIES", "classification_item", "classification_output", "token_entities", "qa_item",
           "qa_answers", "check_top_k"]
