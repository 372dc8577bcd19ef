"""Readers for data as `datasets` users hold it: Parquet files, JSON-array files and saved dataset directories.

The three hold the same thing, a list of records with named fields, so they are read into (where, record)
pairs and turned into the examples of `onebert.tasks.readers` by the same rules as JSON lines (which the NER
and QA record readers accept too):
- classification: the text/text_pair/label fields found as in a JSONL file (`examples_from_records`);
- ner: `tokens` (a list of words) and `ner_tags` (or `tags`): tag strings, or integer ids named by the file's
  ClassLabel feature (CoNLL-2003 on the Hub) or by `--label-names`;
- qa: SQuAD's columns id, title, context, question, answers {text: [...], answer_start: [...]} (a list of
  {text, answer_start} objects is read too); no answers is an unanswerable (v2.0) question.

Where a record is: `FILE: [i]` in a JSON array (a JSON path), `FILE: row i` in Parquet and datasets
directories (0-based, as `dataset[i]`); a DatasetDict's split is named by its directory, `DIR/train: row i`.

Choices:
- The format is told by `--format`, else by the path: a directory is a saved dataset (dataset_info.json and
  state.json; dataset_dict.json for a DatasetDict), `.parquet` is Parquet, a `.json` file whose first
  character is `[` is a JSON array (otherwise it stays what it was: JSON lines, or SQuAD's object for qa).
- A DatasetDict directory gives the split of the option it was named by (`--train` the `train` split,
  `--validation` and `onebert evaluate --data` the `validation` one, `onebert predict --input` the `test`
  one); another split is named by its own directory, `DIR/test`, which is a saved Dataset itself. No new
  path syntax: `DIR:split` would be ambiguous with file names that hold a colon.
- Saved datasets are read with `datasets.load_from_disk`: the directory layout (state.json, arrow shards,
  an indices mapping) is `datasets`' own and has changed between its versions; reading the arrow files
  directly would tie onebert to one of them. Parquet needs only pyarrow, and its schema metadata carries
  the same features (`huggingface` key) that `Dataset.to_parquet` writes, so ClassLabel names survive.
  Both are optional (the `data` extra), imported only when such a file is read.
- The label names of a ClassLabel feature are used for classification labels as well: a model fine-tuned on
  SST-2 from the Hub then predicts "positive", as transformers' run_glue names its labels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from onebert.errors import OneBertError, show_value
from onebert.tasks.readers import (NerExample, QAExample, ReadOptions, TextExample, _json_type, _names,
                                   align_answer, apply_tag_scheme, check_tag, examples_from_records,
                                   json_object_lines, read_text_file, report_alignment)
from onebert.text_input import check_input_file, parse_json_document, refuse_lone_surrogates

logger = logging.getLogger(__name__)

RECORD_FORMATS = ("json", "parquet", "datasets")
# `--format` of finetune and evaluate (each task takes some: Task.data_formats).
DATA_FORMATS = ("auto", "tsv", "csv", "jsonl", "json", "parquet", "datasets", "conll", "squad")
EXTRA = "pip install 'onebert[data]'"
# The split a DatasetDict directory gives to each option that names data.
DEFAULT_SPLITS = {"train": "train", "validation": "validation", "data": "validation", "input": "test"}
NER_TAG_COLUMNS = ("ner_tags", "tags")
_DATASET_FILES = ("dataset_info.json", "state.json")
_DICT_FILE = "dataset_dict.json"


@dataclass
class Records:
    """The records of one file or split, where each is, and the `datasets` features (None if unknown)."""

    path: str  # the file or split directory, as messages name it
    rows: list[tuple[str, dict[str, Any]]]
    features: dict[str, Any] | None = None


# ---------------------------------------------------------------------- formats


def record_format(path: str | Path, given: str | None = None) -> str | None:
    """"json", "parquet" or "datasets" when `path` (or `--format`) is one; None for the older formats."""
    if given is not None:
        return given if given in RECORD_FORMATS else None
    path = Path(path)
    if path.is_dir():
        return "datasets"
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".json" and _first_character(path) == "[":
        return "json"
    return None


def is_json_lines(path: str | Path, given: str | None) -> bool:
    """Records as JSON lines: `--format jsonl`, or a .jsonl / .ndjson file (NER and QA training files)."""
    return given == "jsonl" or (given is None and Path(path).suffix.lower() in (".jsonl", ".ndjson"))


def check_format(task_name: str, given: str | None, accepted: Sequence[str]) -> None:
    if given is not None and given not in accepted:
        raise OneBertError(f"--format {given} does not fit the {task_name} task; use one of {', '.join(accepted)}")


def _first_character(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return ""  # the reader names the problem
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1].decode("latin-1")


# ---------------------------------------------------------------------- reading records


def read_records(path: str | Path, fmt: str, split: str | None = None) -> Records:
    """The records of a JSON array, JSON lines, Parquet file or saved dataset (the `split` of a DatasetDict)."""
    if fmt == "json":
        return _json_array(Path(path))
    if fmt == "jsonl":
        return _json_lines(Path(path))
    if fmt == "parquet":
        return _parquet(Path(path))
    if fmt == "datasets":
        return _saved_dataset(Path(path), split)
    raise OneBertError(f"{path}: unknown record format {fmt!r}; use one of {', '.join(RECORD_FORMATS)}")


def _json_array(path: Path) -> Records:
    text = read_text_file(path)
    root = parse_json_document(text, str(path))
    if not isinstance(root, list):
        raise OneBertError(f"{path}: top level: expected a list of records, found {_json_type(type(root))}")
    refuse_lone_surrogates(root, str(path), text)
    for i, record in enumerate(root):
        if not isinstance(record, dict):
            raise OneBertError(f"{path}: [{i}]: expected an object, found {_json_type(type(record))}")
    return _nonempty(Records(str(path), [(f"{path}: [{i}]", record) for i, record in enumerate(root)]))


def _json_lines(path: Path) -> Records:
    rows = [(f"{path}: line {number}", record) for number, record in json_object_lines(path, read_text_file(path))]
    return _nonempty(Records(str(path), rows))


def _parquet(path: Path) -> Records:
    check_input_file(path)
    pq = _optional("pyarrow.parquet", "Parquet files")
    import pyarrow

    try:
        table = pq.read_table(path)
        rows = table.to_pylist()
    except (pyarrow.ArrowException, OSError, ValueError) as exc:  # not Parquet, truncated, bad UTF-8
        raise OneBertError(f"{path}: cannot read as Parquet: {_first_line(exc)}") from None
    metadata = table.schema.metadata or {}
    features = None
    if b"huggingface" in metadata:  # what Dataset.to_parquet writes: {"info": {"features": {...}}}
        try:
            features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features")
        except (ValueError, AttributeError):
            logger.warning("%s: unreadable `huggingface` schema metadata ignored (no ClassLabel names)", path)
    return _checked(Records(str(path), [(f"{path}: row {i}", row) for i, row in enumerate(rows)], features))


def _saved_dataset(path: Path, split: str | None) -> Records:
    directory = _dataset_directory(path, split)
    datasets = _optional("datasets", "saved datasets directories")
    try:
        loaded = datasets.load_from_disk(str(directory))  # a DatasetDict's split directory is a Dataset's
        rows = loaded.to_list()
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; each is one line for the user
        raise OneBertError(f"{directory}: cannot load as a saved dataset: {_first_line(exc)}") from None
    if not isinstance(loaded, datasets.Dataset):
        raise OneBertError(f"{directory}: expected one split of a saved dataset, found {type(loaded).__name__}")
    features = loaded.features.to_dict()
    return _checked(Records(str(directory), [(f"{directory}: row {i}", row) for i, row in enumerate(rows)],
                            features))


def _dataset_directory(path: Path, split: str | None) -> Path:
    """The directory of the records: `path` itself, or its split `split` when it is a DatasetDict."""
    if not path.exists():
        raise OneBertError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise OneBertError(f"{path}: is a file, expected a directory written by datasets' save_to_disk")
    if (path / _DICT_FILE).is_file():
        try:
            splits = json.loads((path / _DICT_FILE).read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OneBertError(f"{path / _DICT_FILE}: unreadable ({_first_line(exc)})") from None
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            wanted = f"no split {split!r}" if split else "several splits"
            raise OneBertError(f"{path}: a DatasetDict with {wanted} (it has {_names(splits)}); name one as "
                               f"{path / str(splits[0])}")
        return path / split
    missing = [name for name in _DATASET_FILES if not (path / name).is_file()]
    if missing:
        raise OneBertError(f"{path}: is a directory without {' or '.join(missing)}; expected a dataset saved by "
                           f"datasets' save_to_disk (or give a file)")
    return path


def _optional(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OneBertError(f"reading {what} needs the {module.split('.')[0]} package: {EXTRA}") from None


def _checked(records: Records) -> Records:
    for where, row in records.rows:
        refuse_lone_surrogates(row, where)
    return _nonempty(records)


def _nonempty(records: Records) -> Records:
    if not records.rows:
        raise OneBertError(f"{records.path}: no records")
    return records


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0] or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def class_names(features: dict[str, Any] | None, column: str) -> tuple[str, ...] | None:
    """The ClassLabel names of `column` (or of its items, for a sequence of ClassLabels), if the features say."""
    feature: Any = (features or {}).get(column)
    while isinstance(feature, (dict, list)):
        if isinstance(feature, list):  # the old list-of-one form of Sequence
            feature = feature[0] if len(feature) == 1 else None
        elif feature.get("_type") == "ClassLabel":
            names = feature.get("names")
            return tuple(str(name) for name in names) if isinstance(names, list) else None
        else:
            feature = feature.get("feature")  # Sequence / List / LargeList
    return None


# ---------------------------------------------------------------------- examples


def classification_records(path: str | Path, fmt: str, options: ReadOptions, columns: dict[str, Any] | None = None,
                           labelled: bool = True) -> list[TextExample]:
    """Classification examples of a record file; ClassLabel (or --label-names) names integer labels."""
    records = read_records(path, fmt, options.split)
    columns = dict(columns or {})
    names = options.label_names
    if names is None:
        label_column = columns.get("label_column") or next(
            (key for key in records.rows[0][1] if key.lower() in ("label", "labels")), None)
        names = class_names(records.features, label_column) if label_column else None
    return examples_from_records(records.rows, columns.get("text_column"), columns.get("text_pair_column"),
                                 columns.get("label_column"), labelled, names)


def ner_records(path: str | Path, fmt: str, options: ReadOptions, labelled: bool = True,
                scheme: str = "auto") -> list[NerExample]:
    """NER sentences of a record file: `tokens` and `ner_tags` as in the CoNLL-2003 dataset."""
    records = read_records(path, fmt, options.split)
    first = records.rows[0][1]
    if "tokens" not in first:
        raise OneBertError(f"{records.rows[0][0]}: no `tokens` field ({_names(list(first))}); NER records need "
                           f"`tokens` and `ner_tags`, as in the CoNLL-2003 dataset")
    tag_key = next((key for key in NER_TAG_COLUMNS if key in first), None)
    if tag_key is None and labelled:
        raise OneBertError(f"{records.rows[0][0]}: no `ner_tags` field ({_names(list(first))})")
    names = options.label_names or (class_names(records.features, tag_key) if tag_key else None)
    examples, skipped = [], {"empty": 0, "-DOCSTART-": 0}
    for where, record in records.rows:
        words = _string_list(record.get("tokens"), where, "tokens")
        if not words or words == ["-DOCSTART-"]:  # as the CoNLL reader: document markers are not sentences
            skipped["empty" if not words else "-DOCSTART-"] += 1
            continue
        tags = None
        if tag_key is not None and (labelled or record.get(tag_key) is not None):
            tags = _tags(record.get(tag_key), names, where, tag_key, records.path)
            if len(tags) != len(words):
                raise OneBertError(f"{where}: {len(words)} tokens but {len(tags)} {tag_key}")
        examples.append(NerExample(words=words, tags=tags, source=where))
    if any(skipped.values()):
        logger.warning("%s: skipped %s", records.path,
                       ", ".join(f"{n} {kind} sentence(s)" for kind, n in skipped.items() if n))
    if not examples:
        raise OneBertError(f"{records.path}: no sentences (only empty or -DOCSTART- records)")
    if labelled:
        apply_tag_scheme(records.path, examples, scheme)
    return examples


def _string_list(value: Any, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        found = _json_type(type(value)) if not isinstance(value, list) else "a list with a non-string"
        raise OneBertError(f"{where}: {key}: expected a list of strings, found {found}")
    return value


def _tags(value: Any, names: Sequence[str] | None, where: str, key: str, path: str) -> list[str]:
    if not isinstance(value, list):
        raise OneBertError(f"{where}: {key}: expected a list of tags, found {_json_type(type(value))}")
    tags = []
    for i, tag in enumerate(value):
        if isinstance(tag, int) and not isinstance(tag, bool):
            if names is None:
                raise OneBertError(f"{where}: {key} are integer ids and {path} has no ClassLabel names for them; "
                                   f"give the tag names in id order with --label-names O,B-PER,I-PER,... (or a "
                                   f"file of names, one per line)")
            if not 0 <= tag < len(names):
                raise OneBertError(f"{where}: {key}[{i}]: tag id {tag} is outside the {len(names)} tag names")
            tag = names[tag]
        elif not isinstance(tag, str):
            raise OneBertError(f"{where}: {key}[{i}]: expected a tag or tag id, found {_json_type(type(tag))}")
        tags.append(check_tag(tag, f"{where}: {key}[{i}]"))
    return tags


def qa_records(path: str | Path, fmt: str, options: ReadOptions, labelled: bool = True) -> list[QAExample]:
    """SQuAD questions of a record file: id, title, context, question, answers {text, answer_start}."""
    records = read_records(path, fmt, options.split)
    examples: list[QAExample] = []
    seen: dict[str, str] = {}
    moved = unaligned = 0
    for where, record in records.rows:
        qid = _typed(record, "id", (str, int), where, required=False)
        qid = str(len(examples)) if qid is None else str(qid)
        if qid in seen:
            raise OneBertError(f"{where}: id: duplicate id {show_value(qid)} (also at {seen[qid]})")
        seen[qid] = where
        context = _typed(record, "context", str, where)
        answers = []
        for text, start in _answer_pairs(record.get("answers"), where, labelled):
            answer = align_answer(context, text, start)
            moved += answer.aligned and answer.start != start
            unaligned += not answer.aligned
            answers.append(answer)
        title = record.get("title")
        examples.append(QAExample(id=qid, question=_typed(record, "question", str, where), context=context,
                                  answers=answers, is_impossible=not answers,
                                  title=title if isinstance(title, str) else "", source=where))
    report_alignment(records.path, examples, moved, unaligned)
    return examples


def _typed(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, required: bool = True) -> Any:
    value = record.get(key)
    if value is None and not required:
        return None
    if value is None:
        raise OneBertError(f"{where}: {key}: missing")
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(_json_type(k) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise OneBertError(f"{where}: {key}: expected {names}, found {_json_type(type(value))}")
    return value


def _answer_pairs(answers: Any, where: str, labelled: bool) -> list[tuple[str, int]]:
    """(text, answer_start) of `answers`: datasets' {text: [...], answer_start: [...]} or SQuAD's list of objects."""
    if answers is None:
        if labelled:
            raise OneBertError(f"{where}: answers: missing (an unanswerable question has empty lists)")
        return []
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise OneBertError(f"{where}: answers: expected {{text: [...], answer_start: [...]}} with lists of one "
                               f"length")
        pairs = list(zip(texts, starts))
    elif isinstance(answers, list):
        pairs = [(a.get("text"), a.get("answer_start")) if isinstance(a, dict) else (None, None) for a in answers]
    else:
        raise OneBertError(f"{where}: answers: expected an object or a list, found {_json_type(type(answers))}")
    for n, (text, start) in enumerate(pairs):
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise OneBertError(f"{where}: answers[{n}]: expected a text (string) and an answer_start (integer), "
                               f"found {_json_type(type(text))} and {_json_type(type(start))}")
    return pairs


# ---------------------------------------------------------------------- options


def label_names_option(value: str) -> tuple[str, ...]:
    """`--label-names`: names of integer label ids in id order, comma-separated, or a file with one per line."""
    if "," not in value and Path(value).is_file():
        names = [line.strip() for line in read_text_file(value).split("\n") if line.strip()]
    else:
        names = [name.strip() for name in value.split(",")]
    if len(names) < 2 or not all(names):
        raise OneBertError(f"--label-names {show_value(value)}: expected two or more names, comma-separated "
                           f"(O,B-PER,I-PER), or a file with one name per line")
    if len(set(names)) != len(names):
        raise OneBertError(f"--label-names: {show_value(next(n for n in names if names.count(n) > 1))} appears twice")
    return tuple(names)


def add_format_arguments(parser: Any) -> None:
    """`--format` and `--label-names` of the commands that read labelled data (finetune, evaluate)."""
    parser.add_argument("--format", choices=DATA_FORMATS, default="auto",
                        help="data format (auto: by the suffix; a directory is a datasets save_to_disk, .parquet "
                             "Parquet, a .json holding a list of JSON records)")
    parser.add_argument("--label-names", metavar="NAMES|FILE", default=None,
                        help="names of integer label / ner_tags ids, in id order: O,B-PER,I-PER,... or a file with "
                             "one per line (for Parquet, JSON and datasets files without ClassLabel names)")


def read_options(args: Any, option: str) -> ReadOptions:
    """The ReadOptions of a command's data `option` ("train", "validation", "data", "input")."""
    given = getattr(args, "format", None)
    names = getattr(args, "label_names", None)
    return ReadOptions(file_format=None if given in (None, "auto") else given,
                       label_names=label_names_option(names) if isinstance(names, str) else names,
                       split=DEFAULT_SPLITS.get(option))
