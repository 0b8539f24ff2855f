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


def clean(text: str) -> str:
    if "\t" in text:
        text = text.replace("\t", " ")
    return _CONTROL.sub("", text).strip()


def split_sentences(paragraphs: list[str], presplit: bool) -> list[str]:
    """Sentences of one document, in order; empty ones dropped."""
    sentences: list[str] = []
    for paragraph in paragraphs:
        paragraph = clean(paragraph)
        if not paragraph:
            continue
        if presplit:
            sentences.append(paragraph)
            continue
        for sentence in blingfire.text_to_sentences(paragraph).split("\n"):
            if sentence.strip():
                sentences.append(sentence)
    return sentences
