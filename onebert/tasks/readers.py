"""Readers for fine-tuning data: classification tables, CoNLL NER files and SQuAD JSON.

Each reader returns a list of small dataclasses that remember where they came from
(`source`: "FILE: line N" or a JSON path), so every later error can name the place to fix.
Bad input raises `OneBertError` on one line; nothing is dropped silently (what is skipped or
repaired is counted and logged).

Choices, in one place:
- Tables (TSV, CSV, JSONL). TSV is split on tabs with no quoting (GLUE files contain bare `"`);
  CSV uses real quoting; JSONL is one object per line. A UTF-8 BOM is ignored. Text columns are
  found by name (`sentence`, `sentence1`/`sentence2`, MRPC's `#1 String`/`#2 String`, `question`,
  `text`, ...) or taken by 0-based index in a header-less file. Labels stay strings here;
  `build_label_list` sorts them (numerically when they are all integers) and `label_ids` maps
  them, so an unknown label at evaluation is an error naming its file and line.
- CoNLL. The tag is the last column, the word the first; `-DOCSTART-` lines and blank lines end a
  sentence. IOB1 files (an entity may start with `I-`; `B-` only separates two adjacent entities
  of one type) are converted to IOB2 on reading: every entity then starts with `B-`. conlleval and
  seqeval read the same entities from both forms, so scores do not change, and the model learns
  one consistent scheme.
- SQuAD. v1.1 and v2.0 (`is_impossible`, `plausible_answers`). An answer whose text is not at its
  `answer_start` is looked for within ±`MAX_ANSWER_SHIFT` characters; the nearest exact match
  replaces the offset (counted as "moved"). If there is none, the answer is kept for evaluation
  (the official script compares texts only) but marked unaligned, and training skips it; both
  counts are logged as a warning.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from onebert.text_input import check_input_file, check_label, parse_json_document, refuse_lone_surrogates
from onebert.errors import OneBertError, show_value

logger = logging.getLogger(__name__)

# Text column pairs and single text columns recognised in a header, in order of preference
# (GLUE: MRPC `#1 String`, QQP `question1`, QNLI `question`/`sentence`, RTE/MNLI, SST-2/CoLA).
PAIR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sentence1", "sentence2"), ("#1 string", "#2 string"), ("question1", "question2"),
    ("question", "sentence"), ("premise", "hypothesis"), ("text", "text_pair"), ("text_a", "text_b"),
)
SINGLE_COLUMNS: tuple[str, ...] = ("sentence", "text", "text_a", "review", "content")
LABEL_COLUMNS: tuple[str, ...] = ("label", "labels", "quality", "gold_label", "score")
MAX_ANSWER_SHIFT = 20
TABLE_FORMATS = ("tsv", "csv", "jsonl")
TAG_SCHEMES = ("auto", "iob1", "iob2")
_TAG_PATTERN = re.compile(r"^(O|[BIES]-\S.*)$")

Column = str | int | None


@dataclass
class TextExample:
    """One row of a classification file; `label` is the raw string (None when the file has none)."""

    text: str
    text_pair: str | None = None
    label: str | None = None
    source: str = ""


@dataclass
class NerExample:
    """One sentence: words and their IOB2 tags (None for unlabelled input)."""

    words: list[str]
    tags: list[str] | None = None
    source: str = ""


@dataclass
class SquadAnswer:
    text: str
    start: int
    aligned: bool = True  # context[start:start + len(text)] == text


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[SquadAnswer] = field(default_factory=list)
    is_impossible: bool = False
    title: str = ""
    source: str = ""

    @property
    def training_answer(self) -> SquadAnswer | None:
        """The answer training uses: the first one found at its offset (None if there is none)."""
        return next((answer for answer in self.answers if answer.aligned), None)

    @property
    def answer_texts(self) -> list[str]:
        return [answer.text for answer in self.answers]


@dataclass(frozen=True)
class ReadOptions:
    """How to read a data file besides its columns: `--format`, `--label-names`, the split of a DatasetDict.

    file_format None: told by the path (see onebert.tasks.records.record_format). label_names: the names of
    integer label ids, in id order, for files without datasets' ClassLabel names. split None: a DatasetDict
    directory must then have one split.
    """

    file_format: str | None = None
    label_names: tuple[str, ...] | None = None
    split: str | None = None


# ---------------------------------------------------------------------- files


def read_text_file(path: str | Path) -> str:
    """The file as text: UTF-8 with an optional BOM; errors name the line of a bad byte."""
    # A FIFO would block forever and /dev/zero would fill memory: only regular files are read.
    path = check_input_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OneBertError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise OneBertError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column "
                           f"{column}); save the file as UTF-8") from None
    if not text.strip():
        raise OneBertError(f"{path}: the file is empty")
    return text


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): that also splits on \x1c, \x85, \u2028 ... which can occur inside texts.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


# ---------------------------------------------------------------------- classification


def table_format(path: str | Path, file_format: str | None = None) -> str:
    if file_format is not None:
        if file_format not in TABLE_FORMATS:
            raise OneBertError(f"{path}: unknown format {file_format!r}; use one of {', '.join(TABLE_FORMATS)}")
        return file_format
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("tsv", "txt", "tab"):
        return "tsv"
    if suffix == "csv":
        return "csv"
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    raise OneBertError(f"{path}: cannot tell the format from the suffix {Path(path).suffix!r}; "
                       f"give one of {', '.join(TABLE_FORMATS)}")


def read_classification(path: str | Path, *, text_column: Column = None, text_pair_column: Column = None,
                        label_column: Column = None, file_format: str | None = None,
                        has_header: bool | None = None, labelled: bool = True) -> list[TextExample]:
    """Read a TSV, CSV or JSONL file of texts (or text pairs) and labels.

    Columns are names (or 0-based indices for a header-less TSV/CSV); left as None they are
    recognised from the header (see PAIR_COLUMNS, SINGLE_COLUMNS, LABEL_COLUMNS). A header-less
    file without indices is read as `text[, text_pair], label` by its number of fields (without
    the label when `labelled=False`). `has_header=None` detects a header by its known column names.
    With `labelled=False` a missing label column is fine (prediction input).
    """
    path = check_input_file(path)  # before the suffix: /dev/urandom is a device, not a file of unknown format
    fmt = table_format(path, file_format)
    text = read_text_file(path)
    if fmt == "jsonl":
        return _read_jsonl(path, text, text_column, text_pair_column, label_column, labelled)
    rows = _table_rows(path, text, fmt)
    if not rows:
        raise OneBertError(f"{path}: the file is empty")
    first_line, first = rows[0]
    given = (text_column, text_pair_column, label_column)
    if has_header is None:
        has_header = _looks_like_header(first, given)
        if not has_header and labelled and not any(column is not None for column in given):
            _refuse_unknown_header(path, fmt, rows)
    if has_header:
        header = [name.strip() for name in first]
        rows = rows[1:]
        if not rows:
            raise OneBertError(f"{path}: only a header line, no examples")
        columns = _columns_from_header(path, first_line, header, text_column, text_pair_column, label_column,
                                       labelled)
        expected = len(header)
    else:
        columns = _columns_by_index(path, first_line, len(first), text_column, text_pair_column, label_column,
                                    labelled)
        # Without a header the first row sets the width: a stray tab in a later TSV row would
        # otherwise shift its label into the text silently.
        expected = len(first)
    text_index, pair_index, label_index = columns
    needed = max(i for i in columns if i is not None) + 1
    separator = "tab-separated" if fmt == "tsv" else "comma-separated"
    reference = "the header has" if has_header else f"line {first_line} has"
    examples = []
    for line, fields in rows:
        if len(fields) != expected and (fmt == "tsv" or len(fields) < needed):
            raise OneBertError(f"{path}: line {line}: {len(fields)} {separator} fields, {reference} {expected}"
                               + (" (a tab inside a text?)" if len(fields) > expected else ""))
        if len(fields) < needed:
            raise OneBertError(f"{path}: line {line}: {len(fields)} {separator} fields, expected at least {needed}")
        label = fields[label_index].strip() if label_index is not None else None
        if labelled and label == "":
            raise OneBertError(f"{path}: line {line}: empty label")
        if label:
            check_label(label, f"{path}: line {line}")
        examples.append(TextExample(text=fields[text_index].strip(),
                                    text_pair=fields[pair_index].strip() if pair_index is not None else None,
                                    label=label, source=f"{path}: line {line}"))
    return examples


def _table_rows(path: Path, text: str, fmt: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank row; blank rows are counted and reported."""
    rows: list[tuple[int, list[str]]] = []
    blank = 0
    if fmt == "tsv":
        for number, line in enumerate(_lines(text), start=1):
            if not line.strip():
                blank += 1
                continue
            rows.append((number, line.split("\t")))
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
        start = 1
        try:
            for fields in reader:
                if not any(f.strip() for f in fields):
                    blank += 1
                else:
                    rows.append((start, fields))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise OneBertError(f"{path}: line {reader.line_num}: bad CSV: {exc}") from None
    if blank and rows:
        logger.warning("%s: skipped %d blank line(s)", path, blank)
    return rows


def _looks_like_header(first: list[str], given: Sequence[Column]) -> bool:
    names = {f.strip().lower() for f in first}
    known = set(SINGLE_COLUMNS) | set(LABEL_COLUMNS) | {n for pair in PAIR_COLUMNS for n in pair}
    known |= {c.lower() for c in given if isinstance(c, str) and not c.isdigit()}
    return bool(names & known)


def _refuse_unknown_header(path: Path, fmt: str, rows: list[tuple[int, list[str]]]) -> None:
    """Refuse a first row that is a header of names we do not know, instead of training on it.

    A header-less file is read as `text[, text_pair], label`. Its first row is taken for a header when
    its label cell cannot be a label of this file: every other row's label is a number and it is not
    (this covers regression scores too), or the other rows use a few labels many times each and this
    one never. Then the columns are unknown, and only the user can name them. A file whose first row
    really is data with such a label (a class seen once) is read by giving the columns as indices.
    """
    first_line, first = rows[0]
    label_index = {2: 1, 3: 2}.get(len(first))
    if label_index is None:
        return  # other widths need the columns given anyway (_columns_by_index says so)
    first_label = first[label_index].strip()
    others = [fields[label_index].strip() for _, fields in rows[1:] if len(fields) == len(first)]
    if not others or not first_label:
        return
    reason = None
    if all(_is_number(label) for label in others) and not _is_number(first_label):
        reason = f"its label cell {show_value(first_label, 40)} is not a number, as every other row's is"
    elif first_label not in others and len(others) >= 10 and len(set(others)) * 5 <= len(others):
        reason = (f"its label cell {show_value(first_label, 40)} occurs nowhere else, while the other {len(others)} rows "
                  f"use {len(set(others))} labels")
    if reason is None:
        return
    separator = "tab" if fmt == "tsv" else "comma"
    raise OneBertError(
        f"{path}: line {first_line} looks like a header ({reason}), but no column name is known "
        f"({_names([name.strip() for name in first])}; {separator}-separated); name the columns with --text-column, "
        f"--label-column (and --text-pair-column) to read line {first_line} as a header, or give them as 0-based "
        f"indices to read it as data")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _columns_from_header(path: Path, line: int, header: list[str], text_column: Column, text_pair_column: Column,
                         label_column: Column, labelled: bool) -> tuple[int, int | None, int | None]:
    lowered = [name.lower() for name in header]

    def find(column: Column, role: str) -> int:
        if isinstance(column, int) or (isinstance(column, str) and column.isdigit() and column not in header):
            index = int(column)
            if not 0 <= index < len(header):
                raise OneBertError(f"{path}: line {line}: {role} column index {index} is outside the "
                                   f"{len(header)} columns")
            return index
        if column in header:
            return header.index(column)
        if str(column).lower() in lowered:
            return lowered.index(str(column).lower())
        raise OneBertError(f"{path}: line {line}: no {role} column {column!r} in the header "
                           f"({_names(header)})")

    if text_column is not None:
        text_index = find(text_column, "text")
        pair_index = find(text_pair_column, "text pair") if text_pair_column is not None else None
    elif text_pair_column is not None:
        raise OneBertError(f"{path}: a text pair column was given without a text column")
    else:
        text_index = pair_index = None
        for first_name, second_name in PAIR_COLUMNS:
            if first_name in lowered and second_name in lowered:
                text_index, pair_index = lowered.index(first_name), lowered.index(second_name)
                break
        else:
            for name in SINGLE_COLUMNS:
                if name in lowered:
                    text_index = lowered.index(name)
                    break
        if text_index is None:
            raise OneBertError(f"{path}: line {line}: no text column found in the header ({_names(header)}); "
                               f"name it with --text-column (and --text-pair-column for pairs)")
    label_index: int | None = None
    if label_column is not None:
        label_index = find(label_column, "label")
    else:
        label_index = next((lowered.index(n) for n in LABEL_COLUMNS if n in lowered), None)
        if label_index is None and labelled:
            raise OneBertError(f"{path}: line {line}: no label column found in the header ({_names(header)}); "
                               f"name it with --label-column")
    return text_index, pair_index, label_index


def _columns_by_index(path: Path, line: int, width: int, text_column: Column, text_pair_column: Column,
                      label_column: Column, labelled: bool) -> tuple[int, int | None, int | None]:
    given = (text_column, text_pair_column, label_column)
    for column in given:
        if column is not None and not (isinstance(column, int) or str(column).isdigit()):
            raise OneBertError(f"{path}: no header line, so column {column!r} must be a 0-based index")
    if text_column is not None:
        text_index = int(text_column)
        pair_index = int(text_pair_column) if text_pair_column is not None else None
        label_index = int(label_column) if label_column is not None else None
        if labelled and label_index is None:
            raise OneBertError(f"{path}: no header line: give the label column as a 0-based index")
        return text_index, pair_index, label_index
    layouts = {(True, 2): (0, None, 1), (True, 3): (0, 1, 2), (False, 1): (0, None, None), (False, 2): (0, 1, None)}
    layout = layouts.get((labelled, width))
    if layout is None:
        raise OneBertError(f"{path}: line {line}: no header line and {width} fields; give the text (and label) "
                           f"columns as 0-based indices")
    if label_column is not None:
        layout = (layout[0], layout[1], int(label_column))
    return layout


def _read_jsonl(path: Path, text: str, text_column: Column, text_pair_column: Column, label_column: Column,
                labelled: bool) -> list[TextExample]:
    records = [(f"{path}: line {number}", record) for number, record in json_object_lines(path, text)]
    if not records:
        raise OneBertError(f"{path}: the file is empty")
    return examples_from_records(records, text_column, text_pair_column, label_column, labelled)


def json_object_lines(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-empty line of a JSON-lines text, every line one JSON object: the one parser
    of JSON lines (classification, NER and QA records, predict's questions), so each names a bad line alike."""
    records = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OneBertError(f"{path}: line {number}: invalid JSON ({exc.msg}, column {exc.colno})") from None
        except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
            raise OneBertError(f"{path}: line {number}: invalid JSON ({_first_clause(exc)})") from None
        if not isinstance(record, dict):
            raise OneBertError(f"{path}: line {number}: expected a JSON object, found {_json_type(type(record))}")
        refuse_lone_surrogates(record, f"{path}: line {number}", line)
        records.append((number, record))
    return records


def examples_from_records(records: Sequence[tuple[str, dict[str, Any]]], text_column: Column = None,
                          text_pair_column: Column = None, label_column: Column = None, labelled: bool = True,
                          label_names: Sequence[str] | None = None) -> list[TextExample]:
    """Classification examples from (where, record) pairs: JSON lines, JSON arrays, Parquet and datasets rows.

    The fields are found in the first record (as a header). `label_names` names integer labels by id
    (datasets' ClassLabel); without it an integer label stays its number, as in a TSV file.
    """
    examples = []
    names: tuple[str, str | None, str | None] | None = None
    for where, record in records:
        if names is None:
            names = _jsonl_names(where, record, text_column, text_pair_column, label_column, labelled)
        text_key, pair_key, label_key = names
        values = []
        for key, role, required in ((text_key, "text", True), (pair_key, "text pair", pair_key is not None),
                                    (label_key, "label", labelled and label_key is not None)):
            value = record.get(key) if key is not None else None
            if value is None and required:
                raise OneBertError(f"{where}: missing {role} field {show_value(key)}")
            if value is not None and not isinstance(value, (str, int, float)):
                raise OneBertError(f"{where}: field {show_value(key)} is {type(value).__name__}, "
                                   f"expected a string or number")
            values.append(value)
        label = _record_label(values[2], label_names, where, labelled)
        examples.append(TextExample(text=str(values[0]).strip(),
                                    text_pair=str(values[1]).strip() if values[1] is not None else None,
                                    label=label, source=where))
    return examples


def _record_label(label: Any, label_names: Sequence[str] | None, where: str, labelled: bool) -> str | None:
    if isinstance(label, bool):
        label = str(label).lower()
    elif label_names is not None and isinstance(label, int):
        if label == -1 and not labelled:  # datasets' ClassLabel writes -1 for "no label" (GLUE test splits)
            return None
        if not 0 <= label < len(label_names):
            raise OneBertError(f"{where}: label id {label} is outside the {len(label_names)} label names "
                               f"({_names(label_names)})" + ("; -1 is datasets' 'no label'" if label == -1 else ""))
        label = label_names[label]
    if label is None:
        return None
    check_label(str(label).strip(), where)
    return str(label).strip()


def _jsonl_names(where: str, record: dict[str, Any], text_column: Column, text_pair_column: Column,
                 label_column: Column, labelled: bool) -> tuple[str, str | None, str | None]:
    by_lower = {key.lower(): key for key in record}
    if text_column is not None:
        text_key, pair_key = str(text_column), None if text_pair_column is None else str(text_pair_column)
    else:
        pair = next((p for p in PAIR_COLUMNS if p[0] in by_lower and p[1] in by_lower), None)
        if pair is not None:
            text_key, pair_key = by_lower[pair[0]], by_lower[pair[1]]
        else:
            single = next((by_lower[n] for n in SINGLE_COLUMNS if n in by_lower), None)
            if single is None:
                raise OneBertError(f"{where}: no text field found ({_names(record)}); "
                                   f"name it with --text-column")
            text_key, pair_key = single, None
    if label_column is not None:
        label_key: str | None = str(label_column)
    else:
        label_key = next((by_lower[n] for n in LABEL_COLUMNS if n in by_lower), None)
        if label_key is None and labelled:
            raise OneBertError(f"{where}: no label field found ({_names(record)}); "
                               f"name it with --label-column")
    return text_key, pair_key, label_key


def build_label_list(examples: Sequence[TextExample]) -> list[str]:
    """The label names of a training set: sorted numerically when all are integers, else as strings."""
    labels = {example.label for example in examples if example.label is not None}
    if not labels:
        raise OneBertError("no labels in the training data")
    if all(re.fullmatch(r"[+-]?\d+", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def label_ids(examples: Sequence[TextExample], label_list: Sequence[str]) -> list[int]:
    """Indices of the examples' labels in `label_list`; a label not seen in training is an error."""
    index = {name: i for i, name in enumerate(label_list)}
    ids = []
    for example in examples:
        if example.label is None:
            raise OneBertError(f"{example.source}: no label")
        found = index.get(example.label)
        if found is None:
            known = ", ".join(show_value(name, 40) for name in label_list[:12])
            raise OneBertError(f"{example.source}: unknown label {show_value(example.label)}; the model knows "
                               f"{known}{f', ... ({len(label_list)} in all)' if len(label_list) > 12 else ''}")
        ids.append(found)
    return ids


def regression_targets(examples: Sequence[TextExample]) -> list[float]:
    targets = []
    for example in examples:
        try:
            value = float(example.label)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise OneBertError(f"{example.source}: label {show_value(example.label)} is not a number "
                               "(regression)") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise OneBertError(f"{example.source}: label {show_value(example.label)} is not a finite number")
        targets.append(value)
    return targets


def looks_like_regression(examples: Sequence[TextExample]) -> bool:
    """True when every label is a number and some are not integers (STS-B's 0.0-5.0 scores)."""
    labels = [example.label for example in examples if example.label is not None]
    try:
        values = [float(label) for label in labels]
    except ValueError:
        return False
    return bool(values) and not all(re.fullmatch(r"[+-]?\d+", label) for label in labels)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- CoNLL NER


def read_conll(path: str | Path, *, labelled: bool = True, scheme: str = "auto") -> list[NerExample]:
    """Read a CoNLL file: `word [other columns] tag` per line, blank lines between sentences.

    scheme: "auto" converts IOB1 to IOB2 when an entity starts with `I-`; "iob1" always converts,
    "iob2" keeps the tags as they are. With labelled=False a one-column file (words only) is fine.
    """
    if scheme not in TAG_SCHEMES:
        raise OneBertError(f"{path}: unknown tag scheme {scheme!r}; use one of {', '.join(TAG_SCHEMES)}")
    path = Path(path)
    text = read_text_file(path)
    examples: list[NerExample] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    width = width_line = 0

    def flush() -> None:
        if words:
            examples.append(NerExample(words=list(words), tags=list(tags) if tags else None,
                                       source=f"{path}: line {start}"))
            words.clear()
            tags.clear()

    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            flush()
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if not width:
            width, width_line = len(fields), number
            if labelled and width < 2:
                raise OneBertError(f"{path}: line {number}: one column only; CoNLL lines are `word ... tag` "
                                   f"with the tag in the last column")
        elif len(fields) != width:
            raise OneBertError(f"{path}: line {number}: {len(fields)} columns, but line {width_line} has {width}; "
                               f"every token line needs the same columns (word first, tag last)")
        if not words:
            start = number
        words.append(fields[0])
        if width >= 2:
            tags.append(check_tag(fields[-1], f"{path}: line {number}"))
    flush()
    if not examples:
        raise OneBertError(f"{path}: no sentences (only -DOCSTART- or blank lines)")
    if width >= 2:
        apply_tag_scheme(path, examples, scheme)
    return examples


def check_tag(tag: str, where: str) -> str:
    if not _TAG_PATTERN.match(tag):
        raise OneBertError(f"{where}: tag {show_value(tag)} is not O or B-TYPE / I-TYPE")
    check_label(tag, where)
    return tag


def apply_tag_scheme(path: str | Path, examples: Sequence[NerExample], scheme: str) -> None:
    """IOB1 -> IOB2 in place: always for "iob1", for "auto" when some entity starts with I- (see the module doc)."""
    if scheme not in TAG_SCHEMES:
        raise OneBertError(f"{path}: unknown tag scheme {scheme!r}; use one of {', '.join(TAG_SCHEMES)}")
    first_iob1 = next((e for e in examples if e.tags and _starts_entity_with_inside(e.tags)), None)
    if scheme == "iob1" or (scheme == "auto" and first_iob1 is not None):
        for example in examples:
            if example.tags:
                example.tags = iob1_to_iob2(example.tags)
        if scheme == "auto":
            logger.info("%s: IOB1 tags (an entity starting with I- at the sentence of %s); converted to IOB2",
                        path, first_iob1.source if first_iob1 else "?")


def _starts_entity_with_inside(tags: Sequence[str]) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:  # "O"[2:] is "", never a type
            return True
        previous = tag
    return False


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 -> IOB2: an `I-X` that does not continue an X entity begins one, so it becomes `B-X`."""
    converted = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        converted.append(tag)
        previous = tag
    return converted


# ---------------------------------------------------------------------- SQuAD


def read_squad(path: str | Path, *, labelled: bool = True) -> list[QAExample]:
    """Read SQuAD v1.1 / v2.0 JSON. With labelled=False `answers` may be missing (prediction input).

    Questions with no answers (v2.0 `is_impossible`, or an empty `answers` list) are unanswerable.
    """
    path = Path(path)
    text = read_text_file(path)
    root = parse_json_document(text, str(path))
    refuse_lone_surrogates(root, str(path), text)
    data = _field(path, root, "data", list, "")
    examples: list[QAExample] = []
    seen: dict[str, str] = {}
    moved = unaligned = 0
    for a, article in enumerate(data):
        article_path = f"data[{a}]"
        _expect(path, article, dict, article_path)
        title = article.get("title", "")
        paragraphs = _field(path, article, "paragraphs", list, article_path)
        for p, paragraph in enumerate(paragraphs):
            paragraph_path = f"{article_path}.paragraphs[{p}]"
            _expect(path, paragraph, dict, paragraph_path)
            context = _field(path, paragraph, "context", str, paragraph_path)
            qas = _field(path, paragraph, "qas", list, paragraph_path)
            for q, qa in enumerate(qas):
                qa_path = f"{paragraph_path}.qas[{q}]"
                _expect(path, qa, dict, qa_path)
                qid = _field(path, qa, "id", (str, int), qa_path)
                qid = str(qid)
                if qid in seen:
                    raise OneBertError(f"{path}: {qa_path}.id: duplicate id {show_value(qid)} (also at {seen[qid]})")
                seen[qid] = qa_path
                question = _field(path, qa, "question", str, qa_path)
                if labelled or "answers" in qa:
                    raw_answers = _field(path, qa, "answers", list, qa_path)
                else:
                    raw_answers = []
                impossible = qa.get("is_impossible", not raw_answers)
                if not isinstance(impossible, bool):
                    raise OneBertError(f"{path}: {qa_path}.is_impossible: expected true or false, "
                                       f"found {type(impossible).__name__}")
                if impossible and raw_answers:
                    raise OneBertError(f"{path}: {qa_path}: is_impossible is true but `answers` is not empty")
                answers = []
                for n, raw in enumerate(raw_answers):
                    answer_path = f"{qa_path}.answers[{n}]"
                    _expect(path, raw, dict, answer_path)
                    answer_text = _field(path, raw, "text", str, answer_path)
                    answer_start = _field(path, raw, "answer_start", int, answer_path)
                    answer = align_answer(context, answer_text, answer_start)
                    moved += answer.aligned and answer.start != answer_start
                    unaligned += not answer.aligned
                    answers.append(answer)
                examples.append(QAExample(id=qid, question=question, context=context, answers=answers,
                                          is_impossible=impossible, title=title if isinstance(title, str) else "",
                                          source=f"{path}: {qa_path}"))
    if not examples:
        raise OneBertError(f"{path}: no questions in `data`")
    report_alignment(path, examples, moved, unaligned)
    return examples


def report_alignment(path: str | Path, examples: Sequence[QAExample], moved: int, unaligned: int) -> None:
    """Warn how many answers were not at their answer_start (moved, or kept for evaluation only)."""
    if moved or unaligned:
        untrainable = sum(1 for e in examples if not e.is_impossible and e.training_answer is None)
        logger.warning("%s: %d answer(s) not at their answer_start: %d found within %d characters and moved, "
                       "%d not found (kept for evaluation, skipped in training; %d question(s) have no usable "
                       "answer for training)", path, moved + unaligned, moved, MAX_ANSWER_SHIFT, unaligned,
                       untrainable)


def align_answer(context: str, text: str, start: int) -> SquadAnswer:
    if text and context[start:start + len(text)] == text and start >= 0:
        return SquadAnswer(text, start, True)
    if text:
        low = max(0, start - MAX_ANSWER_SHIFT)
        # max(0, ...): a very negative answer_start must not become a slice from the end of the context
        window = context[low:max(0, start + len(text) + MAX_ANSWER_SHIFT)]
        found = [low + m.start() for m in re.finditer(re.escape(text), window)]
        if found:
            return SquadAnswer(text, min(found, key=lambda s: (abs(s - start), s)), True)
    return SquadAnswer(text, start, False)


def _expect(path: Path, value: Any, kind: type | tuple[type, ...], where: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = " or ".join(_json_type(k) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise OneBertError(f"{path}: {where or 'top level'}: expected {names}, found {_json_type(type(value))}")


def _field(path: Path, parent: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(parent, dict):
        raise OneBertError(f"{path}: {where or 'top level'}: expected an object, found {_json_type(type(parent))}")
    location = f"{where}.{key}" if where else key
    if key not in parent:
        raise OneBertError(f"{path}: {location}: missing")
    value = parent[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = " or ".join(_json_type(k) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise OneBertError(f"{path}: {location}: expected {names}, found {_json_type(type(value))}")
    return value


def _first_clause(exc: BaseException) -> str:
    return str(exc).split(";")[0]


def _names(names: Sequence[Any], most: int = 12) -> str:
    """Column or field names for a one-line message: a name with a line break or control character is
    quoted, long names are cut and long lists shortened."""
    shown = [name if isinstance(name, str) and name.isprintable() and len(name) <= 40 else show_value(name, 40)
             for name in list(names)[:most]]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _json_type(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object",
            bool: "true/false", type(None): "null"}.get(kind, kind.__name__)
