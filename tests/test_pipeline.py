"""onebert.pipeline: batched and length-sorted inside, outputs in input order and equal to one-at-a-time calls."""

from __future__ import annotations

import pytest
import torch
from tiny_finetune import save_random_heads

import onebert
from onebert.errors import OneBertError

TEXTS = ["the movie was very good and the plot and the acting was not bad at all", "good", "john lives in paris .",
         "", "a film", "mary works in new york , anna lives in rome and john is not very good", "the plot ?"]
PAIRS = [("the movie", "was good"), ("a", "very very long second text about the film and the plot and the acting"),
         ("john lives in paris", "")]
QUESTIONS = [{"question": "where does john live ?", "context": "the film . john lives in paris . mary lives in rome ."},
             {"question": "who ?", "context": "mary"},
             {"question": "where does anna live ?", "context": " ".join(["the plot is good ."] * 12) + " anna lives in rome ."},
             {"question": "where ?", "context": ""}]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Randomly initialised heads saved as fine-tuned directories: deterministic outputs to compare."""
    from onebert.infer.predictor import TaskSpec

    specs = {"classification": TaskSpec("classification", labels=["neg", "pos"], max_seq_length=32),
             "regression": TaskSpec("classification", regression=True, max_seq_length=32),
             "ner": TaskSpec("ner", labels=["B-LOC", "B-PER", "I-LOC", "I-PER", "O"], max_seq_length=12),
             "qa": TaskSpec("qa", max_seq_length=32, doc_stride=8, max_query_length=8, version_2=True,
                            null_threshold=0.5)}
    return save_random_heads(tmp_path_factory.mktemp("pipeline"), specs)


def _same(batched, single):
    if isinstance(batched, list):
        assert len(batched) == len(single)
        for a, b in zip(batched, single):
            _same(a, b)
    elif isinstance(batched, dict):
        assert batched.keys() == single.keys()
        for key in batched:
            _same(batched[key], single[key])
    elif isinstance(batched, float):
        assert batched == pytest.approx(single, abs=1e-5)
    else:
        assert batched == single


@pytest.mark.parametrize("name, inputs", [("classification", TEXTS), ("classification", PAIRS),
                                          ("classification", [TEXTS[0], PAIRS[1], TEXTS[2], PAIRS[0]]),
                                          ("regression", TEXTS), ("ner", TEXTS), ("qa", QUESTIONS)])
def test_batched_outputs_are_in_input_order_and_equal_one_at_a_time_calls(models, name, inputs):
    pipe = onebert.pipeline(model=models[name], device="cpu", batch_size=2)
    batched = pipe(list(inputs))
    assert len(batched) == len(inputs)
    _same(batched, [pipe([item])[0] for item in inputs])
    _same(batched, list(reversed(pipe(list(reversed(inputs))))))  # order in, order out


def test_inputs_run_in_batches_sorted_by_length(models):
    pipe = onebert.pipeline("classification", models["classification"], device="cpu", batch_size=2)
    widths = []
    forward = pipe.model.forward

    def spy(input_ids, *args, **kwargs):
        widths.append((input_ids.shape[0], input_ids.shape[1]))
        return forward(input_ids, *args, **kwargs)

    pipe.model.forward = spy
    pipe(TEXTS)
    assert [rows for rows, _ in widths] == [2, 2, 2, 1]
    assert [width for _, width in widths] == sorted((width for _, width in widths), reverse=True)
    lengths = sorted((len(pipe.tokenizer.tokenize(t)) + 2 for t in TEXTS), reverse=True)
    assert [width for _, width in widths] == lengths[::2]  # each batch is as wide as its longest input only


def test_output_formats_per_task(models):
    # transformers' shapes (tests/test_pipeline_conventions.py compares them with transformers): a string
    # gives a list of one {"label", "score"}, a pair a dict; the server's records keep "scores" (Pipeline.records).
    classification = onebert.pipeline(model=models["classification"], device="cpu")
    [result] = classification("the movie was good")
    assert set(result) == {"label", "score"} and result["label"] in ("neg", "pos")
    scores = {entry["label"]: entry["score"] for entry in classification("the movie was good", top_k=None)}
    assert scores[result["label"]] == result["score"] == max(scores.values())
    assert isinstance(classification(("a pair", "of texts")), dict)
    assert set(onebert.pipeline(model=models["regression"], device="cpu")("good")[0]) == {"label", "score"}

    ner = onebert.pipeline(model=models["ner"], device="cpu")
    text = "mary works in new york , anna lives in rome and john is not very good"
    entities = ner(text, aggregation_strategy="simple")
    assert entities and ner("") == [] and ner("   ") == []
    for entity in entities:
        assert set(entity) == {"entity_group", "word", "start", "end", "score"}
        assert text[entity["start"]:entity["end"]] == entity["word"] and entity["entity_group"] in ("LOC", "PER")

    qa = onebert.pipeline(model=models["qa"], device="cpu")
    for item, answer in zip(QUESTIONS, qa(QUESTIONS)):
        assert list(answer) == ["score", "start", "end", "answer"] and 0 <= answer["score"] <= 1
        if answer["answer"]:
            assert item["context"][answer["start"]:answer["end"]] == answer["answer"]
        else:
            assert answer["start"] == answer["end"] == -1
    assert qa(QUESTIONS[3])["answer"] == ""  # no context, no answer
    assert qa.task == "qa" and qa.spec.null_threshold == 0.5 and isinstance(qa.model, torch.nn.Module)


def test_wrong_task_and_bad_inputs_are_one_line_errors(models):
    with pytest.raises(OneBertError, match="fine-tuned for ner, not qa"):
        onebert.pipeline("qa", models["ner"], device="cpu")
    with pytest.raises(OneBertError, match="not a fine-tuned model"):
        onebert.pipeline(model=models["ner"].parent / "base", device="cpu")
    classification = onebert.pipeline(model=models["classification"], device="cpu")
    with pytest.raises(OneBertError, match="input 0: expected a text or a pair"):
        classification([42])
    with pytest.raises(OneBertError, match=r"input 1: expected \{'question': str, 'context': str\}"):
        onebert.pipeline(model=models["qa"], device="cpu")([QUESTIONS[0], {"question": "no context"}])
    with pytest.raises(OneBertError, match="input 0: expected a text"):
        onebert.pipeline(model=models["ner"], device="cpu")([["pre", "split"]])


def test_onebert_pipeline_stays_the_function_after_its_module_is_imported():
    import importlib

    importlib.import_module("onebert.infer.pipeline")
    from onebert.infer.pipeline import Pipeline  # noqa: F401

    assert callable(onebert.pipeline) and onebert.pipeline.__name__ == "pipeline"
