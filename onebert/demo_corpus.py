"""A built-in pretraining corpus: the English docstrings of Python's own standard library.

The demo must run on any machine with no downloads and no data beside it. Every Python install
carries a few hundred thousand words of edited English prose in its standard library's docstrings,
one natural "document" per module, which is what next-sentence prediction needs. We read the
sources with `ast` (never importing them: some modules have side effects on import) and drop
doctest and code lines, keeping the prose.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from pathlib import Path

_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[A-Za-z_][\w.]*\(.*\)\s*$|[-=~^*]{3,}\s*$|:\w+:)")


def stdlib_documents(min_words: int = 50) -> list[str]:
    """One document (paragraphs separated by blank lines) per standard-library module with prose."""
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_PARTS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        paragraphs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    paragraphs.extend(_prose_paragraphs(doc))
        if sum(len(p.split()) for p in paragraphs) >= min_words:
            documents.append("\n\n".join(paragraphs))
    return documents


def _prose_paragraphs(docstring: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", docstring):
        lines = [line.strip() for line in block.splitlines() if line.strip() and not _CODE_LINE.match(line)]
        text = " ".join(lines)
        # Prose has several words and ends like a sentence; argument tables and signatures do not.
        if len(text.split()) >= 6 and text[-1:] in ".!?:)\"'":
            out.append(text)
    return out


def write_stdlib_corpus(directory: Path) -> tuple[int, int]:
    """Write one prose file per module (paragraphs separated by blank lines); returns (documents, words)."""
    documents = stdlib_documents()
    directory.mkdir(parents=True, exist_ok=True)
    for index, document in enumerate(documents):
        (directory / f"module_{index:04d}.txt").write_text(document + "\n", encoding="utf-8")
    return len(documents), sum(len(d.split()) for d in documents)
