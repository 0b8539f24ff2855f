"""Cleaning and sentence splitting.

Sentences are split with Bling Fire (Microsoft's `blingfire`): a compiled finite-state splitter that
ships its model inside the wheel (NLTK's Punkt needs a separate data download, which a batch job on a
closed cluster cannot do), handles abbreviations ("Mr.", "U.S.", "e.g.") and runs at tens of MB/s, so
splitting costs a small fraction of tokenization. It joins lines it is given, so each paragraph is split
on its own: a paragraph boundary is always a sentence boundary.
"""

from __future__ import annotations

import re

import blingfire

# NUL and the other C0/C1 control characters carry no text; tabs become spaces. BERT's normalizer
# would drop most of them too, but they must be gone before sentence splitting sees them. A regex
# scan costs little when (as almost always) nothing matches.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


PARAGRAPH_SEPARATOR = "\u2029"


def clean(text: str) -> str:
    if "\t" in text:
        text = text.replace("\t", " ")
    if PARAGRAPH_SEPARATOR in text:
        text = text.replace(PARAGRAPH_SEPARATOR, " ")
    return _CONTROL.sub("", text).strip()


def split_sentences(paragraphs: list[str], presplit: bool) -> list[str]:
    """Sentences of one document, in order; empty ones dropped.

    One Bling Fire call per document: a call per paragraph costs more in ctypes overhead than the
    splitting itself. Paragraphs are joined with U+2029 (PARAGRAPH SEPARATOR), after which Bling Fire
    always ends a sentence (a newline it would join), so a paragraph boundary stays a sentence boundary."""
    cleaned = [c for c in (clean(p) for p in paragraphs) if c]
    if presplit:
        return cleaned
    split = blingfire.text_to_sentences(PARAGRAPH_SEPARATOR.join(cleaned))
    split = split.replace(PARAGRAPH_SEPARATOR + "\n", "\n").replace(PARAGRAPH_SEPARATOR, "\n")
    return [sentence for sentence in split.split("\n") if sentence.strip()]
