"""onebert.pipeline speaks transformers' pipeline() conventions: the same directory loaded in both gives the
same shapes and values (scores within 1e-4).

NER is compared on texts whose words are one word piece each: onebert's heads label a word by its first piece,
transformers labels every piece (see onebert.infer.conventions). transformers 5.x has no question-answering
pipeline any more, so QA is checked against the shape its pipeline had ({"score", "start", "end", "answer"}).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_pipeline import QUESTIONS, models  # noqa: F401  (the fine-tuned directories fixture)
from tiny_finetune import make_tiny_model

import onebert
from onebert.errors import OneBertError

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the movie was very good", "a film", "john lives in paris", "the plot and the acting was not bad"]
PAIR = {"text": "the movie", "text_pair": "was good"}
NER_TEXTS = ["john lives in paris", "mary works in new york", "anna lives in rome and john is not"]


def _hf(task: str, directory):
    return transformers.pipeline(task, model=str(directory), tokenizer=str(directory), device="cpu")


def _same(ours, theirs):
    """Equal structure (keys, lengths, types of containers) and values; floats within 1e-4."""
    if isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), (ours, theirs)
        for a, b in zip(ours, theirs):
            _same(a, b)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and ours.keys() == theirs.keys(), (ours, theirs)
        for key in theirs:
            _same(ours[key], theirs[key])
    elif isinstance(theirs, (float, np.floating)):
        assert float(ours) == pytest.approx(float(theirs), abs=1e-4)
    else:
        assert ours == theirs


def test_text_classification_matches_transformers_for_a_string_a_list_top_k_and_a_pair_dict(models):
    ours = onebert.pipeline("text-classification", model=models["classification"], device="cpu")
    theirs = _hf("text-classification", models["classification"])
    _same(ours(TEXTS[0]), theirs(TEXTS[0]))  # [{"label", "score"}]: transformers' list of one
    assert isinstance(ours(TEXTS[0]), list) and len(ours(TEXTS[0])) == 1
    _same(ours(TEXTS), theirs(TEXTS))
    _same(ours(TEXTS, top_k=None), theirs(TEXTS, top_k=None))  # every label, sorted, a list per text
    _same(ours(TEXTS[1], top_k=None), theirs(TEXTS[1], top_k=None))
    _same(ours(TEXTS, top_k=1), theirs(TEXTS, top_k=1))
    _same(ours(PAIR), theirs(PAIR))
    _same(ours([PAIR, PAIR]), theirs([PAIR, PAIR]))
    _same(ours(("the movie", "was good")), theirs(PAIR))  # onebert's tuple pair is the same input
    sentiment = onebert.pipeline("sentiment-analysis", model=models["classification"], device="cpu")
    _same(sentiment(TEXTS), theirs(TEXTS))


def test_text_classification_of_a_regression_model_matches_transformers(models):
    ours = onebert.pipeline("text-classification", model=models["regression"], device="cpu")
    _same(ours(TEXTS), _hf("text-classification", models["regression"])(TEXTS))


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_transformers_for_each_aggregation_strategy(models, strategy):
    ours = onebert.pipeline("token-classification", model=models["ner"], device="cpu")
    theirs = _hf("token-classification", models["ner"])
    for text in NER_TEXTS:
        assert all(len(ours.tokenizer.tokenize(word)) == 1 for word in text.split())
    got = ours(NER_TEXTS, aggregation_strategy=strategy)
    _same(got, theirs(NER_TEXTS, aggregation_strategy=strategy))
    assert any(got), "the random head tags nothing: the comparison would prove nothing"
    if strategy == "none":
        _same(ours(NER_TEXTS[0]), theirs(NER_TEXTS[0]))  # transformers' default strategy
        assert all(entity["entity"][:2] in ("B-", "I-") for entities in got for entity in entities)


def test_ner_alias_and_unknown_aggregation_strategy(models):
    ner = onebert.pipeline("ner", model=models["ner"], device="cpu")
    assert ner("") == [] and ner.task == "ner"
    with pytest.raises(OneBertError, match="aggregation_strategy must be one of"):
        ner("john", aggregation_strategy="longest")


def test_question_answering_takes_keywords_a_dict_a_list_and_top_k(models):
    qa = onebert.pipeline("question-answering", model=models["qa"], device="cpu")
    item = QUESTIONS[0]
    answer = qa(question=item["question"], context=item["context"])
    assert list(answer) == ["score", "start", "end", "answer"]
    assert answer == qa(item) == qa([item])[0] == qa(question=[item["question"]], context=[item["context"]])[0]
    if answer["answer"]:
        assert item["context"][answer["start"]:answer["end"]] == answer["answer"]
    alternatives = qa(item, top_k=3)
    assert len(alternatives) == 3 and alternatives[0] == answer
    assert all(list(a) == ["score", "start", "end", "answer"] for a in alternatives)
    with pytest.raises(OneBertError, match="not both"):
        qa(item, question="who?", context="mary")


@pytest.fixture(scope="module")
def masked_lm_dir(tmp_path_factory):
    from onebert.model import BertForPreTraining
    from onebert.model.config import BertConfig

    directory = make_tiny_model(tmp_path_factory.mktemp("mlm") / "final")
    torch.manual_seed(3)
    BertForPreTraining(BertConfig.load(directory)).save_pretrained(directory)  # as `onebert pretrain`'s final/
    return directory


def test_fill_mask_matches_transformers(masked_lm_dir):
    ours = onebert.pipeline("fill-mask", model=masked_lm_dir, device="cpu")
    theirs = _hf("fill-mask", masked_lm_dir)
    probes = ["the movie was [MASK]", "john lives in [MASK]"]
    _same(ours(probes[0]), theirs(probes[0]))
    _same(ours(probes), theirs(probes))
    _same(ours(probes[1], top_k=2), theirs(probes[1], top_k=2))
    _same(ours("[MASK] lives in [MASK]"), theirs("[MASK] lives in [MASK]"))  # a list per mask
    with pytest.raises(OneBertError, match=r"input 0: no \[MASK\]"):
        ours("no mask here")


def test_fill_mask_refuses_a_model_without_a_masked_lm_head(models):
    with pytest.raises(OneBertError, match="no masked-LM head"):
        onebert.pipeline("fill-mask", model=models["classification"], device="cpu")


def test_feature_extraction_matches_transformers_shape_and_values(models):
    base = models["classification"].parent / "base"
    ours = onebert.pipeline("feature-extraction", model=base, device="cpu")
    theirs = _hf("feature-extraction", base)
    one = ours(TEXTS[0])
    assert np.array(one).shape == (1, len(ours.tokenizer.tokenize(TEXTS[0])) + 2, 32)
    _same(one, theirs(TEXTS[0]))
    _same(ours(TEXTS, batch_size=2), theirs(TEXTS))


def test_batch_size_at_construction_and_per_call_changes_batches_not_answers(models):
    pipe = onebert.pipeline("text-classification", model=models["classification"], device="cpu", batch_size=3)
    rows = []
    forward = pipe.model.forward
    pipe.model.forward = lambda input_ids, *a, **k: rows.append(input_ids.shape[0]) or forward(input_ids, *a, **k)
    first = pipe(TEXTS)
    assert rows == [3, 1]
    rows.clear()
    _same(pipe(TEXTS, batch_size=1), first)
    assert rows == [1, 1, 1, 1] and pipe.predictor.batch_size == 3  # the call's size is the call's only
    with pytest.raises(OneBertError, match="batch_size must be a positive integer"):
        pipe(TEXTS, batch_size=0)


def test_records_keep_onebert_format_for_the_server(models):
    pipe = onebert.pipeline(model=models["classification"], device="cpu")
    record = pipe.records(["good"])[0]
    assert set(record) == {"label", "score", "scores"} and record["score"] == pytest.approx(pipe("good")[0]["score"])
    ner = onebert.pipeline(model=models["ner"], device="cpu")
    for entity in ner.records(["mary works in new york"])[0]:
        assert set(entity) == {"entity", "word", "start", "end", "score"} and "-" not in entity["entity"]


def test_wrong_task_names_are_one_line_errors(models):
    with pytest.raises(OneBertError, match="fine-tuned for ner, not text-classification"):
        onebert.pipeline("text-classification", model=models["ner"], device="cpu")
    with pytest.raises(OneBertError, match="fine-tuned for classification, not qa"):
        onebert.pipeline("question-answering", model=models["classification"], device="cpu")
