"""A small English corpus that needs no download: the documentation that ships with Python.

`pydoc_data.topics` (the language reference topics behind `help()`) and the docstrings of the standard
library, read with `ast` from the source files (never imported: importing `antigravity` opens a web
browser, and importing all of the standard library is slow). One document per topic and per module;
paragraphs are the docstrings' blank-line-separated blocks joined onto one line. About 4 MB of text, so
the demo runs in minutes on two cores; the content varies a little between Python versions.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
import warnings

from formats.files import atomic_write_bytes

MIN_PARAGRAPH_CHARS = 40  # drops signatures and one-word fragments that are not prose


def _paragraphs(text: str) -> list[str]:
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append(" ".join(current))
            current = []
    if current:
        blocks.append(" ".join(current))
    return [b for b in blocks if len(b) >= MIN_PARAGRAPH_CHARS and not b.startswith((">>>", "..."))]


def _module_docstrings(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old test files
                tree = ast.parse(handle.read())
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []  # a few stdlib files are deliberately broken (test fixtures): not prose anyway
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring:
                texts.extend(_paragraphs(docstring))
    return texts


def documents() -> list[str]:
    import pydoc_data.topics

    docs = [
        "\n".join(_paragraphs(pydoc_data.topics.topics[name])) for name in sorted(pydoc_data.topics.topics)
    ]
    stdlib = sysconfig.get_paths()["stdlib"]
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in {"site-packages", "__pycache__", "test", "tests", "idle_test"})
        for name in sorted(names):
            if name.endswith(".py"):
                paragraphs = _module_docstrings(os.path.join(root, name))
                if len(paragraphs) >= 2:
                    docs.append("\n".join(paragraphs))
    return [d for d in docs if d]


def write_corpus(path: str) -> str:
    """Writes the corpus as JSON lines with a `text` column (one of the formats `--source` reads)."""
    lines = "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in documents())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, lines.encode("utf-8"))
    return path
