"""Checks on text that comes in from users: lone surrogates, control characters, input paths.

Lone surrogates. A JSON string may hold `"\\ud800"`: a valid escape, but half of a UTF-16 pair, not a
character. Python keeps it in the str; the `tokenizers` library then refuses the whole batch with a bare
TypeError, and the text cannot be written out as UTF-8 either. The policy, the same for every reader:
such a string is an error naming the file, the line or JSON path, and the character position; it is not
repaired, because a careful user wants to hear that the file is damaged, not have it changed unseen.
(UTF-8 text files cannot hold surrogates: the strict decoder already refuses them.)
"""

from __future__ import annotations

import json
import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import Any, Iterator, Sequence

from onebert.errors import OneBertError

_SURROGATE = re.compile("[\ud800-\udfff]")
# A surrogate can only come out of json.loads through a \uD800-\uDFFF escape: a cheap test on the raw text
# spares walking documents that have none.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# Cc: C0/C1 controls (NUL, ESC, DEL); Cf: zero-width and direction marks, BOM; Zl/Zp: line and
# paragraph separators; Cs: surrogates.
_BAD_LABEL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (None when there is none)."""
    match = _SURROGATE.search(text)
    return None if match is None else match.start()


def describe_surrogate(text: str, index: int) -> str:
    """'lone surrogate \\ud800 at character 5 (...)': what is wrong, for a one-line message."""
    return (f"lone surrogate \\u{ord(text[index]):04x} at character {index} (half of a UTF-16 pair, not a "
            f"character; a broken \\u escape?)")


def check_texts(texts: Sequence[str], name: str = "texts") -> None:
    """Raise OneBertError naming `name[i]` for the first text holding a lone surrogate."""
    for i, text in enumerate(texts):
        if isinstance(text, str):
            index = lone_surrogate(text)
            if index is not None:
                raise OneBertError(f"{name}[{i}]: {describe_surrogate(text, index)}")


def refuse_lone_surrogates(document: Any, where: str, raw: str | None = None) -> None:
    """Raise OneBertError `WHERE: JSON.PATH: lone surrogate ...` for the first string (or key) holding one.

    `raw` is the JSON text the document was parsed from; without a surrogate escape in it the walk is
    skipped. Paths are written as the readers write them: `data[0].paragraphs[1].context`.
    """
    if raw is not None and not _SURROGATE_ESCAPE.search(raw):
        return
    for path, text in _strings(document, ""):
        index = lone_surrogate(text)
        if index is not None:
            place = f"{where}: {path}" if path else where
            raise OneBertError(f"{place}: {describe_surrogate(text, index)}")


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(JSON path, string) of every string value and key, depth first, without recursion (deep documents)."""
    stack: list[tuple[str, Any]] = [(path, node)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            yield where, value
        elif isinstance(value, dict):
            for key, child in reversed(list(value.items())):
                step = f".{key}" if _IDENTIFIER.fullmatch(key) else f"[{_json_key(key)}]"
                child_path = (where + step).removeprefix(".")
                yield child_path + " (the key)", key
                stack.append((child_path, child))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", child) for i, child in reversed(list(enumerate(value))))


def _json_key(key: str) -> str:
    return json.dumps(key)  # \u escapes: a key with a surrogate or a line break stays printable


# ---------------------------------------------------------------------- labels


def check_label(label: str, where: str) -> None:
    """A label with a control character (NUL, ESC, ...), an invisible format character (zero-width space,
    BOM, direction marks) or a line separator would become a class of its own that looks like another
    one or cannot be typed: refuse it, naming the character. Spaces (also no-break) are fine."""
    for index, char in enumerate(label):
        if unicodedata.category(char) in _BAD_LABEL_CATEGORIES:
            raise OneBertError(f"{where}: label {ascii(label)[:60]} holds the control character "
                               f"U+{ord(char):04X} at character {index}; a label is printable text")


# ---------------------------------------------------------------------- input paths


def check_input_file(path: str | os.PathLike, option: str = "") -> Path:
    """The path of a regular, readable file, or a one-line OneBertError saying what it is instead.

    `option` (e.g. "--input") goes in front of the message so the user knows which flag to fix.
    A FIFO or device is refused: reading /dev/urandom or a pipe would never end.
    """
    path = Path(path)
    prefix = f"{option} {path}" if option else str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise OneBertError(f"{prefix}: no such file") from None
    except NotADirectoryError:
        raise OneBertError(f"{prefix}: no such file (a part of the path is not a directory)") from None
    except OSError as exc:
        raise OneBertError(f"{prefix}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise OneBertError(f"{prefix}: is a directory, expected a file")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode) else "a character device"
                if stat.S_ISCHR(info.st_mode) else "a block device" if stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise OneBertError(f"{prefix}: is {kind}, expected a regular file")
    if not os.access(path, os.R_OK):
        raise OneBertError(f"{prefix}: cannot read: permission denied")
    return path


def decode_utf8(data: bytes, name: str, what: str) -> str:
    """UTF-8 (a BOM dropped) or a one-line error naming the line and byte: `what` says what the file must be."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise OneBertError(f"{name}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at byte offset "
                           f"{exc.start}); {what}") from None


def parse_json_document(text: str, name: str) -> Any:
    """A whole JSON document, or a one-line error naming the line and column of the mistake."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise OneBertError(f"{name}: line {exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
        raise OneBertError(f"{name}: invalid JSON ({str(exc).split(';')[0]})") from None
