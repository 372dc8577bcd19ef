"""QA features and decoding: answer spans through offsets, full context coverage, n-best, null threshold."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest

from onebert.tasks.readers import QAExample, SquadAnswer, read_squad
from onebert.tasks.metrics import normalize_answer
from onebert.tasks.qa import (apply_null_threshold, decode_qa, evaluate_qa, qa_features, tune_null_threshold)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from onebert.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def squad_examples(shared_data):
    return (read_squad(shared_data / "squad" / "squad_v2_dev_subset.json")
            + read_squad(shared_data / "squad" / "xquad_en_part_a.json"))


def _gold_logits(features) -> tuple[np.ndarray, np.ndarray]:
    length = max(features.lengths())
    start = np.full((len(features), length), -5.0, dtype=np.float32)
    end = np.full((len(features), length), -5.0, dtype=np.float32)
    rows = np.arange(len(features))
    start[rows, features.columns["start_positions"]] += 10
    end[rows, features.columns["end_positions"]] += 10
    return start, end


def test_answer_token_spans_reproduce_every_training_answer(tokenizer, squad_examples):
    # Small windows so that long contexts are split and many answers sit near window edges.
    features = qa_features(tokenizer, squad_examples, max_seq_length=192, doc_stride=64, max_query_length=48,
                           training=True)
    assert len(features) > len(squad_examples)  # some contexts need several windows
    checked = exact = 0
    windows_with_answer = set()
    for row, e in enumerate(features.example_index):
        example = squad_examples[e]
        start, end = features.columns["start_positions"][row], features.columns["end_positions"][row]
        if start == 0:
            assert end == 0
            continue
        windows_with_answer.add(e)
        answer = example.training_answer
        offsets = features.offsets[row]
        assert offsets[start] is not None and offsets[end] is not None and start <= end  # inside the context
        span_start, span_end = offsets[start][0], offsets[end][1]
        answer_end = answer.start + len(answer.text)
        # The span is the smallest run of tokens covering the answer ...
        assert span_start <= answer.start < offsets[start][1] and offsets[end][0] < answer_end <= span_end
        checked += 1
        # ... which is the answer itself wherever the answer starts and ends on token boundaries.
        if (span_start, span_end) == (answer.start, answer_end):
            exact += 1
            assert normalize_answer(example.context[span_start:span_end]) == normalize_answer(answer.text)
    answerable = [i for i, e in enumerate(squad_examples) if not e.is_impossible]
    assert windows_with_answer == set(answerable)  # every answer lies wholly inside some window
    assert checked >= len(answerable)
    assert exact >= 0.99 * checked  # "gold rush" in "gold rushes" is one of the few exceptions


def test_windows_cover_every_context_token(tokenizer, squad_examples):
    examples = squad_examples[::5]
    features = qa_features(tokenizer, examples, max_seq_length=128, doc_stride=32, max_query_length=32)
    covered: dict[int, set] = {}
    for row, e in enumerate(features.example_index):
        covered.setdefault(e, set()).update(o for o in features.offsets[row] if o is not None)
        assert len(features.columns["input_ids"][row]) <= 128
    encodings = tokenizer.backend.encode_batch([e.context for e in examples], add_special_tokens=False)
    for e, encoding in enumerate(encodings):
        assert covered[e] == set(encoding.offsets)


def test_decoding_recovers_the_gold_spans_of_both_squad_files(tokenizer, squad_examples):
    features = qa_features(tokenizer, squad_examples, max_seq_length=256, doc_stride=96, training=True)
    start, end = _gold_logits(features)
    # As a prediction loop hands them over: per-batch outputs, each padded to its own length.
    lengths = features.lengths()
    batches = [slice(i, i + 100) for i in range(0, len(features), 100)]
    predictions = decode_qa([start[b, :max(lengths[b])] for b in batches], [end[b, :max(lengths[b])] for b in batches],
                            features, squad_examples, version_2=True)
    for prediction, example in zip(predictions, squad_examples):
        if example.is_impossible:
            assert prediction.text == "" and prediction.start == -1
        else:
            answer = example.training_answer
            assert prediction.start <= answer.start < answer.start + len(answer.text) <= prediction.end
    scores = evaluate_qa(predictions, squad_examples)
    assert scores["NoAns_exact"] == 100.0 and scores["HasAns_f1"] > 99.0


def test_n_best_spans_are_valid_and_the_search_is_exhaustive(tokenizer):
    context = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy."
    example = QAExample(id="q", question="Who gave their name to Normandy?", context=context)
    features = qa_features(tokenizer, [example], max_seq_length=32, doc_stride=8)
    rng = np.random.default_rng(0)
    start = rng.normal(size=(len(features), 32)).astype(np.float32)
    end = rng.normal(size=(len(features), 32)).astype(np.float32)
    prediction = decode_qa(start, end, features, [example], n_best_size=5, max_answer_length=4)[0]
    assert len(prediction.n_best) == 5
    # Brute force over all valid (window, start, end) triples.
    best = {}
    for row, offsets in enumerate(features.offsets):
        context_tokens = [t for t, o in enumerate(offsets) if o is not None]
        for s, e in itertools.product(context_tokens, repeat=2):
            if s <= e < s + 4:
                key = (offsets[s][0], offsets[e][1])
                best[key] = max(best.get(key, -np.inf), float(start[row, s] + end[row, e]))
    expected = sorted(best.items(), key=lambda item: -item[1])[:5]
    assert [((s.start, s.end), s.score) for s in prediction.n_best] == [(k, pytest.approx(v)) for k, v in expected]
    assert prediction.text == context[prediction.start:prediction.end] == prediction.n_best[0].text
    assert sum(s.probability for s in prediction.n_best) == pytest.approx(1.0)


def test_null_answer_threshold_is_applied_and_tuned_without_a_second_pass(tokenizer):
    context = "Normandy is a region in France."
    examples = [QAExample(id="a", question="Where is Normandy?", context=context,
                          answers=[SquadAnswer("France", 24)]),
                QAExample(id="n", question="Who ate Normandy?", context=context, is_impossible=True)]
    features = qa_features(tokenizer, examples, max_seq_length=64, doc_stride=16, training=True)
    start, end = _gold_logits(features)
    # Make "a" only weakly answerable: its null score (CLS) is 1 below its span score.
    start[0, 0] = 4.0
    end[0, 0] = 4.0
    predictions = decode_qa(start, end, features, examples, version_2=True)
    assert [p.text for p in predictions] == ["France", ""]
    assert predictions[0].null_score_diff == pytest.approx(-2.0)  # 8 - 10
    assert [p.text for p in apply_null_threshold(predictions, -3.0)] == ["", ""]
    threshold, best_f1 = tune_null_threshold(predictions, examples)
    assert best_f1 == 100.0
    assert [p.text for p in apply_null_threshold(predictions, threshold)] == ["France", ""]
    # Without version 2 the null answer is never chosen.
    assert decode_qa(start, end, features, examples, version_2=False)[1].text != ""


def test_misaligned_answers_are_counted_and_skipped_in_training(tokenizer, tmp_path, caplog):
    context = "Normandy is a region in France."
    data = {"version": "1.1", "data": [{"title": "N", "paragraphs": [{"context": context, "qas": [
        {"id": "good", "question": "Where?", "answers": [{"text": "France", "answer_start": 24}]},
        {"id": "bad", "question": "What?", "answers": [{"text": "Vikings", "answer_start": 5}]}]}]}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    examples = read_squad(path)
    with caplog.at_level(logging.WARNING):
        features = qa_features(tokenizer, examples, max_seq_length=64, doc_stride=16, training=True)
    assert features.skipped_examples == 1 and set(features.example_index) == {0}
    assert "1 of 2 answerable questions skipped" in caplog.text
    # For evaluation the question stays and its answer text is still the gold answer.
    assert set(qa_features(tokenizer, examples, max_seq_length=64, doc_stride=16).example_index) == {0, 1}
