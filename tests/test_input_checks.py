"""Input that is not what it seems: lone surrogates, a header of unknown names, control characters in
labels, and --input paths that are directories or devices. Each is a one-line error naming the place."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest
from tiny_finetune import make_tiny_model, write_pairs, write_squad

from onebert.cli import main
from onebert.tasks.readers import read_classification, read_squad
from onebert.errors import OneBertError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread

SURROGATE = "lone surrogate \\ud800 at character"


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with one line on stderr and no traceback. Returns that line."""
    capsys.readouterr()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("pretrained") / "model")


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory):
    """A classification and a QA model fine-tuned for one step: enough to load for predict/evaluate."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--model", str(tiny_model), "--max-steps", "1", "--device", "cpu", "--batch-size", "8"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["finetune", "--task", "classification", "--train", str(write_pairs(root / "p.tsv", 16, 0)),
                     "--output", str(root / "clf"), *common]) == 0
        assert main(["finetune", "--task", "qa", "--train", str(write_squad(root / "q.json", 4, 0)), "--output",
                     str(root / "qa"), "--max-seq-length", "48", "--doc-stride", "16", "--max-query-length", "16",
                     *common]) == 0
    return {"classification": root / "clf" / "final", "qa": root / "qa" / "final"}


# ---------------------------------------------------------------------- lone surrogates

def _surrogate_jsonl(path: Path) -> Path:
    # json.dumps writes "\ud800" as the six-character escape: valid JSON, not a character.
    path.write_text(json.dumps({"sentence1": "fine", "sentence2": "ok", "label": "yes"}) + "\n"
                    + json.dumps({"sentence1": "a\ud800b", "sentence2": "ok", "label": "no"}) + "\n", encoding="ascii")
    return path


def test_lone_surrogate_in_a_jsonl_table_is_an_error_naming_file_line_and_field(tmp_path):
    path = _surrogate_jsonl(tmp_path / "train.jsonl")
    with pytest.raises(OneBertError, match=rf"train\.jsonl: line 2: sentence1: {re.escape(SURROGATE)} 1"):
        read_classification(path)


def test_lone_surrogate_in_squad_names_the_json_path(tmp_path):
    path = write_squad(tmp_path / "squad.json", 2, 0)
    data = json.loads(path.read_text())
    data["data"][0]["paragraphs"][1]["qas"][0]["question"] = "where\udc00?"
    path.write_text(json.dumps(data), encoding="ascii")
    with pytest.raises(OneBertError, match=r"squad\.json: data\[0\]\.paragraphs\[1\]\.qas\[0\]\.question: "
                                           r"lone surrogate \\udc00 at character 5"):
        read_squad(path)


def test_escaped_surrogate_pairs_are_characters_and_read_fine(tmp_path):
    path = tmp_path / "emoji.jsonl"
    path.write_text('{"text": "nice \\ud83d\\ude00", "label": 1}\n{"text": "bad", "label": 0}\n', encoding="ascii")
    assert read_classification(path)[0].text == "nice \U0001F600"


def test_lone_surrogate_is_a_one_line_error_in_finetune_predict_and_evaluate(tmp_path, tiny_model, models, capsys):
    bad = _surrogate_jsonl(tmp_path / "bad.jsonl")
    err = _one_line_error(capsys, ["finetune", "--task", "classification", "--model", str(tiny_model), "--train",
                                   str(bad), "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert f"bad.jsonl: line 2: sentence1: {SURROGATE} 1" in err
    assert not (tmp_path / "out").exists()
    err = _one_line_error(capsys, ["predict", "--model", str(models["classification"]), "--input", str(bad),
                                   "--device", "cpu"])
    assert f"bad.jsonl: line 2: sentence1: {SURROGATE} 1" in err
    err = _one_line_error(capsys, ["evaluate", "--model", str(models["classification"]), "--data", str(bad),
                                   "--device", "cpu"])
    assert f"bad.jsonl: line 2: sentence1: {SURROGATE} 1" in err
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"question": "who?", "context": "john"}\n{"question": "who?", "context": "\\ud800"}\n')
    err = _one_line_error(capsys, ["predict", "--model", str(models["qa"]), "--input", str(questions),
                                   "--device", "cpu"])
    assert f"questions.jsonl: line 2: context: {SURROGATE} 0" in err


def test_tokenizer_encode_with_an_undecodable_argument_is_a_one_line_error(tiny_model, capsys):
    # Python turns command-line bytes that are not UTF-8 into lone surrogates (here 0xff -> \udcff).
    err = _one_line_error(capsys, ["tokenizer", "encode", "--tokenizer", str(tiny_model), "a\udcffb"])
    assert "the text argument is not valid UTF-8 (byte 0xff at character 1)" in err


def test_tokenizer_api_names_the_text_with_a_lone_surrogate(tiny_model):
    from onebert.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(tiny_model)
    calls = {"texts[1]": lambda: tokenizer(["fine", "a\ud800"]),
             "text_pairs[0]": lambda: tokenizer(["fine"], ["\ud800"]),
             "contexts[0]": lambda: tokenizer.encode_windows(["who"], ["x\ud800"], max_length=32, stride=8),
             "questions[0]": lambda: tokenizer.encode_windows(["x\ud800"], ["who"], max_length=32, stride=8),
             "texts[2]": lambda: tokenizer.encode_ids(["a", "b", "\ud800"]),
             "text[0]": lambda: tokenizer.tokenize("\ud800")}
    for name, call in calls.items():
        with pytest.raises(OneBertError, match=rf"^{re.escape(name)}: lone surrogate \\ud800"):
            call()


def test_pipeline_and_embedder_name_the_input_with_a_lone_surrogate(tiny_model, models):
    from onebert.infer.embedder import Embedder
    from onebert.infer.pipeline import pipeline

    pipe = pipeline(model=models["classification"], device="cpu")
    with pytest.raises(OneBertError, match=r"^input 2: lone surrogate \\ud800 at character 1"):
        pipe(["fine", ("a", "b"), "x\ud800"])
    qa = pipeline(model=models["qa"], device="cpu")
    with pytest.raises(OneBertError, match=r"^input 0: lone surrogate"):
        qa({"question": "who?", "context": "\ud800"})
    embedder = Embedder(tiny_model, device="cpu")
    with pytest.raises(OneBertError, match=r"^text 3: lone surrogate"):
        embedder.encode(["a", "b", "c", "\ud800"], batch_size=2)


def test_lone_surrogates_in_a_jsonl_corpus_are_replaced_and_counted(tmp_path):
    from onebert.data.corpus import CorpusSummary, read_documents

    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "Fine text here."}\n{"text": "Bad \\ud800 one \\udfff."}\n', encoding="ascii")
    summary = CorpusSummary()
    documents = list(read_documents([path], summary=summary, warn=False))
    assert [u for d in documents for u in d.units] == ["Fine text here.", "Bad \ufffd one \ufffd."]
    assert f"2 lone surrogate(s) (JSON \\ud800-style escapes, not characters) replaced with U+FFFD in {path}" \
        in summary.report_lines()


# ---------------------------------------------------------------------- an unrecognised header

def _rows(labels: list[str]) -> str:
    return "".join(f"some text {i}\t{label}\n" for i, label in enumerate(labels))


@pytest.mark.parametrize("header, labels, why", [
    ("foo\tbar\n", ["0", "1"] * 6, "'bar' is not a number, as every other row's is"),
    ("a\tb\tsim\n", None, "'sim' is not a number"),  # regression scores, pairs
    ("opinion\tsentiment\n", ["positive", "negative"] * 6, "'sentiment' occurs nowhere else"),
])
def test_unknown_header_row_is_refused_naming_its_columns_and_the_flags(tmp_path, header, labels, why):
    path = tmp_path / "train.tsv"
    body = "".join(f"x {i}\ty {i}\t{i / 4}\n" for i in range(5)) if labels is None else _rows(labels)
    path.write_text(header + body)
    with pytest.raises(OneBertError) as error:
        read_classification(path)
    message = str(error.value)
    assert message.startswith(f"{path}: line 1 looks like a header") and why in message
    assert ", ".join(header.strip().split("\t")) in message  # the columns found
    assert "--text-column" in message and "--label-column" in message


def test_unknown_csv_header_is_refused_and_finetune_exits_2(tmp_path, tiny_model, capsys):
    path = tmp_path / "train.csv"
    path.write_text("words,stars\n" + "".join(f"text {i},{i % 5}\n" for i in range(20)))
    err = _one_line_error(capsys, ["finetune", "--task", "classification", "--model", str(tiny_model), "--train",
                                   str(path), "--output", str(tmp_path / "out")])
    assert "train.csv: line 1 looks like a header" in err and "(words, stars; comma-separated)" in err


def test_header_row_is_read_when_the_columns_are_named_and_as_data_when_given_by_index(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("foo\tbar\n" + _rows(["0", "1"] * 6))
    by_name = read_classification(path, text_column="foo", label_column="bar")
    assert len(by_name) == 12 and by_name[0].label == "0"
    by_index = read_classification(path, text_column="0", label_column="1")
    assert len(by_index) == 13 and by_index[0].label == "bar"


@pytest.mark.parametrize("content", [
    _rows(["positive", "negative"] * 6),  # text labels: the first occurs again
    _rows(["pos", "neg", "neutral"]),  # too few rows to call a label that occurs once suspicious
    "".join(f"a {i}\tb {i}\t{i / 3:.2f}\n" for i in range(6)),  # header-less regression
    _rows(["2", "0", "1", "0", "1"]),  # header-less numeric classes
])
def test_headerless_files_are_still_read_as_data(tmp_path, content):
    path = tmp_path / "train.tsv"
    path.write_text(content)
    assert len(read_classification(path)) == len(content.splitlines())


def test_real_glue_files_with_known_headers_still_read(shared_data):
    assert len(read_classification(shared_data / "sst2" / "train.tsv")) == 67349
    assert len(read_classification(shared_data / "mrpc" / "dev.tsv")) == 408


# ---------------------------------------------------------------------- control characters in labels

@pytest.mark.parametrize("label, code", [("1\x00", "U+0000"), ("po\x1bs", "U+001B"), ("pos\u200b", "U+200B")])
def test_label_with_a_control_character_is_refused_naming_line_and_character(tmp_path, label, code):
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"sentence\tlabel\nfine\t1\nbad\t{label}\n")
    with pytest.raises(OneBertError, match=rf"train\.tsv: line 3: label .* control character {re.escape(code)}"):
        read_classification(tsv)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"text": "ok", "label": "0"}) + "\n" + json.dumps({"text": "x", "label": label}) + "\n")
    with pytest.raises(OneBertError, match=rf"train\.jsonl: line 2: label .* control character {re.escape(code)}"):
        read_classification(jsonl)


def test_nul_in_a_label_is_a_one_line_error_in_finetune(tmp_path, tiny_model, capsys):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\nfine\t1\nbad\t0\nworse\t1\x00\n")
    err = _one_line_error(capsys, ["finetune", "--task", "classification", "--model", str(tiny_model), "--train",
                                   str(path), "--output", str(tmp_path / "out")])
    assert "train.tsv: line 4: label '1\\x00' holds the control character U+0000" in err


# ---------------------------------------------------------------------- input paths

def test_embed_input_that_is_a_directory_a_device_or_a_fifo_says_what_it_is(tmp_path, tiny_model, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cases = {str(tmp_path): "is a directory", "/dev/urandom": "is a character device", str(fifo): "is a named pipe",
             str(tmp_path / "nope.txt"): "no such file"}
    for given, expected in cases.items():
        err = _one_line_error(capsys, ["embed", "--model", str(tiny_model), "--input", given, "--output",
                                       str(tmp_path / "out.npy")])
        assert f"--input {given}: {expected}" in err
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"fine\n\xff\xfe\x00")
    err = _one_line_error(capsys, ["embed", "--model", str(tiny_model), "--input", str(binary), "--output",
                                   str(tmp_path / "out.npy")])
    assert "binary.txt: line 2: not valid UTF-8 (byte 0xff at byte offset 5)" in err


def test_data_options_of_other_commands_name_a_device_or_directory(tmp_path, tiny_model, models, capsys):
    err = _one_line_error(capsys, ["finetune", "--task", "classification", "--model", str(tiny_model), "--train",
                                   "/dev/urandom", "--output", str(tmp_path / "out")])
    assert "/dev/urandom: is a character device, expected a regular file" in err
    err = _one_line_error(capsys, ["evaluate", "--model", str(models["classification"]), "--data", str(tmp_path),
                                   "--device", "cpu"])
    assert f"{tmp_path}: is a directory" in err
    err = _one_line_error(capsys, ["predict", "--model", str(models["classification"]), "--input", "/dev/zero",
                                   "--device", "cpu"])
    assert "/dev/zero: is a character device" in err
    err = _one_line_error(capsys, ["tokenizer", "train", "--input", "/dev/urandom", "--output", str(tmp_path / "t")])
    assert "/dev/urandom: is a character device" in err
