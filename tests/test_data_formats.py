"""Parquet files, JSON-array files and `datasets` save_to_disk directories, for every task.

The same examples written as today's formats (TSV, CoNLL, SQuAD JSON) and as records read to identical
example lists; a DatasetDict gives each option its split; fine-tuning runs from Parquet and from a saved
dataset; and bad records are one line naming the file and the row or field.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

pytest.importorskip("pyarrow")
datasets = pytest.importorskip("datasets")

from onebert.cli import main  # noqa: E402
from onebert.errors import OneBertError  # noqa: E402
from onebert.tasks import get_task  # noqa: E402
from onebert.tasks.readers import ReadOptions, read_conll, read_squad  # noqa: E402
from onebert.tasks.records import DEFAULT_SPLITS  # noqa: E402
from tests.tiny_finetune import make_tiny_model, write_conll, write_pairs, write_squad  # noqa: E402

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _plain(examples):
    """The examples without where they came from (the line or row differs between formats)."""
    return [dataclasses.replace(example, source="") for example in examples]


def _write_all(tmp_path, name, records, features=None):
    """The records as Parquet, a JSON array (to_json(lines=False)), a saved Dataset and a saved DatasetDict."""
    dataset = datasets.Dataset.from_list(records, features=features)
    paths = {"parquet": tmp_path / f"{name}.parquet", "json": tmp_path / f"{name}.json",
             "datasets": tmp_path / f"{name}_ds", "dict": tmp_path / f"{name}_dict"}
    dataset.to_parquet(str(paths["parquet"]))
    dataset.to_json(str(paths["json"]), lines=False)
    dataset.save_to_disk(str(paths["datasets"]))
    datasets.DatasetDict(train=dataset, validation=dataset.select(range(2))).save_to_disk(str(paths["dict"]))
    return paths


def _error(call) -> str:
    with pytest.raises(OneBertError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_classification_parquet_json_array_and_datasets_dirs_read_as_the_tsv(tmp_path):
    tsv = write_pairs(tmp_path / "pairs.tsv", 12, seed=1)
    task = get_task("classification")(None)
    expected = _plain(task.read(tsv))
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    records = [{"sentence1": a, "sentence2": b, "label": label, "idx": i} for i, (a, b, label) in enumerate(rows)]
    for fmt, path in _write_all(tmp_path, "pairs", records).items():
        options = ReadOptions(split="train") if fmt == "dict" else None
        assert _plain(task.read(path, None, options)) == expected, fmt


def test_classification_class_label_ids_are_read_as_their_names(tmp_path):
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    records = [{"sentence": "a good film", "label": 1}, {"sentence": "a bad film", "label": 0}]
    task = get_task("classification")(None)
    paths = _write_all(tmp_path, "sst", records, features)
    for fmt in ("parquet", "datasets"):  # both keep the features; a JSON array has ints only
        assert [e.label for e in task.read(paths[fmt])] == ["positive", "negative"], fmt
    assert [e.label for e in task.read(paths["json"])] == ["1", "0"]
    named = ReadOptions(label_names=("neg", "pos"))
    assert [e.label for e in task.read(paths["json"], None, named)] == ["pos", "neg"]


def test_ner_records_with_class_label_tags_read_as_the_conll_file(tmp_path):
    conll = write_conll(tmp_path / "train.conll", 10, seed=2)
    expected = _plain(read_conll(conll))
    # As the CoNLL-2003 dataset: a -DOCSTART- sentence, integer ner_tags named by a ClassLabel feature.
    records = [{"id": "0", "tokens": ["-DOCSTART-"], "ner_tags": [0]}]
    records += [{"id": str(i + 1), "tokens": e.words, "ner_tags": [TAGS.index(t) for t in e.tags]}
                for i, e in enumerate(expected)]
    features = datasets.Features({"id": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=TAGS))})
    task = get_task("ner")(None)
    paths = _write_all(tmp_path, "ner", records, features)
    for fmt in ("parquet", "datasets", "dict"):
        options = ReadOptions(split="validation") if fmt == "dict" else None
        got = _plain(task.read(paths[fmt], None, options))
        assert got == (expected[:1] if fmt == "dict" else expected), fmt  # validation: 2 records, 1 DOCSTART
    # A JSON array has no features: the names come from --label-names, else a one-line error asks for them.
    assert _plain(task.read(paths["json"], None, ReadOptions(label_names=tuple(TAGS)))) == expected
    message = _error(lambda: task.read(paths["json"]))
    assert f"{paths['json']}: [1]: ner_tags are integer ids" in message and "--label-names" in message
    # Tags written out as strings need no names (JSON lines too).
    lines = tmp_path / "ner.jsonl"
    lines.write_text("".join(json.dumps({"tokens": e.words, "ner_tags": e.tags}) + "\n" for e in expected))
    assert _plain(task.read(lines)) == expected


def test_qa_records_with_squad_columns_read_as_the_squad_json(tmp_path):
    squad = write_squad(tmp_path / "train.json", 6, seed=3)
    expected = _plain(read_squad(squad))
    records = [{"id": e.id, "title": e.title, "context": e.context, "question": e.question,
                "answers": {"text": [a.text for a in e.answers], "answer_start": [a.start for a in e.answers]}}
               for e in expected]
    task = get_task("qa")(None)
    for fmt, path in _write_all(tmp_path, "squad", records).items():
        options = ReadOptions(split="train") if fmt == "dict" else None
        assert _plain(task.read(path, None, options)) == expected, fmt
    assert task.read(squad)  # SQuAD's own .json (an object with "data") still reads


def test_a_dataset_dict_gives_each_option_its_split_and_names_the_others(tmp_path):
    records = [{"text": f"text {i}", "label": str(i % 2)} for i in range(5)]
    directory = _write_all(tmp_path, "d", records)["dict"]
    task = get_task("classification")(None)
    assert len(task.read(directory, None, ReadOptions(split=DEFAULT_SPLITS["train"]))) == 5
    assert len(task.read(directory, None, ReadOptions(split=DEFAULT_SPLITS["validation"]))) == 2
    assert len(task.read(directory / "validation")) == 2  # a split is named by its own directory
    message = _error(lambda: task.read(directory, None, ReadOptions(split="test")))
    assert "no split 'test'" in message and "train, validation" in message and str(directory / "train") in message
    example = task.read(directory, None, ReadOptions(split="train"))[3]
    assert example.source == f"{directory / 'train'}: row 3"


@pytest.mark.parametrize("case", ["missing column", "wrong type", "control label", "surrogate", "not a dataset",
                                  "length mismatch", "qa answers", "not parquet"])
def test_bad_records_are_one_line_naming_the_file_and_the_row(tmp_path, case):
    task_name, records, expected = {
        "missing column": ("classification", [{"text": "a", "label": "x"}, {"text": "b"}], "[1]: missing label"),
        "wrong type": ("classification", [{"text": ["a"], "label": "x"}], "[0]: field 'text' is list"),
        "control label": ("classification", [{"text": "a", "label": "x\x00y"}], "[0]: label 'x\\x00y' holds the "
                                                                                  "control character U+0000"),
        "surrogate": ("classification", [{"text": "a\ud800", "label": "x"}], "[0].text: lone surrogate \\ud800"),
        "not a dataset": ("classification", None, "is a directory without dataset_info.json or state.json"),
        "length mismatch": ("ner", [{"tokens": ["a", "b"], "ner_tags": ["O"]}], "[0]: 2 tokens but 1 ner_tags"),
        "qa answers": ("qa", [{"id": "1", "context": "c", "question": "q", "answers": {"text": ["c"]}}],
                       "[0]: answers: expected {text: [...], answer_start: [...]}"),
        "not parquet": ("classification", None, "cannot read as Parquet"),
    }[case]
    path = tmp_path / "data.json"
    if case == "not a dataset":
        path = tmp_path / "dir"
        path.mkdir()
    elif case == "not parquet":
        path = tmp_path / "data.parquet"
        path.write_text("text,label\n")
    else:  # ensure_ascii: the surrogate is written as the \ud800 escape a JSON file can hold
        path.write_text(json.dumps(records), encoding="utf-8")
    message = _error(lambda: get_task(task_name)(None).read(path))
    assert message.startswith(str(path)) and expected in message, message


def test_missing_pyarrow_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list([{"text": "a", "label": "x"}]).to_parquet(str(path))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import raises ImportError
    message = _error(lambda: get_task("classification")(None).read(path))
    assert "needs the pyarrow package: pip install 'onebert[data]'" in message


def test_label_names_on_a_conll_file_and_a_format_of_another_task_are_refused(tmp_path):
    conll = write_conll(tmp_path / "t.conll", 2, seed=0)
    assert "--label-names" in _error(lambda: get_task("ner")(None).read(conll, None, ReadOptions(label_names=("O", "B"))))
    assert "--format squad does not fit the classification task" in _error(
        lambda: get_task("classification")(None).read(conll, None, ReadOptions(file_format="squad")))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("fmt", ["parquet", "dict"])
def test_finetune_runs_a_step_from_parquet_and_from_a_datasets_directory_then_evaluates_and_predicts(
        tiny_model, tmp_path, fmt, capsys):
    tsv = write_pairs(tmp_path / "pairs.tsv", 16, seed=4)
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    records = [{"sentence1": a, "sentence2": b, "label": label} for a, b, label in rows]
    data = _write_all(tmp_path, "pairs", records)[fmt]
    output = tmp_path / "run"
    validation = ["--validation", str(data)] if fmt == "dict" else []  # the dict's validation split
    assert main(["finetune", "--task", "classification", "--model", str(tiny_model), "--train", str(data),
                 *validation, "--output", str(output), "--max-steps", "1", "--batch-size", "8", "--device", "cpu",
                 "--log-every", "100"]) == 0
    assert (output / "final" / "config.json").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--model", str(output / "final"), "--data", str(data), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["examples"] == (2 if fmt == "dict" else 16)
    if fmt == "dict":  # predict takes the test split: this dict has none, and the error names the others
        assert main(["predict", "--model", str(output / "final"), "--input", str(data), "--device", "cpu"]) == 2
        assert "no split 'test'" in capsys.readouterr().err
    else:
        assert main(["predict", "--model", str(output / "final"), "--input", str(data), "--device", "cpu"]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 16
