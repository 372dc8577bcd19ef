"""Corpus reading: sentence splitting, every input layout, and bad input counted rather than crashing."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from onebert.data.corpus import (MAX_LINE_BYTES, CorpusSummary, detect_format, is_heading, read_documents,
                                 resolve_corpus_paths, split_sentences)
from onebert.errors import OneBertError


def read(paths, **kwargs):
    summary = CorpusSummary()
    docs = list(read_documents([str(p) for p in paths], summary=summary, **kwargs))
    return docs, summary


# ---------------------------------------------------------------------------------------------- splitting

@pytest.mark.parametrize("text, expected", [
    ("Mr. Smith went to Washington. He arrived at 3.15 p.m. on Monday.",
     ["Mr. Smith went to Washington.", "He arrived at 3.15 p.m. on Monday."]),
    ("Dr. Watson met Mrs. Hudson at St. Paul's. They talked.",
     ["Dr. Watson met Mrs. Hudson at St. Paul's.", "They talked."]),
    ("Some fruits, e.g. apples, are red. Others are not.", ["Some fruits, e.g. apples, are red.", "Others are not."]),
    ("He lived in the U.S. for years. Then he left.", ["He lived in the U.S. for years.", "Then he left."]),
    ("The Time Machine is by H. G. Wells. It is short.", ["The Time Machine is by H. G. Wells.", "It is short."]),
    ("Pi is about 3.14159. That is close.", ["Pi is about 3.14159.", "That is close."]),
    ("Wait... what was that? Nothing... Go on.", ["Wait... what was that?", "Nothing...", "Go on."]),
    ("“Stop!” he cried. “Why?” asked she.", ["“Stop!” he cried.", "“Why?” asked she."]),
    ('He said "Go." Then he left.', ['He said "Go."', "Then he left."]),
    ("See No. 5 in the list. No. I will not.", ["See No. 5 in the list.", "No.", "I will not."]),
    ("It was 1901. The war ended.", ["It was 1901.", "The war ended."]),
    ("one sentence without a full stop", ["one sentence without a full stop"]),
])
def test_sentence_splitter_handles_abbreviations_decimals_initials_ellipses_and_quotes(text, expected):
    assert split_sentences(text) == expected


def test_sentence_splitter_joins_hard_wrapped_whitespace():
    assert split_sentences("The cat\n  sat   on\tthe mat.  It slept.") == ["The cat sat on the mat.", "It slept."]


@pytest.mark.parametrize("line, heading", [
    ("CHAPTER IV.", True), ("Chapter 12", True), ("CHAPTER XIII. The Delights of Anticipation", True),
    ("STAVE ONE.", True), ("IV.", True), ("12", True), ("III. THE RED-HEADED LEAGUE", True), ("PREFACE", True),
    ("I am here.", False), ("Did.", False), ("Part of the city was dark.", False), ("Mix.", False),
])
def test_heading_rule(line, heading):
    assert is_heading(line) is heading


# ---------------------------------------------------------------------------------------------- formats

def test_lines_format_is_one_sentence_per_line_with_blank_lines_between_documents(tmp_path):
    f = tmp_path / "bert.txt"
    f.write_text("First sentence of doc one.\nSecond sentence.\n\n\nDoc two starts.\nIt ends here.\n\n")
    docs, summary = read([f], format="lines")
    assert [d.sentences() for d in docs] == [["First sentence of doc one.", "Second sentence."],
                                             ["Doc two starts.", "It ends here."]]
    assert docs[0].source == f"{f}:1"


def test_auto_detects_bert_layout_prose_and_paragraph_per_line(tmp_path):
    bert = "\n".join(f"This is sentence number {i}." for i in range(40))
    prose = "\n".join(["The quick brown fox jumped over the lazy", "dog and then it ran away into the",
                       "forest where nobody could find it. Then"] * 20)
    paragraphs = "\n\n".join(["It rained. We stayed in. Nobody came to visit us that day."] * 20)
    assert detect_format(tmp_path / "a.txt", bert) == "lines"
    assert detect_format(tmp_path / "a.txt", prose) == "prose"
    assert detect_format(tmp_path / "a.txt", paragraphs) == "prose"
    assert detect_format(tmp_path / "a.jsonl.gz", "") == "jsonl"
    assert detect_format(tmp_path / "w.raw", " = Title = \n The team won 3 @-@ 1 .\n = = Section = = \n") == "wikitext"


def test_prose_joins_wrapped_lines_and_splits_documents_at_chapters_and_large_gaps(tmp_path):
    body = ("It was a dark and stormy night; the rain fell in torrents, except at occasional\n"
            "intervals, when it was checked by a violent gust of wind. Mr. Holmes said nothing.\n\n") * 4
    text = ("CHAPTER I.\n\nThe Beginning\n\n" + body + "CHAPTER II.\n\n" + body + "\n\n\n\n" + body)
    f = tmp_path / "novel.txt"
    f.write_text(text)
    docs, summary = read([f], format="prose")
    assert len(docs) == 3  # chapter I, chapter II, and the part after the 4-line gap
    first = docs[0].sentences()
    assert first[0].startswith("It was a dark and stormy night; the rain fell in torrents, except at occasional "
                               "intervals")
    assert "Mr. Holmes said nothing." in first
    assert all("CHAPTER" not in s and s != "The Beginning" for d in docs for s in d.sentences())
    assert summary.headings_removed == 3


def test_gutenberg_file_keeps_only_the_text_between_markers_with_bom_and_crlf(tmp_path):
    chapter = ("Alice was beginning to get very tired of sitting by her sister on the\r\n"
               "bank, and of having nothing to do. Once or twice she had peeped.\r\n\r\n") * 5
    text = ("\ufeffThe Project Gutenberg eBook of Something\r\n\r\nLicence blah.\r\n\r\n"
            "*** START OF THE PROJECT GUTENBERG EBOOK SOMETHING WITH A VERY LONG TITLE THAT\r\n"
            "WRAPS ONTO A SECOND LINE ***\r\n\r\nCHAPTER I.\r\n\r\n" + chapter + "CHAPTER II.\r\n\r\n" + chapter +
            "*** END OF THE PROJECT GUTENBERG EBOOK SOMETHING ***\r\n\r\nFull licence text here. Donations.\r\n")
    f = tmp_path / "pg1.txt"
    f.write_bytes(text.encode("utf-8"))
    docs, summary = read([f])
    assert summary.formats == {"prose": 1}
    assert len(docs) == 2
    text_read = " ".join(s for d in docs for s in d.sentences())
    assert "Licence" not in text_read and "Donations" not in text_read and "WRAPS" not in text_read
    assert "\r" not in text_read and "\ufeff" not in text_read
    assert summary.boilerplate_lines > 0


def test_real_gutenberg_book_becomes_one_document_per_chapter(shared_data):
    docs, summary = read([shared_data / "pretrain/gutenberg/11-0.txt"])  # Alice: 12 chapters
    assert len(docs) == 12
    text = " ".join(u for d in docs for u in d.units)
    assert "Project Gutenberg License" not in text and "START OF" not in text
    assert docs[1].units[0].startswith("‘Curiouser and curiouser!’ cried Alice")


def test_wikitext_titles_start_documents_and_markup_is_joined(tmp_path):
    f = tmp_path / "wiki.test.raw"
    f.write_bytes(" = Robert Boulter = \r\n \r\n Robert Boulter is an English actor . He was born in 1 @,@ 000 "
                  "@-@ year old town .\r\n = = Career = = \r\n He acted .\r\n = Du Fu = \r\n Du Fu was a poet .\r\n"
                  .encode())
    docs, summary = read([f])
    assert summary.formats == {"wikitext": 1}
    assert len(docs) == 2
    assert docs[0].sentences() == ["Robert Boulter is an English actor .", "He was born in 1,000-year old town .",
                                   "He acted ."]
    assert docs[1].sentences() == ["Du Fu was a poet ."]


def test_jsonl_text_field_gz_and_bad_records_are_counted(tmp_path):
    f = tmp_path / "docs.jsonl.gz"
    lines = [json.dumps({"body": "First doc. It has two sentences."}), "{not json", json.dumps({"other": 1}),
             json.dumps({"body": ""}), json.dumps({"body": "Second doc.\n\nNew paragraph here."})]
    with gzip.open(f, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    docs, summary = read([f], text_field="body")
    assert [d.sentences() for d in docs] == [["First doc.", "It has two sentences."],
                                             ["Second doc.", "New paragraph here."]]
    assert (summary.invalid_json_lines, summary.records_without_text, summary.empty_documents) == (1, 1, 1)


def test_jsonl_without_the_text_field_names_the_field_and_file(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text(json.dumps({"content": "Hello there."}) + "\n")
    with pytest.raises(OneBertError, match=r"docs\.jsonl: no record has a string field 'text' \(fields seen: content\)"):
        read([f])


def test_directories_are_read_recursively_in_order_globs_expand_and_hidden_files_are_skipped(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("Doc a.\n")
    (tmp_path / "b" / "c.txt").write_text("Doc c.\n")
    (tmp_path / ".hidden.txt").write_text("Secret.\n")
    summary = CorpusSummary()
    assert [p.name for p in resolve_corpus_paths([tmp_path], summary)] == ["a.txt", "c.txt"]
    assert summary.hidden_files_skipped == 1
    assert [p.name for p in resolve_corpus_paths([str(tmp_path / "**" / "*.txt")])] == ["a.txt", "c.txt"]


# ---------------------------------------------------------------------------------------------- bad input

def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("Caf\xe9 one.\nGood line.\n".encode("latin-1"))
    docs, summary = read([f], format="lines")
    assert docs[0].sentences() == ["Caf\ufffd one.", "Good line."]
    assert summary.undecodable_lines == 1 and summary.files_with_undecodable_bytes == [str(f)]
    assert any("not UTF-8" in line for line in summary.report_lines())


def test_binary_file_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    good = tmp_path / "good.txt"
    good.write_text("A sentence.\n")
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\x01\x02binary" * 100)
    with caplog.at_level(logging.WARNING):
        docs, summary = read([good, binary])
    assert len(docs) == 1
    assert summary.binary_files == [str(binary)]
    assert str(binary) in caplog.text and "binary" in caplog.text


def test_over_long_lines_are_cut_into_pieces_and_counted(tmp_path):
    f = tmp_path / "long.txt"
    word = "é" * 7 + " "  # multi-byte characters must not be cut in half
    long_line = word * (MAX_LINE_BYTES // len(word.encode()) + 10)
    f.write_text("Short one.\n" + long_line + "\nShort two.\n", encoding="utf-8")
    docs, summary = read([f], format="lines")
    assert summary.long_lines == 1
    assert summary.undecodable_lines == 0
    sentences = docs[0].sentences()
    assert sentences[0] == "Short one." and sentences[-1] == "Short two." and len(sentences) == 4
    assert sum(len(s) for s in sentences[1:3]) >= len(long_line.strip()) - 2


def test_nonexistent_path_and_unmatched_glob_are_errors_naming_them(tmp_path):
    with pytest.raises(OneBertError, match=r"nope\.txt: no such file or directory"):
        read([tmp_path / "nope.txt"])
    with pytest.raises(OneBertError, match=r"\*\.xyz: no files match"):
        read([tmp_path / "*.xyz"])


@pytest.mark.parametrize("layout", ["lines", "prose", "jsonl"])
def test_a_document_without_boundaries_is_cut_into_bounded_pieces_and_counted(layout, tmp_path):
    from onebert.data.corpus import MAX_DOCUMENT_CHARS

    sentence = "The river ran past the old mill and on towards the sea."
    count = 2 * MAX_DOCUMENT_CHARS // len(sentence) + 100
    if layout == "lines":
        text = "\n".join([sentence] * count) + "\n"
    elif layout == "prose":
        text = "\n".join([sentence] * count) + "\n"  # no blank line anywhere: one endless paragraph
    else:
        text = json.dumps({"text": "\n\n".join([sentence] * count)}) + "\n"
    f = tmp_path / ("big.jsonl" if layout == "jsonl" else "big.txt")
    f.write_text(text)
    docs, summary = read([f], format=layout)
    assert len(docs) == 3 and summary.long_documents == 1
    assert all(d.num_chars <= MAX_DOCUMENT_CHARS + len(sentence) for d in docs)
    assert sum(len(d.sentences()) for d in docs) == count
