"""Reading pretraining text: files, directories, globs and .gz into documents of sentences.

NSP needs *documents* (B of a negative pair comes from another one) and *sentences* (A and B are
cut at sentence boundaries), so every input layout is turned into `Document`s whose units are
either sentences already (the original BERT layout) or paragraphs that `split_sentences` cuts.

Formats (`--format`, chosen per file by `detect_format` when "auto"):

- ``lines``: the original BERT layout, one sentence per line, a blank line between documents.
- ``prose``: ordinary hard-wrapped text. Lines of a paragraph are joined; paragraphs are split into
  sentences. A file is one document unless it has chapters: a document ends at a *heading*
  (a one-line paragraph such as ``CHAPTER IV.``, ``Chapter 4``, ``STAVE ONE``, ``IV.``, ``12``,
  ``III. THE RED-HEADED LEAGUE``; a short title line right after it is dropped with it) or at a
  *large gap* of 3 or more blank lines (Project Gutenberg's usual spacing around chapters).
  Pieces shorter than 500 characters (title pages, contents, epigraphs) are merged into the next
  document rather than becoming documents of their own. Project Gutenberg files are prose: the BOM
  and CRLF are normalised, and only the text between the ``*** START OF`` and ``*** END OF``
  markers is read when the markers are there (the licence lies outside them).
- ``wikitext``: WikiText dumps; a `` = Title = `` line starts a document, `` = = Section = = ``
  lines are dropped, every other line is a paragraph; `` @-@ ``, `` @,@ ``, `` @.@ `` are joined back.
- ``jsonl``: one JSON object per line, its ``--text-field`` (default "text") is one document read as prose.

Nothing is dropped silently: undecodable bytes (replaced by U+FFFD), binary files (NUL bytes in
the first 8 KiB; skipped with a warning naming the file), entries of a directory that are not
regular files (FIFOs, sockets, devices, broken links: opening a FIFO would block forever; skipped
with a warning naming them), empty documents, over-long lines (cut
into 1 MB pieces), invalid JSON lines, headings and Gutenberg boilerplate are counted in a
`CorpusSummary` that `onebert prepare` prints. Documents longer than 1 M characters (a file
without any document boundary) are cut into pieces at sentence/paragraph boundaries and counted,
so that memory stays bounded whatever the input.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import logging
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from onebert.text_input import lone_surrogate
from onebert.errors import OneBertError

logger = logging.getLogger(__name__)
_SURROGATES = re.compile("[\ud800-\udfff]")

FORMATS = ("auto", "lines", "prose", "wikitext", "jsonl")

MAX_LINE_BYTES = 1_000_000          # longer lines are cut into pieces of this size (and counted)
MAX_JSON_LINE_BYTES = 256_000_000   # one JSONL record may hold a whole book
BINARY_SNIFF_BYTES = 8192
FORMAT_SNIFF_BYTES = 1 << 16
GAP_BLANK_LINES = 3                 # this many blank lines in a row end a prose document
MIN_DOCUMENT_CHARS = 500            # shorter prose pieces are merged into the next document
MAX_DOCUMENT_CHARS = 1_000_000      # longer documents are cut into pieces (bounds memory; counted)
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")

_ALNUM_STRICT = re.compile(r"[^\W_]")


def has_text(s: str) -> bool:
    """True when `s` contains a letter or digit; pieces without one ("* * *", "---") carry nothing to learn."""
    return _ALNUM_STRICT.search(s) is not None


# ----------------------------------------------------------------------------------------------
# Sentence splitting
# ----------------------------------------------------------------------------------------------

# Always followed by a name or a word, never end a sentence in practice.
_TITLES = frozenset("""
    mr mrs ms messrs mme mlle dr drs prof rev revd hon st ste sr jr gen col maj capt cpt lt sgt
    cmdr adm gov sen rep pres supt insp esq fr mt ft
    """.split())
# Abbreviations that do not end a sentence whatever follows them.
_ABBREVIATIONS = frozenset("""
    e.g i.e viz cf vs approx dept est inc ltd co corp bros assn univ jan feb mar apr jun jul aug
    sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun
    """.split())
# Abbreviations that only precede a number ("No. 5", "p. 12"); before a word they may end a sentence ("No. I won't").
_NUMERIC_ABBREVIATIONS = frozenset("no nos vol vols p pp ch chap fig figs art sec sect ed op".split())

_OPENERS = "\"'“‘([{«_*"
_CLOSERS = "\"'”’)]}»_*"
_CANDIDATE = re.compile(r"([.!?…]+)([" + re.escape(_CLOSERS) + r"]*)\s+")
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")


def split_sentences(text: str) -> list[str]:
    """Split one paragraph into sentences with a small set of rules (no model, no dictionary download).

    A sentence ends at ``.``, ``!``, ``?``, ``…`` or ``...`` (with any closing quotes or brackets
    after it) followed by white space and a word that does not start with a lowercase letter.
    It does not end after a title (Mr., Dr., St.), a common abbreviation (e.g., i.e., vs., Inc.),
    "No./p./vol." before a number, a single capital letter (initials: "H. G. Wells") or a dotted
    acronym (U.S., a.m.). Decimals (3.14) and "..." inside a sentence never match because a
    sentence end needs white space and then a non-lowercase word. Quotes: ``"Stop!" he said.`` is one
    sentence (lowercase follows), ``He said "Go." Then he left.`` is two.
    """
    text = " ".join(text.split())
    if not text:
        return []
    sentences: list[str] = []
    start = 0
    for match in _CANDIDATE.finditer(text):
        end = match.end()
        if end >= len(text):
            break
        if _is_sentence_end(text, match):
            piece = text[start:match.end(2)].strip()
            if piece:
                sentences.append(piece)
            start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _is_sentence_end(text: str, match: re.Match) -> bool:
    following = text[match.end():]
    first = following.lstrip(_OPENERS)[:1]
    if not first or first.islower():
        return False
    punctuation = match.group(1)
    if punctuation != ".":
        return True  # ! ? … and "..." before a capital: a new sentence
    before = text[:match.start(1)]
    word = before[before.rfind(" ") + 1:].lstrip(_OPENERS)
    if not word:
        return True
    lowered = word.lower()
    if lowered in _TITLES or lowered in _ABBREVIATIONS:
        return False
    if lowered in _NUMERIC_ABBREVIATIONS and first.isdigit():
        return False
    if len(word) == 1 and word.isalpha() and word.isupper():
        return False  # an initial
    if _DOTTED.fullmatch(word):
        return False  # U.S., a.m., e.g written without the last dot
    return True


# ----------------------------------------------------------------------------------------------
# Documents and the summary of what was read
# ----------------------------------------------------------------------------------------------

@dataclass
class Document:
    """One document: `units` are sentences when `presplit`, else paragraphs for `split_sentences`."""

    units: list[str]
    source: str
    presplit: bool = False

    @property
    def num_chars(self) -> int:
        return sum(len(u) for u in self.units)

    def sentences(self) -> list[str]:
        if self.presplit:
            return list(self.units)
        return [s for unit in self.units for s in split_sentences(unit)]


@dataclass
class CorpusSummary:
    """Counts of everything read, kept and left out; printed by `onebert prepare` and stored in metadata.json."""

    files: int = 0
    bytes: int = 0
    documents: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    binary_files: list[str] = field(default_factory=list)
    hidden_files_skipped: int = 0
    special_files_skipped: list[str] = field(default_factory=list)
    undecodable_lines: int = 0
    files_with_undecodable_bytes: list[str] = field(default_factory=list)
    long_lines: int = 0
    long_documents: int = 0
    empty_documents: int = 0
    units_without_text: int = 0
    headings_removed: int = 0
    boilerplate_lines: int = 0
    invalid_json_lines: int = 0
    records_without_text: int = 0
    lone_surrogates: int = 0  # in JSONL texts ("\ud800" escapes): replaced by U+FFFD, like undecodable bytes
    files_with_lone_surrogates: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def report_lines(self) -> list[str]:
        """Human-readable lines about what was left out or repaired (empty when the corpus was clean)."""
        lines = []
        if self.binary_files:
            lines.append(f"skipped {len(self.binary_files)} binary file(s): {', '.join(self.binary_files[:5])}"
                         + (" ..." if len(self.binary_files) > 5 else ""))
        if self.undecodable_lines:
            lines.append(f"{self.undecodable_lines} line(s) with bytes that are not UTF-8 (replaced by U+FFFD) in "
                         f"{', '.join(self.files_with_undecodable_bytes[:5])}")
        if self.lone_surrogates:
            lines.append(f"{self.lone_surrogates} lone surrogate(s) (JSON \\ud800-style escapes, not characters) "
                         f"replaced with U+FFFD in {', '.join(self.files_with_lone_surrogates[:5])}")
        if self.long_lines:
            lines.append(f"{self.long_lines} line(s) longer than {MAX_LINE_BYTES} bytes were cut into pieces")
        if self.long_documents:
            lines.append(f"{self.long_documents} document(s) longer than {MAX_DOCUMENT_CHARS:,} characters were cut "
                         "into pieces (each piece is a document)")
        if self.empty_documents:
            lines.append(f"{self.empty_documents} empty document(s) skipped")
        if self.units_without_text:
            lines.append(f"{self.units_without_text} line(s)/paragraph(s) without any letter or digit skipped")
        if self.invalid_json_lines:
            lines.append(f"{self.invalid_json_lines} invalid JSON line(s) skipped")
        if self.records_without_text:
            lines.append(f"{self.records_without_text} JSON record(s) without a text field skipped")
        if self.hidden_files_skipped:
            lines.append(f"{self.hidden_files_skipped} hidden file(s) in directories skipped")
        if self.special_files_skipped:
            lines.append(f"skipped {len(self.special_files_skipped)} entries that are not regular files (FIFO, "
                         f"socket, device, broken link): {', '.join(self.special_files_skipped[:5])}"
                         + (" ..." if len(self.special_files_skipped) > 5 else ""))
        if self.headings_removed:
            lines.append(f"{self.headings_removed} heading line(s) removed (document boundaries)")
        if self.boilerplate_lines:
            lines.append(f"{self.boilerplate_lines} Project Gutenberg header/licence line(s) skipped")
        return lines


# ----------------------------------------------------------------------------------------------
# Finding files
# ----------------------------------------------------------------------------------------------

def _special_kind(path: Path) -> str | None:
    """None for a regular file (or a link to one), else what the entry is, for a message."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken symbolic link" if os.path.islink(path) else "unreadable"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a directory" if stat.S_ISDIR(mode) else "not a regular file"


def resolve_corpus_paths(paths: Sequence[str | os.PathLike], summary: CorpusSummary | None = None,
                         warn: bool = False) -> list[Path]:
    """Expand files, directories (recursively, hidden entries skipped) and glob patterns, in a stable order.

    Only regular files are read: reading a FIFO blocks until something writes to it (forever, in a
    corpus folder) and a device never ends. A named path that is neither a regular file nor a
    directory is refused; such entries found inside a directory or by a pattern are skipped and
    counted in `summary` (logged when `warn`: callers that only need the list stay quiet, so a
    corpus resolved twice warns once).
    """
    if not paths:
        raise OneBertError("no corpus given: pass one or more files, directories or glob patterns")
    files: list[Path] = []

    def keep(candidate: Path, found: list[Path]) -> None:
        kind = _special_kind(candidate)
        if kind is None:
            found.append(candidate)
            return
        if summary is not None:
            summary.special_files_skipped.append(str(candidate))
        if warn:
            logger.warning("%s: skipped: %s, not a regular file", candidate, kind)

    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found: list[Path] = []
            for root, dirs, names in os.walk(path):
                hidden_dirs = [d for d in dirs if d.startswith(".")]
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if name.startswith("."):
                        if summary is not None:
                            summary.hidden_files_skipped += 1
                        continue
                    keep(Path(root) / name, found)
                if summary is not None:
                    summary.hidden_files_skipped += len(hidden_dirs)
            if not found:
                raise OneBertError(f"{path}: directory holds no regular files")
            files.extend(found)
        elif os.path.lexists(path):
            raise OneBertError(f"{path}: {_special_kind(path)}, not a regular file or directory; "
                               f"give text files or a directory of them")
        elif glob.has_magic(str(raw)):
            matches: list[Path] = []
            for match in sorted(Path(m) for m in glob.glob(str(raw), recursive=True)):
                if not match.is_dir():
                    keep(match, matches)
            if not matches:
                raise OneBertError(f"{raw}: no files match this pattern")
            files.extend(matches)
        else:
            raise OneBertError(f"{path}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


# ----------------------------------------------------------------------------------------------
# Reading bytes as lines
# ----------------------------------------------------------------------------------------------

class _CountingReader(io.RawIOBase):
    """Counts the raw (compressed) bytes read, so a progress bar over file sizes stays honest for .gz."""

    def __init__(self, raw: io.RawIOBase, on_bytes: Callable[[int], None] | None):
        super().__init__()
        self._raw = raw
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n and self._on_bytes is not None:
            self._on_bytes(n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _open_binary(path: Path, on_bytes: Callable[[int], None] | None = None) -> io.BufferedIOBase:
    counted = io.BufferedReader(_CountingReader(open(path, "rb", buffering=0), on_bytes), buffer_size=1 << 20)
    if _is_gzip(path):
        return gzip.GzipFile(fileobj=counted, mode="rb")
    return counted


def _read_head(path: Path, size: int) -> bytes:
    try:
        with _open_binary(path) as handle:
            return handle.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise OneBertError(f"{path}: cannot read: {exc}") from None


def _complete_utf8_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    i = len(data) - 1
    back = 0
    while i >= 0 and back < 3 and (data[i] & 0xC0) == 0x80:
        i -= 1
        back += 1
    if i < 0:
        return len(data)
    lead = data[i]
    need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    return i if len(data) - i < need else len(data)


def iter_lines(path: Path, summary: CorpusSummary, max_line_bytes: int = MAX_LINE_BYTES,
               on_bytes: Callable[[int], None] | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, text without line end) from a plain or gzipped UTF-8 file.

    The BOM is dropped; CRLF and CR line ends are normalised; bytes that are not UTF-8 are
    replaced and counted; a line longer than `max_line_bytes` comes out as several pieces (counted).
    """
    decode = codecs.getdecoder("utf-8")
    noted_file = False
    lineno = 0
    carry = b""
    continuing = False
    try:
        with _open_binary(path, on_bytes) as handle:
            first = True
            while True:
                chunk = carry + handle.readline(max_line_bytes - len(carry))
                carry = b""
                if not chunk:
                    break
                if first:
                    first = False
                    if chunk.startswith(codecs.BOM_UTF8):
                        chunk = chunk[len(codecs.BOM_UTF8):]
                cut = not chunk.endswith(b"\n") and len(chunk) >= max_line_bytes
                if cut:
                    keep = _complete_utf8_prefix(chunk)
                    chunk, carry = chunk[:keep], chunk[keep:]
                if not continuing:
                    lineno += 1
                    if cut:
                        summary.long_lines += 1
                continuing = cut
                try:
                    text = decode(chunk)[0]
                except UnicodeDecodeError:
                    text = chunk.decode("utf-8", errors="replace")
                    summary.undecodable_lines += 1
                    if not noted_file:
                        noted_file = True
                        summary.files_with_undecodable_bytes.append(str(path))
                text = text.rstrip("\n").rstrip("\r")
                if "\r" in text:  # old Mac line ends inside the chunk
                    for part in text.split("\r"):
                        yield lineno, part
                else:
                    yield lineno, text
    except (OSError, EOFError, zlib.error) as exc:
        raise OneBertError(f"{path}: line {lineno + 1}: cannot read: {exc}") from None


# ----------------------------------------------------------------------------------------------
# Format detection
# ----------------------------------------------------------------------------------------------

_GUTENBERG_START = re.compile(r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)
_WIKITEXT_TITLE = re.compile(r"^ = (?!=)(.*[^=]) = $")
_WIKITEXT_SECTION = re.compile(r"^ (?:= ){2,}.*(?: =){2,} ?$")
_TERMINAL = re.compile(r"[.!?…:;][" + re.escape(_CLOSERS) + r"]*$")


def _strip_suffixes(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def detect_format(path: Path, head: str) -> str:
    """Pick lines / prose / wikitext / jsonl for one file from its name and first 64 KiB.

    JSON suffixes mean jsonl; a Gutenberg START marker means prose; a `` = Title = `` line means
    wikitext. Otherwise the file is the BERT layout ("lines") when most non-blank lines end like a
    sentence and hold about one sentence each; hard-wrapped prose (most lines end mid-sentence)
    and one-paragraph-per-line files (several sentences a line) are prose.
    """
    if _strip_suffixes(path).endswith(JSON_SUFFIXES):
        return "jsonl"
    lines = head.splitlines()
    if len(head) >= FORMAT_SNIFF_BYTES and lines:
        lines = lines[:-1]  # the last line may be cut by the sniff window
    if any(_GUTENBERG_START.match(line) for line in lines):
        return "prose"
    nonblank = [line.strip() for line in lines if line.strip()]
    if any(_WIKITEXT_TITLE.match(line) for line in lines[:50]) and any("@" in l or _WIKITEXT_SECTION.match(l)
                                                                         for l in lines):
        return "wikitext"
    if nonblank and nonblank[0].startswith("{") and _looks_like_json(nonblank[0]):
        return "jsonl"
    sample = nonblank[:300]
    if not sample:
        return "lines"
    terminal = sum(1 for line in sample if _TERMINAL.search(line)) / len(sample)
    per_line = sum(len(split_sentences(line)) for line in sample) / len(sample)
    return "lines" if terminal >= 0.6 and per_line < 1.5 else "prose"


def _looks_like_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


# ----------------------------------------------------------------------------------------------
# Per-format document readers
# ----------------------------------------------------------------------------------------------

_NUMBER_WORDS = ("one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
                 "sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|first|second|third|fourth|"
                 "fifth|sixth|seventh|eighth|ninth|tenth|last|the")
_ROMAN = r"(?=[MDCLXVI])M{0,4}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})"
_HEADINGS = (
    re.compile(r"^(?:chapter|book|part|stave|letter|volume|section|canto|adventure)\s+"
               r"(?:[0-9]+|[ivxlcdm]+|" + _NUMBER_WORDS + r")\b.*$", re.IGNORECASE),
    re.compile(r"^" + _ROMAN + r"\.?$"),                      # IV  /  IV.
    re.compile(r"^[0-9]{1,3}\.?$"),                           # 12  /  12.
    re.compile(r"^" + _ROMAN + r"\.\s+[^a-z]+$"),             # III. THE RED-HEADED LEAGUE
    re.compile(r"^(?:preface|prologue|epilogue|introduction|contents|appendix|postscript|conclusion)\.?$",
               re.IGNORECASE),
)


def is_heading(line: str) -> bool:
    """A one-line paragraph that names a chapter ("CHAPTER IV.", "Chapter 4", "STAVE ONE", "IV.", "12")."""
    line = line.strip().strip("_*[]").strip()
    return 0 < len(line) <= 80 and any(pattern.match(line) for pattern in _HEADINGS)


def _is_title_line(line: str) -> bool:
    """A short line without sentence punctuation right after a heading is the chapter's title."""
    return len(line) <= 80 and not _TERMINAL.search(line.strip())


class _ProseDocuments:
    """Turns a stream of lines into prose documents (see the module docstring for the rules)."""

    def __init__(self, path: Path, summary: CorpusSummary, gutenberg: bool):
        self.path = path
        self.summary = summary
        self.gutenberg = gutenberg

    def documents(self, lines: Iterable[tuple[int, str]]) -> Iterator[Document]:
        lines = iter(lines)
        if self.gutenberg:
            lines = self._between_markers(lines)
        paragraphs: list[str] = []
        paragraph: list[str] = []
        doc_line = 1
        blank_run = 0
        after_heading = False
        pending: Document | None = None  # a piece too short to stand alone, merged forward
        held: Document | None = None     # the last full document, held back in case a short tail follows
        size = _LongDocuments(self.summary)
        paragraph_chars = 0

        def close_document() -> Iterator[Document]:
            nonlocal paragraphs, pending, held
            document = Document(self._text_units(paragraphs), f"{self.path}:{doc_line}")
            paragraphs = []
            if pending is not None:
                document = Document(pending.units + document.units, pending.source)
                pending = None
            if not document.units:
                return
            if document.num_chars < MIN_DOCUMENT_CHARS:
                pending = document
                return
            if held is not None:
                yield held
            held = document

        def end_paragraph() -> Iterator[Document]:
            nonlocal paragraph, paragraph_chars, after_heading, doc_line
            if not paragraph:
                return
            text = " ".join(paragraph)
            one_line = len(paragraph) == 1
            paragraph, paragraph_chars = [], 0
            if one_line and is_heading(text):
                self.summary.headings_removed += 1
                yield from close_document()
                size.boundary()
                after_heading = True
                doc_line = lineno + 1
            elif after_heading and not paragraphs and one_line and _is_title_line(text):
                self.summary.headings_removed += 1
            else:
                paragraphs.append(text)
                after_heading = False
                if size.full(len(text)):
                    yield from close_document()
                    doc_line = lineno + 1

        lineno = 0
        for lineno, line in lines:
            stripped = line.strip()
            if not stripped:
                blank_run += 1
                yield from end_paragraph()
                continue
            if blank_run >= GAP_BLANK_LINES and paragraphs:
                yield from close_document()
                size.boundary()
                doc_line = lineno
            blank_run = 0
            paragraph.append(stripped)
            paragraph_chars += len(stripped) + 1  # with the space that joins it
            if paragraph_chars >= MAX_DOCUMENT_CHARS:  # a file without blank lines: cut the paragraph
                yield from end_paragraph()
        yield from end_paragraph()
        yield from close_document()
        last = self._last_document(held, pending)
        if last is not None:
            yield last

    def _text_units(self, paragraphs: list[str]) -> list[str]:
        """The paragraphs that hold text; the others are counted in the summary and left out."""
        units = [p for p in paragraphs if has_text(p)]
        self.summary.units_without_text += len(paragraphs) - len(units)
        return units

    @staticmethod
    def _last_document(held: Document | None, pending: Document | None) -> Document | None:
        """The held-back last document, with a tail too short to stand alone merged into it."""
        if pending is not None and held is not None:
            return Document(held.units + pending.units, held.source)
        return pending if pending is not None else held

    def _between_markers(self, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
        started = False
        in_marker = False
        for lineno, line in lines:
            if not started:
                self.summary.boilerplate_lines += 1
                if _GUTENBERG_START.match(line):
                    in_marker = True
                if in_marker:
                    # The marker may wrap: it ends on the line that closes it with "***".
                    at = line.upper().find("START OF")
                    rest = line[at + len("START OF"):] if at >= 0 else line
                    if "***" in rest:
                        started = True
                        in_marker = False
                continue
            if _GUTENBERG_END.match(line):
                self.summary.boilerplate_lines += sum(1 for _ in lines) + 1
                return
            yield lineno, line


class _LongDocuments:
    """Cuts a document that grows past MAX_DOCUMENT_CHARS, counting each cut document once."""

    def __init__(self, summary: CorpusSummary):
        self.summary = summary
        self.chars = 0
        self.cut = False

    def full(self, added: int) -> bool:
        self.chars += added
        if self.chars < MAX_DOCUMENT_CHARS:
            return False
        if not self.cut:
            self.summary.long_documents += 1
            self.cut = True
        self.chars = 0
        return True

    def boundary(self) -> None:
        self.chars = 0
        self.cut = False


def _lines_documents(path: Path, summary: CorpusSummary, lines: Iterable[tuple[int, str]]) -> Iterator[Document]:
    sentences: list[str] = []
    lines_seen = 0
    start = 1
    size = _LongDocuments(summary)
    for lineno, line in lines:
        stripped = line.strip()
        if not stripped:
            if sentences:
                yield Document(sentences, f"{path}:{start}", presplit=True)
            elif lines_seen:
                summary.empty_documents += 1
            sentences = []
            lines_seen = 0
            start = lineno + 1
            size.boundary()
            continue
        lines_seen += 1
        if has_text(stripped):
            sentences.append(stripped)
            if size.full(len(stripped)):
                yield Document(sentences, f"{path}:{start}", presplit=True)
                sentences = []
                start = lineno + 1
        else:
            summary.units_without_text += 1
    if sentences:
        yield Document(sentences, f"{path}:{start}", presplit=True)
    elif lines_seen:
        summary.empty_documents += 1


_WIKITEXT_JOINS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))


def _wikitext_documents(path: Path, summary: CorpusSummary, lines: Iterable[tuple[int, str]]) -> Iterator[Document]:
    paragraphs: list[str] = []
    start = 1
    size = _LongDocuments(summary)
    for lineno, line in lines:
        if _WIKITEXT_TITLE.match(line):
            if paragraphs:
                yield Document(paragraphs, f"{path}:{start}")
            paragraphs = []
            size.boundary()
            start = lineno
            summary.headings_removed += 1
            continue
        if _WIKITEXT_SECTION.match(line):
            summary.headings_removed += 1
            continue
        text = line.strip()
        if not text:
            continue
        for joined, plain in _WIKITEXT_JOINS:
            text = text.replace(joined, plain)
        if has_text(text):
            paragraphs.append(text)
            if size.full(len(text)):
                yield Document(paragraphs, f"{path}:{start}")
                paragraphs = []
                start = lineno + 1
        else:
            summary.units_without_text += 1
    if paragraphs:
        yield Document(paragraphs, f"{path}:{start}")


def prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of a text block: split at blank lines, lines inside a paragraph joined."""
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]


def _jsonl_documents(path: Path, summary: CorpusSummary, lines: Iterable[tuple[int, str]],
                     text_field: str) -> Iterator[Document]:
    records = 0
    with_field = 0
    fields_seen: set[str] = set()
    first_bad: int | None = None
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack allows
            summary.invalid_json_lines += 1
            if first_bad is None:
                first_bad = lineno
                logger.warning("%s: line %d: not valid JSON; skipped (further bad lines are only counted)",
                               path, lineno)
            continue
        records += 1
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            summary.records_without_text += 1
            if isinstance(record, dict):
                fields_seen.update(map(str, record))
            continue
        with_field += 1
        text = record[text_field]
        if lone_surrogate(text) is not None:
            # The corpus's policy for text that is not text (as for undecodable bytes): replace and count.
            text, replaced = _SURROGATES.subn("\ufffd", text)
            summary.lone_surrogates += replaced
            if str(path) not in summary.files_with_lone_surrogates:
                summary.files_with_lone_surrogates.append(str(path))
        units = []
        for p in prose_paragraphs(text):
            if has_text(p):
                units.append(p)
            else:
                summary.units_without_text += 1
        if not units:
            summary.empty_documents += 1
        size = _LongDocuments(summary)
        piece: list[str] = []
        for unit in units:
            piece.append(unit)
            if size.full(len(unit)):
                yield Document(piece, f"{path}:{lineno}")
                piece = []
        if piece:
            yield Document(piece, f"{path}:{lineno}")
    if records == 0 and first_bad is not None:
        raise OneBertError(f"{path}: line {first_bad}: not valid JSON (is this file really JSONL?)")
    if records and not with_field:
        seen = ", ".join(sorted(fields_seen)[:10]) or "none"
        raise OneBertError(f"{path}: no record has a string field '{text_field}' "
                           f"(fields seen: {seen}); choose one with --text-field")


# ----------------------------------------------------------------------------------------------
# The corpus as a stream of documents
# ----------------------------------------------------------------------------------------------

def read_documents(paths: Sequence[str | os.PathLike], format: str = "auto", text_field: str = "text",
                   summary: CorpusSummary | None = None,
                   on_bytes: Callable[[int], None] | None = None,
                   warn: bool = True) -> Iterator[Document]:
    """Stream the documents of every file under `paths`, in a stable order, one document in memory at a time.

    `summary` (filled in place) counts what was read and left out; `on_bytes` is told how many
    raw bytes were consumed (for a progress bar over the files' sizes).
    """
    if format not in FORMATS:
        raise OneBertError(f"--format {format}: must be one of {', '.join(FORMATS)}")
    summary = summary if summary is not None else CorpusSummary()
    files = resolve_corpus_paths(paths, summary, warn=warn)
    for path in files:
        head = _read_head(path, FORMAT_SNIFF_BYTES)
        size = path.stat().st_size
        if b"\x00" in head[:BINARY_SNIFF_BYTES]:
            summary.binary_files.append(str(path))
            if warn:
                logger.warning("%s: skipped: binary file (NUL bytes; UTF-16 text must be converted to UTF-8 first)",
                               path)
            if on_bytes is not None:
                on_bytes(size)
            continue
        summary.files += 1
        summary.bytes += size
        head_text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
        file_format = detect_format(path, head_text) if format == "auto" else format
        summary.formats[file_format] = summary.formats.get(file_format, 0) + 1
        limit = MAX_JSON_LINE_BYTES if file_format == "jsonl" else MAX_LINE_BYTES
        lines = iter_lines(path, summary, max_line_bytes=limit, on_bytes=on_bytes)
        if file_format == "lines":
            documents: Iterable[Document] = _lines_documents(path, summary, lines)
        elif file_format == "prose":
            gutenberg = any(_GUTENBERG_START.match(line) for line in head_text.splitlines())
            documents = _ProseDocuments(path, summary, gutenberg).documents(lines)
        elif file_format == "wikitext":
            documents = _wikitext_documents(path, summary, lines)
        else:
            documents = _jsonl_documents(path, summary, lines, text_field)
        for document in documents:
            summary.documents += 1
            yield document
