"""Fuzzing every reader: random and mutated files give a correct parse or a one-line error naming the file.

Every property feeds one reader random bytes, or a valid file mutated (bytes flipped, the file cut,
tabs / newlines / quotes / NUL / odd Unicode / 4400-digit numbers inserted; in JSON also values of
the wrong type, fields removed or added, huge and non-finite numbers) and accepts two outcomes only:

- a parse whose invariants hold: nothing lost (examples + reported skipped lines == data lines,
  CoNLL tokens == token lines, JSONL documents + counted bad records == records), labels in the
  label set, every SQuAD answer at its offset, configs and option values that round-trip, task
  texts free of lone surrogates (a JSON "\ud800" escape; the tokenizer cannot take it);
- a `OneBertError` whose message is one line and names the file.

Any other exception fails, and so does a reader still running after TIME_LIMIT seconds; hypothesis
then shrinks the input to a minimal failing one. Inputs are derandomized (the same in every run, so
the suite cannot flake); `ONEBERT_FUZZ_EXAMPLES=N` runs N random inputs per property instead.
`pytest -s` prints how many inputs each reader was given.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import csv
import gzip
import io
import json
import logging
import math
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from onebert.errors import OneBertError

TIME_LIMIT = 10.0  # seconds per input; the readers take milliseconds
_LONG_RUN = int(os.environ.get("ONEBERT_FUZZ_EXAMPLES", "0"))
TRIED: collections.Counter[str] = collections.Counter()


def fuzz(examples: int):
    """Hypothesis settings for one property: `examples` derandomized inputs (or ONEBERT_FUZZ_EXAMPLES random)."""
    return settings(max_examples=_LONG_RUN or examples, derandomize=not _LONG_RUN, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def report_inputs_tried():
    yield
    print("\ninputs tried per reader: " + ", ".join(f"{name} {count}" for name, count in sorted(TRIED.items())))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


class ReaderHung(BaseException):
    """A BaseException, so no `except Exception` inside a reader can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float = TIME_LIMIT):
    def expire(signum, frame):
        raise ReaderHung(f"reader still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_or_refuse(name: str, read, path: Path):
    """read() under the time limit: its result, or None after a one-line OneBertError naming `path`."""
    TRIED[name] += 1
    # hypothesis prints the failing input itself; this environment's hypothesis prints blanks, so say it here
    for file in ([path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []):
        if file.is_file():
            note(f"{file.name}: {file.read_bytes()[:5000]!r}")
    with time_limit():
        try:
            return read()
        except OneBertError as exc:
            assert_one_line_naming(str(exc), path)
            return None


def assert_one_line_naming(message: str, path: Path) -> None:
    assert len(message.splitlines()) == 1 and "\r" not in message, f"not one line: {message!r}"
    assert str(path) in message or path.name in message, f"does not name {path}: {message!r}"
    assert len(message) < 2000, f"message of {len(message)} characters"


def assert_encodable(*texts: str | None) -> None:
    """What a reader returns is real text: no lone surrogate, which the tokenizer (and UTF-8) refuse."""
    for text in texts:
        if text is not None:
            text.encode("utf-8")


@contextlib.contextmanager
def captured_warnings(logger_name: str):
    """Messages logged by one module (hypothesis forbids function-scoped caplog inside a property)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger(logger_name)
    handler = Collect(level=logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# ----------------------------------------------------------------------------- mutation strategies

INSERTS = [b"\t", b"\n", b"\r", b"\r\n", b"\n\n", b'"', b"'", b"\x00", b",", b"\\", b"{", b"}", b"[", b"]", b":",
           b" ", b"#", b"-", b"\xef\xbb\xbf", "é".encode(), "\u2028".encode(), "\x85".encode(), "\u200b".encode(),
           "\x1c".encode(), "😀".encode(), "漢字".encode(), b"\xff", b"\xc3", b"\xed\xa0\x80", b"-DOCSTART- O\n",
           b"B-PER", b"I-", b"NaN", b"-1", b"1e999", b"9" * 4400, b"[" * 3000, b"true", b"null"]
# Leaves json.dumps cannot write (it refuses ints of > 4300 digits), spliced into the text afterwards.
_SPLICED = {'"<huge int>"': "9" * 4400, '"<deep list>"': "[" * 3000 + "]" * 3000}


@st.composite
def mutated(draw, seeds: list[bytes], specials: list[bytes] = (), inserts: list[bytes] = INSERTS) -> bytes:
    """A seed with 1-4 byte-level mutations: flip, cut, insert, delete, duplicate.

    `specials` are the format's own separators and markers; a third of the insertions use them,
    so that the mutations that matter (a tab in a TSV row, a quote in CSV) are not left to chance.
    """
    data = bytearray(draw(st.sampled_from(seeds)))
    insertion = st.sampled_from(inserts) | st.binary(min_size=1, max_size=6)
    if specials:
        insertion = st.sampled_from(list(specials)) | insertion
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "cut", "insert", "insert", "delete", "duplicate")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(insertion)
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 24))]
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 40))]
    return bytes(data)


JSON_LEAVES = (st.none() | st.booleans() | st.integers(-200, 200) | st.integers(-2**70, 2**70)
               | st.sampled_from([10**300, -1, 0, 2**63, 1e308]) | st.sampled_from(["<huge int>", "<deep list>"])
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
               | st.sampled_from(["", "\n", "a\tb", "\u2028", "\x00", "[PAD]", "gelu", "B-PER", "0", "1e5",
                                  "a\ud800", "\udfff"]))  # lone surrogates: json.dumps writes them as \u escapes


def _json_containers(children):
    return st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)


JSON_VALUES = st.recursive(JSON_LEAVES, _json_containers, max_leaves=6)


def _slots(node):
    """(container, key) for every value inside a JSON document."""
    if isinstance(node, dict):
        for key in list(node):
            yield node, key
            yield from _slots(node[key])
    elif isinstance(node, list):
        for index in range(len(node)):
            yield node, index
            yield from _slots(node[index])


@st.composite
def json_mutated(draw, seeds: list, as_lines: bool = False) -> bytes:
    """A JSON seed with 1-3 structural mutations: a value of another type, a field removed, a field added.

    as_lines: the seed is a list written one element per line (JSONL).
    """
    document = copy.deepcopy(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(document))
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(("replace", "replace", "remove", "add")))
        if op == "replace":
            container[key] = draw(JSON_VALUES)
        elif op == "remove":
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.text(max_size=10))] = draw(JSON_VALUES)
        else:
            container.insert(key, draw(JSON_VALUES))
    ascii_only = draw(st.booleans())
    if as_lines and isinstance(document, list):
        text = "".join(json.dumps(item, ensure_ascii=ascii_only) + "\n" for item in document)
    else:
        text = json.dumps(document, ensure_ascii=ascii_only)
    for placeholder, value in _SPLICED.items():
        text = text.replace(placeholder, value)
    return text.encode("utf-8", "surrogatepass")


def either(first, second):
    """Half from each strategy (`a | b` would flatten nested one_of's and dilute a small branch)."""
    return st.booleans().flatmap(lambda pick: first if pick else second)


def fuzzed(seeds: list[bytes], specials: list[bytes] = (), inserts: list[bytes] = INSERTS, max_random: int = 300):
    """Three parts mutated seeds, one part random bytes."""
    mutation = mutated(seeds, specials, inserts)
    return st.one_of(mutation, mutation, mutation, st.binary(max_size=max_random))


def file_text(data: bytes) -> str:
    """What a reader that accepted `data` saw: UTF-8 without the BOM."""
    return data.decode("utf-8").removeprefix("\ufeff")


def split_lines(text: str) -> list[str]:
    """Lines as the task readers define them: split at \\n only, one trailing \\r dropped."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def line_of(source: str) -> int:
    return int(re.search(r": line (\d+)$", source).group(1))


# ----------------------------------------------------------------------------- classification tables

from onebert.tasks.readers import (build_label_list, label_ids, read_classification, read_conll,  # noqa: E402
                                read_squad)

TSV_SEEDS = [
    b"sentence\tlabel\nit 's a charming journey .\t1\nunflinchingly bleak\t0\n\nhide new secretions\t0\n",
    "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t702876\t702977\tAmrozi accused his brother , "
    "\"the witness\" .\tReferring to him as only \" the witness \" .\r\n0\t2108705\t2108831\tYucaipa owned "
    "Dominick 's\tYucaipa bought Dominick 's in 1995 .\r\n".encode(),
    b"good film\t1\nbad film\t0\nso-so \"film\"\t1\n",
    b"sentence1\tsentence2\tscore\nA plane takes off.\tAn air plane is taking off.\t5.000\nA man.\tA cat.\t0.250\n",
]
CSV_SEEDS = [
    b'id,premise,hypothesis,label\r\n1,"A man, a plan","He said ""hi""\non two lines",entailment\r\n2,x,y,neutral\r\n',
    b"text,label\nfine,pos\n\"multi\nline\",neg\n\n,neg\n",
]
JSONL_SEEDS = [
    b'{"sentence": "fine", "label": 1}\n\n{"sentence": "meh", "label": 0}\n{"sentence": "ok \\u00e9", "label": 1}\n',
    b'{"premise": "a", "hypothesis": "b", "label": "entailment"}\r\n{"premise": "c", "hypothesis": "d", '
    b'"label": "neutral", "idx": [1, 2]}\n',
]


def check_tsv(data: bytes, examples, warnings: list[str]) -> None:
    lines = split_lines(file_text(data))
    data_lines = [n for n, line in enumerate(lines, start=1) if line.strip()]
    read = [line_of(e.source) for e in examples]
    blank = sum(int(m.group(1)) for w in warnings for m in [re.search(r"skipped (\d+) blank", w)] if m)
    header = data_lines[:1] if data_lines and data_lines[0] not in read else []
    # nothing lost: every non-blank line is the header or an example; every blank line is reported
    assert read == [n for n in data_lines if n not in header]
    assert blank == len(lines) - len(data_lines)
    width = len(lines[data_lines[0] - 1].split("\t"))
    for example in examples:
        line = lines[line_of(example.source) - 1]
        assert len(line.split("\t")) == width, "a row of another width was read (its columns shifted)"
        assert example.text in line and example.label and example.label in line
        assert example.text_pair is None or example.text_pair in line


def check_labels(examples) -> None:
    label_list = build_label_list(examples)
    assert [label_list[i] for i in label_ids(examples, label_list)] == [e.label for e in examples]


@fuzz(300)
@given(data=fuzzed(TSV_SEEDS, [b"\t", b"\n", b"\r\n", b'"', b" \t ", b"\t\t"]))
def test_tsv_reader_parses_or_refuses_and_accounts_for_every_line(work, data):
    path = work / "fuzz.tsv"
    path.write_bytes(data)
    with captured_warnings("onebert.tasks.readers") as warnings:
        examples = parse_or_refuse("classification TSV", lambda: read_classification(path), path)
    if examples is not None:
        check_tsv(data, examples, warnings)
        check_labels(examples)


@fuzz(150)
@given(data=fuzzed(CSV_SEEDS, [b",", b'"', b'""', b"\n", b"\r", b",,"]))
def test_csv_reader_parses_or_refuses_and_accounts_for_every_record(work, data):
    path = work / "fuzz.csv"
    path.write_bytes(data)
    with captured_warnings("onebert.tasks.readers") as warnings:
        examples = parse_or_refuse("classification CSV", lambda: read_classification(path), path)
    if examples is None:
        return
    records = list(csv.reader(io.StringIO(file_text(data), newline="")))
    blank = sum(1 for r in records if not any(f.strip() for f in r))
    reported = sum(int(m.group(1)) for w in warnings for m in [re.search(r"skipped (\d+) blank", w)] if m)
    data_records = len(records) - blank
    assert reported == blank and len(examples) in (data_records, data_records - 1)  # - 1: the header
    fields = {f.strip() for record in records for f in record}
    assert all(e.text in fields and e.label and e.label in fields for e in examples)
    check_labels(examples)


@fuzz(200)
@given(data=either(fuzzed(JSONL_SEEDS, [b'"', b"{", b"}", b",", b":", b"\n", b"\\"], max_random=200),
                  json_mutated([[json.loads(line) for line in s.splitlines() if line.strip()] for s in JSONL_SEEDS],
                               as_lines=True)))
def test_jsonl_reader_parses_or_refuses_and_reads_every_record(work, data):
    path = work / "fuzz.jsonl"
    path.write_bytes(data)
    examples = parse_or_refuse("classification JSONL", lambda: read_classification(path), path)
    if examples is None:
        return
    lines = split_lines(file_text(data))
    assert [line_of(e.source) for e in examples] == [n for n, line in enumerate(lines, start=1) if line.strip()]
    for example in examples:
        assert_encodable(example.text, example.text_pair, example.label)
        record = json.loads(lines[line_of(example.source) - 1])
        values = [str(v) for v in record.values() if isinstance(v, (str, int, float))]
        values += [str(v).lower() for v in record.values() if isinstance(v, bool)]
        assert example.text in [v.strip() for v in values] and example.label in [v.strip() for v in values]
    check_labels(examples)


TABLE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"), max_size=25)


@fuzz(150)
@given(rows=st.lists(st.tuples(TABLE_TEXT, TABLE_TEXT, st.sampled_from(["0", "1", "pos", "neg", "été", "-3"])),
                     min_size=1, max_size=12),
       fmt=st.sampled_from(["tsv", "csv", "jsonl"]), pairs=st.booleans(), crlf=st.booleans(), bom=st.booleans())
def test_any_valid_table_round_trips_exactly(work, rows, fmt, pairs, crlf, bom):
    """Write rows with the format's own writer, read them back: the same texts, pairs and labels."""
    header = ["sentence1", "sentence2", "label"] if pairs else ["sentence", "label"]
    table = [[a, b, label] if pairs else [a, label] for a, b, label in rows]
    end = "\r\n" if crlf else "\n"
    if fmt == "tsv":
        text = "".join("\t".join(row) + end for row in [header, *table])
    elif fmt == "csv":
        # Python 3.10's csv module can neither write nor read NUL (3.11 can); the reader refuses it there in one
        # line ("line contains NUL"), which the CSV fuzz test above accepts.
        assume(sys.version_info >= (3, 11) or not any("\x00" in cell for row in table for cell in row))
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator=end).writerows([header, *table])
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(dict(zip(header, row))) + end for row in table)
    path = work / f"table.{fmt}"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    examples = parse_or_refuse("classification round trip", lambda: read_classification(path), path)
    assert examples is not None, "a valid table was refused"
    expected = [(row[0].strip(), row[1].strip() if pairs else None, row[-1]) for row in table]
    assert [(e.text, e.text_pair, e.label) for e in examples] == expected
    check_labels(examples)


# hypothesis never draws surrogates itself: pieces of text with code points U+D800-U+DFFF between them
SURROGATE_TEXT = st.lists(TABLE_TEXT | st.integers(0xD800, 0xDFFF).map(chr), max_size=4).map("".join)


@fuzz(100)
@given(rows=st.lists(st.tuples(SURROGATE_TEXT, st.sampled_from(["0", "1"])), min_size=1, max_size=6),
       squad=st.booleans())
def test_json_texts_with_lone_surrogates_are_refused_at_the_first_one(work, rows, squad):
    """json.dumps writes a lone surrogate as a valid \\ud800 escape; the readers must name its line / path."""
    from onebert.text_input import lone_surrogate

    # A high and a low surrogate side by side are written as a pair of escapes, which JSON reads as one character.
    rows = [(json.loads(json.dumps(text)), label) for text, label in rows]
    first_bad = next((i for i, (text, _) in enumerate(rows) if lone_surrogate(text) is not None), None)
    if squad:
        path = work / "surrogates.json"
        qas = [{"id": str(i), "question": text, "answers": []} for i, (text, _) in enumerate(rows)]
        path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": qas}]}]}), encoding="ascii")
        read = lambda: read_squad(path)  # noqa: E731
        where = f"data[0].paragraphs[0].qas[{first_bad}].question: lone surrogate"
    else:
        path = work / "surrogates.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows), encoding="ascii")
        read = lambda: read_classification(path)  # noqa: E731
        where = f"line {first_bad + 1 if first_bad is not None else 0}: text: lone surrogate"
    try:
        examples = read()
    except OneBertError as exc:
        assert_one_line_naming(str(exc), path)
        assert first_bad is not None and where in str(exc), str(exc)
        return
    assert first_bad is None, "a lone surrogate was read as text"
    texts = [e.question for e in examples] if squad else [e.text for e in examples]
    assert texts == [text if squad else text.strip() for text, _ in rows]


# ----------------------------------------------------------------------------- CoNLL

CONLL_SEEDS = [
    b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\ncall NN I-NP O\n. . O O\n"
    b"\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n",
    b"John\tI-PER\nSmith\tI-PER\nand\tO\nMary\tI-PER\n\nParis\tI-LOC\n",  # IOB1
    b"Der\tO\nKanzler\tO\nin\tO\nBerlin\tB-LOC\r\n\r\nAngela\tB-PER\nMerkel\tI-PER\n",
]
_TAG = re.compile(r"^(O|[BIES]-\S.*)$")


def conll_token_lines(data: bytes) -> list[tuple[int, str]]:
    """(line number, word) of every token line: non-blank and not -DOCSTART-."""
    tokens = []
    for number, line in enumerate(split_lines(file_text(data)), start=1):
        if not line.strip():
            continue
        word = line.split("\t")[0].strip() if "\t" in line else line.split()[0]
        if word != "-DOCSTART-":
            tokens.append((number, word))
    return tokens


@fuzz(250)
@given(data=fuzzed(CONLL_SEEDS, [b"\t", b" ", b"\n", b"\n\n", b"-DOCSTART-", b"I-", b"B-", b"O"], max_random=200),
       scheme=st.sampled_from(["auto", "iob1", "iob2"]))
def test_conll_reader_parses_or_refuses_and_reads_every_token_line(work, data, scheme):
    path = work / "fuzz.conll"
    path.write_bytes(data)
    examples = parse_or_refuse("CoNLL", lambda: read_conll(path, scheme=scheme), path)
    if examples is None:
        return
    assert [w for e in examples for w in e.words] == [w for _, w in conll_token_lines(data)]
    for example in examples:
        assert example.tags is not None and len(example.tags) == len(example.words)
        assert all(_TAG.match(tag) for tag in example.tags)
        if scheme != "iob2":  # after IOB1 -> IOB2 no entity starts with I-
            previous = ["O", *example.tags]
            assert not any(t.startswith("I-") and p[2:] != t[2:] for p, t in zip(previous, example.tags))


CONLL_WORD = st.text(st.characters(blacklist_categories=("Z", "Cc", "Cs")), min_size=1, max_size=8).filter(
    lambda w: w != "-DOCSTART-")


@st.composite
def iob2_sentence(draw) -> list[tuple[str, str]]:
    words = draw(st.lists(CONLL_WORD, min_size=1, max_size=8))
    tags, previous = [], "O"
    for _ in words:
        kind = draw(st.sampled_from(["O", "B", "I"] if previous != "O" else ["O", "B"]))
        tag = "O" if kind == "O" else f"{kind}-{previous[2:] if kind == 'I' else draw(st.sampled_from(['PER', 'LOC']))}"
        tags.append(tag)
        previous = tag
    return list(zip(words, tags))


@fuzz(100)
@given(sentences=st.lists(iob2_sentence(), min_size=1, max_size=5), tabs=st.booleans())
def test_any_valid_iob2_conll_file_round_trips_exactly(work, sentences, tabs):
    separator = "\t" if tabs else " "
    path = work / "valid.conll"
    path.write_text("\n\n".join("\n".join(f"{w}{separator}{t}" for w, t in s) for s in sentences) + "\n",
                    encoding="utf-8")
    examples = parse_or_refuse("CoNLL round trip", lambda: read_conll(path), path)
    assert [list(zip(e.words, e.tags)) for e in examples] == sentences


# ----------------------------------------------------------------------------- SQuAD

SQUAD_SEEDS = [
    {"version": "v2.0", "data": [
        {"title": "Normans", "paragraphs": [
            {"context": "The Normans were the people who gave their name to Normandy, a region in France.",
             "qas": [{"id": "q1", "question": "In what country is Normandy?",
                      "answers": [{"text": "France", "answer_start": 75}, {"text": "France", "answer_start": 70}]},
                     {"id": "q2", "question": "Who gave their name?", "is_impossible": False,
                      "answers": [{"text": "The Normans", "answer_start": 0}]},
                     {"id": "q3", "question": "When?", "is_impossible": True, "answers": [],
                      "plausible_answers": [{"text": "Normandy", "answer_start": 52}]}]}]},
        {"title": "é", "paragraphs": [{"context": "Ünïcode ☃ context", "qas": [
            {"id": 7, "question": "What?", "answers": [{"text": "☃", "answer_start": 8}]}]}]}]},
]


@fuzz(250)
@given(data=json_mutated(SQUAD_SEEDS) | mutated([json.dumps(s).encode() for s in SQUAD_SEEDS]),
       labelled=st.booleans())
def test_squad_reader_parses_or_refuses_and_every_answer_is_at_its_offset(work, data, labelled):
    path = work / "fuzz.json"
    path.write_bytes(data)
    examples = parse_or_refuse("SQuAD", lambda: read_squad(path, labelled=labelled), path)
    if examples is None:
        return
    root = json.loads(file_text(data))
    questions = [qa for article in root["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    assert len(examples) == len(questions) and len({e.id for e in examples}) == len(examples)
    for example, qa in zip(examples, questions):
        assert_encodable(example.id, example.question, example.context, example.title, *example.answer_texts)
        assert example.id == str(qa["id"]) and example.question == qa["question"]
        assert not (example.is_impossible and example.answers)
        raw_starts = [a["answer_start"] for a in qa.get("answers", [])]
        assert len(example.answers) == len(raw_starts)
        for answer, raw_start in zip(example.answers, raw_starts):
            if answer.aligned:
                assert example.context[answer.start:answer.start + len(answer.text)] == answer.text
                assert answer.text and abs(answer.start - raw_start) <= 20


# ----------------------------------------------------------------------------- config.json

from onebert.model.config import _MAX_SIZES, MAX_PARAMETERS, BertConfig  # noqa: E402

CONFIG_SEEDS = [
    {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False,
     "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02,
     "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
     "num_attention_heads": 12, "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute",
     "transformers_version": "4.8.2", "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522},
    {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37, "vocab_size": 99,
     "id2label": {"0": "NEG", "1": "POS"}, "label2id": {"NEG": 0, "POS": 1},
     "problem_type": "single_label_classification",
     "classifier_dropout": None, "onebert": {"task": "classification"}},
]


@fuzz(300)
@given(data=json_mutated(CONFIG_SEEDS) | mutated([json.dumps(c, indent=2).encode() for c in CONFIG_SEEDS]))
def test_config_loader_parses_or_refuses_and_accepts_only_buildable_sizes(work, data):
    path = work / "config.json"
    path.write_bytes(data)
    config = parse_or_refuse("config.json", lambda: BertConfig.load(path), path)
    if config is None:
        return
    for name, largest in _MAX_SIZES.items():
        value = getattr(config, name)
        assert type(value) is int and 1 <= value <= largest
    assert config.hidden_size % config.num_attention_heads == 0 and config.estimated_parameters() <= MAX_PARAMETERS
    assert all(0 <= p < 1 for p in (config.hidden_dropout_prob, config.attention_probs_dropout_prob))
    assert math.isfinite(config.initializer_range) and 0 <= config.pad_token_id < config.vocab_size
    assert config.id2label is None or sorted(config.id2label) == list(range(config.num_labels))
    assert BertConfig.from_dict(config.to_dict()) == config  # what was read writes back the same


# ----------------------------------------------------------------------------- tokenizer files

from onebert.tokenizer import SPECIAL_TOKENS, Tokenizer  # noqa: E402

VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", ",", ".", "a", "the", "cat", "sat", "on",
         "mat", "##s", "##ed", "un", "##able", "é", "漢", "hello", "world"]
VOCAB_SEEDS = ["".join(t + "\n" for t in VOCAB).encode(), "\ufeff".encode() + "\r\n".join(VOCAB).encode()]
SAMPLE_TEXT = "The cats sat on the mat, unable! Héllo 漢字 world [MASK] \x00\u200b"


def check_tokenizer(tok: Tokenizer) -> None:
    ids = tok.encode_ids([SAMPLE_TEXT])[0]
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert all(0 <= i < tok.vocab_size for i in tok.special_token_ids)
    assert len(tok.word_start_mask()) == tok.vocab_size
    tok.decode(ids)
    batch = tok([SAMPLE_TEXT, "a"], ["cat", ""], max_length=16)
    assert int(batch["input_ids"].max()) < tok.vocab_size


@fuzz(200)
@given(data=fuzzed(VOCAB_SEEDS, [b"\n", b"\r", b"[PAD]", b"[UNK]\n", b"##", b"\n\n"], max_random=120))
def test_vocab_txt_loads_or_refuses_and_ids_are_line_numbers(work, data):
    directory = work / "vocab_tok"
    directory.mkdir(exist_ok=True)
    (directory / "vocab.txt").write_bytes(data)
    tok = parse_or_refuse("tokenizer vocab.txt", lambda: Tokenizer.from_pretrained(directory), directory / "vocab.txt")
    if tok is None:
        return
    lines = split_lines(data.decode("utf-8-sig"))
    assert tok.vocab_size == len(lines)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [lines.index(t) for t in SPECIAL_TOKENS]
    check_tokenizer(tok)


def _tokenizer_json_seed() -> dict:
    import tokenizers

    from onebert.tokenizer import _bert_backend
    from tokenizers.models import WordPiece

    backend = _bert_backend(WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"), lowercase=True,
                            tokenize_chinese_chars=True, strip_accents=None)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    assert isinstance(backend, tokenizers.Tokenizer)
    return json.loads(backend.to_str())


TOKENIZER_JSON_SEEDS = [_tokenizer_json_seed()]
TOKENIZER_CONFIG_SEEDS = [{"do_lower_case": True, "model_max_length": 512, "tokenize_chinese_chars": True,
                           "strip_accents": None, "tokenizer_class": "BertTokenizer"}]


@fuzz(150)
@given(data=json_mutated(TOKENIZER_JSON_SEEDS) | mutated([json.dumps(TOKENIZER_JSON_SEEDS[0]).encode()]),
       config=st.none() | json_mutated(TOKENIZER_CONFIG_SEEDS))
def test_tokenizer_json_loads_or_refuses_and_every_id_fits_the_vocabulary(work, data, config):
    directory = work / "json_tok"
    directory.mkdir(exist_ok=True)
    (directory / "tokenizer.json").write_bytes(data)
    (directory / "tokenizer_config.json").unlink(missing_ok=True)
    if config is not None:
        (directory / "tokenizer_config.json").write_bytes(config)
    tok = parse_or_refuse("tokenizer.json", lambda: Tokenizer.from_pretrained(directory), directory)
    if tok is not None:
        assert isinstance(tok.do_lower_case, bool) and 0 < tok.model_max_length < 10**6
        check_tokenizer(tok)


# ----------------------------------------------------------------------------- CLI option files

from onebert.cli import build_parser, load_option_file  # noqa: E402

_, COMMAND_PARSERS = build_parser()
OPTION_SEEDS = {
    ".yaml": [b"corpus: [a.txt, b/]\noutput: data\nvocab-size: 30522\nshard-size: 4M\nseed: 7\nformat: prose\n"
              b"no-progress: true\nshort_seq_prob: 0.1\n",
              b"# run\ndata: d\nmodel-config: tiny\nmax-time: 1h30m\nlr: 1e-4\nbatch-size: 8\nresume:\nbf16: false\n"],
    ".toml": [b'corpus = ["a.txt"]\noutput = "data"\nvocab-size = 100\nseed = 7\n',
              b'data = "d"\nmax-steps = 10\nlr = 0.001\nprecision = "fp32"\n'],
    ".json": [b'{"corpus": ["a.txt"], "output": "data", "tokenizer": "tok", "validation-fraction": 0.01}',
              b'{"data": "d", "max_steps": 10, "warmup-ratio": 0.1, "device": "cpu"}'],
}
OPTION_NAMES = sorted({a.option_strings[-1][2:] for p in ("prepare", "pretrain") for a in COMMAND_PARSERS[p]._actions
                       if a.option_strings and a.dest not in ("help", "config")})


def check_option_values(values: dict, parser) -> None:
    """Every value is one argparse could have produced from text: converting its text again changes nothing."""
    actions = {a.dest: a for a in parser._actions}
    for dest, value in values.items():
        action = actions[dest]
        if action.nargs == 0:  # store_true / store_false
            assert isinstance(value, bool)
            continue
        items = value if action.nargs in ("+", "*") else [value]
        assert isinstance(items, list) and (items or action.nargs == "*")
        for item in items:
            again = action.type(str(item)) if action.type else str(item)
            assert again == item or (isinstance(item, float) and math.isnan(item) and math.isnan(again))
            assert action.choices is None or item in action.choices


@st.composite
def option_documents(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(sorted(OPTION_SEEDS)))
    if draw(st.booleans()):
        return suffix, draw(mutated(OPTION_SEEDS[suffix]))
    keys = st.sampled_from(OPTION_NAMES + [n.replace("-", "_") for n in OPTION_NAMES]) | st.text(max_size=10)
    document = draw(st.dictionaries(keys, JSON_VALUES, max_size=5))
    if suffix == ".toml":  # TOML has no null and no mixed nesting of every kind: write what it can
        document = {k: v for k, v in document.items()
                    if isinstance(v, (str, bool)) or isinstance(v, int) and abs(v) < 2**63}
        text = "".join(f"{json.dumps(k)} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}\n"
                       for k, v in document.items())
        return suffix, text.encode("utf-8", "surrogatepass")
    if suffix == ".yaml":
        import yaml

        return suffix, yaml.safe_dump(document, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")
    return suffix, json.dumps(document).encode("utf-8", "surrogatepass")


@fuzz(300)
@given(document=option_documents(), command=st.sampled_from(["prepare", "pretrain"]))
def test_option_file_loads_or_refuses_and_values_are_what_the_command_line_would_give(work, document, command):
    suffix, data = document
    path = work / f"options{suffix}"
    path.write_bytes(data)
    parser = COMMAND_PARSERS[command]
    values = parse_or_refuse("CLI option file", lambda: load_option_file(str(path), parser), path)
    if values is not None:
        check_option_values(values, parser)


# ----------------------------------------------------------------------------- pretraining corpus

from onebert.data.corpus import CorpusSummary, has_text, read_documents  # noqa: E402

LINES_SEEDS = [b"The cat sat on the mat.\nIt was happy.\n\nA second document starts here.\nIt ends here.\n",
               "\ufeffCaf\u00e9 culture.\r\nWindows line ends.\r\n\r\n\u2028Odd separators\x85 inside.\r\n"
               "* * *\n".encode()]
PROSE_SEEDS = [
    b"CHAPTER I.\n\nIt was the best of times, it was the worst\nof times. Mr. Smith agreed.\n\n\n\nCHAPTER II.\n"
    b"The Title\n\nAnother chapter begins, with wrapped\nlines and more words. Then it ends!\n",
    b"*** START OF THE PROJECT GUTENBERG EBOOK X ***\nSome text of the book.\nMore text.\n"
    b"*** END OF THE PROJECT GUTENBERG EBOOK X ***\nLicence.\n",
]
JSONL_CORPUS_SEEDS = [b'{"text": "First document. Two sentences."}\n{"text": "Second.\\n\\nNew paragraph."}\n'
                      b'{"title": "no text field"}\nnot json\n\n{"text": ""}\n']
# Deep nesting is left out here: it has its own test below.
CORPUS_INSERTS = [i for i in INSERTS if i != b"[" * 3000]
CORPUS_SPECIALS = [b"\n", b"\r", b"\r\n", b"\n\n", b"\x00", b". ", b"\xef\xbb\xbf"]


def corpus_pieces(data: bytes) -> list[str]:
    """The lines a corpus reader sees: UTF-8 with replacement, BOM dropped, split at \\r\\n, \\r and \\n."""
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    return re.split(r"\r\n|\r|\n", text)


def read_corpus(path: Path, format: str, name: str):
    summary = CorpusSummary()
    documents = parse_or_refuse(name, lambda: list(read_documents([path], format=format, summary=summary,
                                                                  warn=False)), path)
    if documents is not None:
        assert summary.documents == len(documents)
        for document in documents:
            assert document.units and all(u.strip() and has_text(u) and "\n" not in u for u in document.units)
    return documents, summary


def is_binary(data: bytes) -> bool:
    return b"\x00" in data[:8192]


@fuzz(200)
@given(data=fuzzed(LINES_SEEDS, CORPUS_SPECIALS, CORPUS_INSERTS, max_random=200), compress=st.booleans())
def test_corpus_lines_format_keeps_or_counts_every_line(work, data, compress):
    path = work / ("corpus.txt.gz" if compress else "corpus.txt")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    documents, summary = read_corpus(path, "lines", "corpus lines (+ .gz)")
    if documents is None:
        return
    if is_binary(data) or data.startswith(b"\x1f\x8b") and not compress:
        assert not documents
        return
    nonblank = [p for p in corpus_pieces(data) if p.strip()]
    kept = [u for d in documents for u in d.units]
    assert len(kept) + summary.units_without_text == len(nonblank)
    assert kept == [p.strip() for p in nonblank if has_text(p)]


@fuzz(200)
@given(data=fuzzed(PROSE_SEEDS + LINES_SEEDS, CORPUS_SPECIALS + [b"\n\n\n\nCHAPTER IV.\n\n"], CORPUS_INSERTS,
                   max_random=200))
def test_corpus_prose_format_keeps_words_in_order_and_counts_what_it_drops(work, data):
    path = work / "prose.txt"
    path.write_bytes(data)
    documents, summary = read_corpus(path, "prose", "corpus prose")
    if documents is None or is_binary(data):
        return
    kept = " ".join(u for d in documents for u in d.units).split()
    words = " ".join(corpus_pieces(data)).split()
    it = iter(words)
    assert all(word in it for word in kept), "words reordered or invented"  # kept is a subsequence of words
    dropped = summary.headings_removed + summary.units_without_text + summary.boilerplate_lines
    assert kept == words or dropped, "words dropped without being counted"


@fuzz(200)
@given(data=fuzzed(JSONL_CORPUS_SEEDS, [b'"', b"{", b"}", b"\n", b"\r", b'"text"'], CORPUS_INSERTS, max_random=200))
def test_corpus_jsonl_reads_or_counts_every_record(work, data):
    path = work / "corpus.jsonl"
    path.write_bytes(data)
    documents, summary = read_corpus(path, "auto", "corpus JSONL")
    if documents is None or is_binary(data) or data.startswith(b"\x1f\x8b"):
        return
    records = [p for p in corpus_pieces(data) if p.strip()]
    with_text = len(documents) + summary.empty_documents  # (no record here is long enough to be cut)
    assert summary.invalid_json_lines + summary.records_without_text + with_text == len(records)


@fuzz(150)
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".txt", ".gz", ".jsonl", ".bin", ""]),
       format=st.sampled_from(["auto", "lines", "prose", "wikitext", "jsonl"]))
def test_corpus_reader_on_random_bytes_parses_or_refuses(work, data, suffix, format):
    path = work / f"random{suffix}"
    path.write_bytes(data)
    read_corpus(path, format, "corpus random bytes")


@fuzz(100)
@given(data=st.binary(min_size=1, max_size=300), cut=st.integers(0, 400))
def test_corpus_reader_on_corrupt_gzip_parses_or_refuses(work, data, cut):
    path = work / "corrupt.txt.gz"
    packed = bytearray(gzip.compress(LINES_SEEDS[0] * 3, mtime=0))
    packed[cut % len(packed)] ^= data[0] or 1
    path.write_bytes(bytes(packed[:max(2, len(packed) - len(data) % 7)]))
    read_corpus(path, "auto", "corpus corrupt .gz")


ENTRY_NAME = st.text(st.characters(whitelist_categories=("Ll", "Nd")), min_size=1, max_size=6)


@fuzz(60)
@given(tree=st.lists(st.tuples(st.lists(st.sampled_from(["d", "e", ".hidden"]), max_size=2),
                               st.booleans(), ENTRY_NAME, st.sampled_from(LINES_SEEDS + [b"\x00binary"])),
                     min_size=1, max_size=8))
def test_corpus_directory_reads_every_visible_file_and_counts_hidden_and_binary_ones(tmp_path_factory, tree):
    root = tmp_path_factory.mktemp("tree")
    for folders, hidden, name, content in tree:
        path = root.joinpath(*folders, ("." if hidden else "") + name + ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    files = [p for p in root.rglob("*") if p.is_file()]
    visible = [p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    hidden_dirs = {d for p in files for d in p.relative_to(root).parents if d.name.startswith(".")
                   and not any(part.startswith(".") for part in d.parent.parts)}
    hidden_files = [p for p in files if p.name.startswith(".")
                    and not any(part.startswith(".") for part in p.relative_to(root).parent.parts)]
    summary = CorpusSummary()
    documents = parse_or_refuse("corpus directory", lambda: list(read_documents([root], summary=summary, warn=False)),
                                root)
    if not visible:
        assert documents is None  # "directory holds no files"
        return
    binary = sorted(str(p) for p in visible if p.read_bytes().startswith(b"\x00"))
    assert sorted(summary.binary_files) == binary and summary.files == len(visible) - len(binary)
    assert summary.hidden_files_skipped == len(hidden_files) + len(hidden_dirs)


def test_corpus_jsonl_line_nested_too_deep_is_counted_as_invalid(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b"[" * 3000 + b"\n" + b'{"text": "A real document."}\n')
    summary = CorpusSummary()
    documents = list(read_documents([path], summary=summary, warn=False))
    assert len(documents) == 1 and summary.invalid_json_lines == 1


def test_corpus_directory_with_a_fifo_does_not_hang(tmp_path):
    (tmp_path / "a.txt").write_text("A sentence.\n")
    os.mkfifo(tmp_path / "pipe")
    summary = CorpusSummary()
    with time_limit(1):
        try:
            list(read_documents([tmp_path], summary=summary, warn=False))
        except OneBertError as exc:
            assert "pipe" in str(exc)
        except ReaderHung as exc:
            raise AssertionError("read_documents blocked on a FIFO") from exc
