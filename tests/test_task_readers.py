"""Readers of fine-tuning data: the real files' counts, every supported layout, and one-line errors."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest

from onebert.tasks.readers import (TextExample, build_label_list, label_ids, looks_like_regression,
                                read_classification, read_conll, read_squad, regression_targets)
from onebert.errors import OneBertError
from onebert.tasks.metrics import get_entities

# ---------------------------------------------------------------------- real data (counts from its README)


def test_sst2_counts_and_labels(shared_data):
    train = read_classification(shared_data / "sst2" / "train.tsv")
    dev = read_classification(shared_data / "sst2" / "dev.tsv")
    assert (len(train), len(dev)) == (67_349, 872)
    assert Counter(e.label for e in train) == {"0": 29_780, "1": 37_569}
    assert Counter(e.label for e in dev) == {"0": 428, "1": 444}
    assert build_label_list(train) == ["0", "1"]
    assert all(e.text_pair is None for e in train)
    assert train[0].text == "hide new secretions from the parental units"  # trailing space stripped


def test_mrpc_pairs_with_bom_header_and_bare_quotes(shared_data):
    train = read_classification(shared_data / "mrpc" / "train.tsv")
    dev = read_classification(shared_data / "mrpc" / "dev.tsv")
    assert (len(train), len(dev)) == (3_668, 408)
    assert Counter(e.label for e in train) == {"1": 2_474, "0": 1_194}
    assert Counter(e.label for e in dev) == {"1": 279, "0": 129}
    # "#1 String" / "#2 String" found despite the BOM; quotes kept as text (no CSV quoting).
    assert train[0].text.startswith('Amrozi accused his brother, whom he called "the witness"')
    assert train[0].text_pair.startswith('Referring to him as only "the witness"')
    assert dev[0].text_pair.startswith('"The foodservice pie business')


def test_conll2003_sentence_token_and_entity_counts(shared_data):
    train = read_conll(shared_data / "conll2003" / "train.txt")
    valid = read_conll(shared_data / "conll2003" / "valid.txt")
    assert len(train) == 14_041 and sum(len(e.words) for e in train) == 203_621
    assert len(valid) == 3_250 and sum(len(e.words) for e in valid) == 51_362
    entities = Counter(kind for e in train for kind, _, _ in get_entities(e.tags))
    assert entities == {"LOC": 7_140, "PER": 6_600, "ORG": 6_321, "MISC": 3_438}
    assert train[0].words[:3] == ["EU", "rejects", "German"] and train[0].tags[:3] == ["B-ORG", "O", "B-MISC"]


def test_squad_files_question_counts(shared_data):
    v2 = read_squad(shared_data / "squad" / "squad_v2_dev_subset.json")
    v1 = read_squad(shared_data / "squad" / "xquad_en_part_a.json")
    assert len(v2) == 1_407 and sum(e.is_impossible for e in v2) == 702
    assert len(v1) == 678 and not any(e.is_impossible for e in v1)
    assert all(a.aligned for e in v1 + v2 for a in e.answers)
    assert all(e.training_answer is not None for e in v1 + v2 if not e.is_impossible)


# ---------------------------------------------------------------------- classification layouts


def test_tsv_without_header_by_field_count_and_by_index(tmp_path):
    path = tmp_path / "plain.tsv"
    path.write_text("good film\t1\nbad film\t0\n")
    examples = read_classification(path)
    assert [(e.text, e.label) for e in examples] == [("good film", "1"), ("bad film", "0")]
    path = tmp_path / "cola.tsv"  # CoLA's header-less layout: source, label, original label, sentence
    path.write_text("gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n")
    examples = read_classification(path, text_column=3, label_column=1)
    assert [(e.text, e.label) for e in examples] == [("Our friends won't buy this analysis.", "1"),
                                                      ("They drank the pub.", "0")]
    assert examples[1].source == f"{path}: line 2"


def test_csv_with_real_quoting_and_named_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('id,premise,hypothesis,label\r\n1,"A man, a plan","He said ""hi""\non two lines",entailment\r\n'
                    '2,x,y,neutral\r\n')
    examples = read_classification(path)
    assert examples[0].text == "A man, a plan"
    assert examples[0].text_pair == 'He said "hi"\non two lines'
    assert examples[1].source == f"{path}: line 4"  # the quoted newline makes row 1 span lines 2-3
    assert build_label_list(examples) == ["entailment", "neutral"]


def test_jsonl_with_integer_labels_and_explicit_columns(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"review": "fine", "stars": 10}) + "\n\n" + json.dumps({"review": "meh", "stars": 2})
                    + "\n" + json.dumps({"review": "ok", "stars": 9}) + "\n")
    examples = read_classification(path, label_column="stars")
    assert [e.label for e in examples] == ["10", "2", "9"]
    assert build_label_list(examples) == ["2", "9", "10"]  # integer labels sort as numbers
    assert label_ids(examples, build_label_list(examples)) == [2, 0, 1]
    assert examples[1].source == f"{path}: line 3"


def test_regression_labels_are_numbers(tmp_path):
    path = tmp_path / "stsb.tsv"
    path.write_text("sentence1\tsentence2\tscore\nA plane takes off.\tAn air plane is taking off.\t5.000\n"
                    "A man plays.\tA cat eats.\t0.250\n")
    examples = read_classification(path)
    assert looks_like_regression(examples)
    assert regression_targets(examples) == [5.0, 0.25]
    path.write_text("sentence1\tsentence2\tscore\na\tb\t5\nc\td\t0\n")
    assert not looks_like_regression(read_classification(path))  # integer labels are classes


def test_prediction_input_may_lack_the_label_column(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("index\tsentence\n0\tit 's a charming journey .\n")
    examples = read_classification(path, labelled=False)
    assert examples[0].text == "it 's a charming journey ." and examples[0].label is None


# ---------------------------------------------------------------------- classification errors


def test_tsv_row_with_a_missing_column_names_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(OneBertError, match=rf"^{path}: line 3: 1 tab-separated fields, the header has 2$"):
        read_classification(path)


def test_unknown_label_at_evaluation_names_file_and_line(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\na\tpos\nb\tneg\n")
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\nc\tpos\nd\tneutral\n")
    label_list = build_label_list(read_classification(train))
    with pytest.raises(OneBertError, match=rf"^{dev}: line 3: unknown label 'neutral'; the model knows 'neg', 'pos'$"):
        label_ids(read_classification(dev), label_list)


@pytest.mark.parametrize("reader, name", [(read_classification, "a.tsv"), (read_classification, "a.jsonl"),
                                          (read_conll, "a.txt"), (read_squad, "a.json")])
def test_empty_file_is_an_error(tmp_path, reader, name):
    path = tmp_path / name
    path.write_text("\n  \n")
    with pytest.raises(OneBertError, match=rf"^{path}: the file is empty$"):
        reader(path)


@pytest.mark.parametrize("reader, name, content, line, column", [
    (read_classification, "a.tsv", b"sentence\tlabel\ngood\t1\ncaf\xe9\t0\n", 3, 4),
    (read_conll, "a.txt", b"EU B-ORG\n\ncaf\xe9 O\n", 3, 4),
    (read_squad, "a.json", b'{"data": [\n{"title": "caf\xe9"}]}', 2, 15),
])
def test_non_utf8_file_names_the_line(tmp_path, reader, name, content, line, column):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(OneBertError, match=rf"^{path}: line {line}: not valid UTF-8 \(byte 0xe9 at column {column}\)"):
        reader(path)


def test_header_only_and_unknown_columns_are_errors(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("sentence\tlabel\n")
    with pytest.raises(OneBertError, match="only a header line"):
        read_classification(path)
    path.write_text("sentence\tlabel\nx\t1\n")
    with pytest.raises(OneBertError, match=r"line 1: no label column 'stars' in the header \(sentence, label\)"):
        read_classification(path, label_column="stars")
    path.write_text("foo\tbar\nx\t1\n")
    with pytest.raises(OneBertError, match="no header line and 2 fields|no text column"):
        read_classification(path, has_header=True)


# ---------------------------------------------------------------------- CoNLL


def test_conll_docstart_blank_lines_and_tab_separated_columns(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("-DOCSTART-\tO\n\nNew York\tB-LOC\nis\tO\n\n\n-DOCSTART-\tO\nhi\tO\n")
    examples = read_conll(path)
    assert [e.words for e in examples] == [["New York", "is"], ["hi"]]
    assert examples[0].source == f"{path}: line 3"


def test_conll_line_with_wrong_column_count_names_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nGerman JJ B-MISC\n")
    with pytest.raises(OneBertError, match=rf"^{path}: line 4: 3 columns, but line 1 has 4;"):
        read_conll(path)


def test_conll_rejects_a_tag_that_is_not_iob(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("EU ORG\n")
    with pytest.raises(OneBertError, match=rf"^{path}: line 1: tag 'ORG' is not O or B-TYPE / I-TYPE$"):
        read_conll(path)


def test_conll_words_only_for_prediction(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("EU\nrejects\n\nHi\n")
    assert [(e.words, e.tags) for e in read_conll(path, labelled=False)] == [(["EU", "rejects"], None), (["Hi"], None)]
    with pytest.raises(OneBertError, match="line 1: one column only"):
        read_conll(path)


# ---------------------------------------------------------------------- SQuAD


def _squad(articles: list) -> str:
    return json.dumps({"version": "v2.0", "data": articles})


def _article(paragraphs: list) -> dict:
    return {"title": "T", "paragraphs": paragraphs}


CONTEXT = "Normandy is a region in France. The Normans gave their name to Normandy."


def test_squad_missing_field_names_its_json_path(tmp_path):
    good_qa = {"id": "x", "question": "Where?", "answers": [{"text": "France", "answer_start": 24}]}
    paragraphs = [{"context": CONTEXT, "qas": []}] * 2 + [{"context": CONTEXT, "qas": [{"question": "Where?",
                                                                                          "answers": []}]}]
    articles = [_article([{"context": CONTEXT, "qas": [dict(good_qa, id=f"a{i}")]}]) for i in range(3)]
    path = tmp_path / "bad.json"
    path.write_text(_squad(articles + [_article(paragraphs)]))
    with pytest.raises(OneBertError, match=rf"^{path}: data\[3\]\.paragraphs\[2\]\.qas\[0\]\.id: missing$"):
        read_squad(path)
    bad_start = dict(good_qa, answers=[{"text": "France", "answer_start": "24"}])
    path.write_text(_squad([_article([{"context": CONTEXT, "qas": [bad_start]}])]))
    with pytest.raises(OneBertError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]\.answer_start: "
                                           r"expected an integer, found a string"):
        read_squad(path)


def test_squad_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n  {"title": "T",\n   "paragraphs": [}\n]}')
    with pytest.raises(OneBertError, match=rf"^{path}: line 3: invalid JSON"):
        read_squad(path)


def test_squad_duplicate_ids_and_contradictory_impossible_flag(tmp_path):
    qa = {"id": "q", "question": "Where?", "answers": [{"text": "France", "answer_start": 24}]}
    path = tmp_path / "a.json"
    path.write_text(_squad([_article([{"context": CONTEXT, "qas": [qa, qa]}])]))
    with pytest.raises(OneBertError, match=r"qas\[1\]\.id: duplicate id 'q' \(also at data\[0\]"):
        read_squad(path)
    path.write_text(_squad([_article([{"context": CONTEXT, "qas": [dict(qa, is_impossible=True)]}])]))
    with pytest.raises(OneBertError, match="is_impossible is true but `answers` is not empty"):
        read_squad(path)


def test_squad_misaligned_answers_are_moved_when_close_else_counted(tmp_path, caplog):
    qas = [
        {"id": "ok", "question": "Where?", "answers": [{"text": "France", "answer_start": 24}]},
        {"id": "near", "question": "Where?", "answers": [{"text": "France", "answer_start": 21}]},
        {"id": "far", "question": "Who?", "answers": [{"text": "Vikings", "answer_start": 3}]},
        {"id": "none", "question": "When?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "France", "answer_start": 24}]},
    ]
    path = tmp_path / "a.json"
    path.write_text(_squad([_article([{"context": CONTEXT, "qas": qas}])]))
    with caplog.at_level(logging.WARNING, logger="onebert.tasks.readers"):
        examples = {e.id: e for e in read_squad(path)}
    assert examples["near"].training_answer.start == 24  # found 3 characters away and moved
    assert examples["far"].training_answer is None and examples["far"].answer_texts == ["Vikings"]
    assert examples["none"].is_impossible and examples["none"].answers == []
    assert "2 answer(s) not at their answer_start: 1 found within 20 characters and moved, 1 not found" in caplog.text
    assert "1 question(s) have no usable answer for training" in caplog.text


# ---------------------------------------------------------------------- classification features and decoding


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from onebert.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(minilm_dir)


def test_pair_features_match_transformers_longest_first_truncation(tokenizer, minilm_dir, shared_data):
    transformers = pytest.importorskip("transformers")
    from onebert.tasks.classification import classification_features

    dev = read_classification(shared_data / "mrpc" / "dev.tsv")[:200]
    features = classification_features(tokenizer, dev, max_seq_length=40, label_list=["0", "1"])
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))(
        [e.text for e in dev], [e.text_pair for e in dev], max_length=40, truncation="longest_first")
    assert features.columns["input_ids"] == reference["input_ids"]
    assert features.columns["token_type_ids"] == reference["token_type_ids"]
    assert features.columns["labels"] == [int(e.label) for e in dev]


def test_labels_decode_to_names_and_score_with_the_standard_metrics(tokenizer):
    import torch

    from onebert.tasks import collate
    from onebert.tasks.classification import (classification_features, decode_classification,
                                              evaluate_classification)

    examples = [_example("great", "pos"), _example("awful", "neg"), _example("fine", "pos"), _example("bad", "pos")]
    label_list = build_label_list(examples)
    features = classification_features(tokenizer, examples, label_list=label_list)
    batch = collate([features[i] for i in range(len(features))], tokenizer.pad_token_id)
    assert batch["labels"].tolist() == [1, 0, 1, 1] and batch["labels"].dtype == torch.long
    logits = torch.tensor([[0.0, 2.0], [3.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # the last one is wrong
    predictions = decode_classification(logits, label_list)
    assert [p.label for p in predictions] == ["pos", "neg", "pos", "neg"]
    assert predictions[1].score == pytest.approx(1 / (1 + np.exp(-3.0)))
    scores = evaluate_classification(predictions, examples, label_list)
    assert scores["accuracy"] == 0.75 and scores["precision"] == 1.0 and scores["recall"] == pytest.approx(2 / 3)


def test_regression_features_are_float_targets(tokenizer):
    import torch

    from onebert.tasks import collate
    from onebert.tasks.classification import classification_features, decode_classification

    examples = [_example("a", "4.5"), _example("b", "0.25")]
    features = classification_features(tokenizer, examples, regression=True)
    batch = collate([features[0], features[1]], tokenizer.pad_token_id)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [4.5, 0.25]
    assert [p.label for p in decode_classification(torch.tensor([[1.5], [2.0]]), regression=True)] == [1.5, 2.0]


def _example(text: str, label: str) -> TextExample:
    return TextExample(text=text, label=label, source="test")
