"""Plain-text files as people have them: how lines become paragraphs and documents.

Two readings, `lines` (one paragraph a line, a blank line ends a document) and `paragraphs` (hard-wrapped
text: a blank line ends a paragraph, a file is a document; read as `lines`, every wrap point would become a
sentence boundary), chosen per source or per file by `auto` from its first `SAMPLE_LINES` non-blank lines;
the rule and the flags: README, "Plain-text formats". `auto`'s decision and the figures it rested on are
recorded per file in the manifest (`text_formats`). Memory stays bounded: a file is streamed, and a paragraph
or document that grows past its limit is cut there (counted as `document_cut_at_size_limit`).
"""

from __future__ import annotations

import re
from itertools import chain
from typing import Callable, Iterator

TEXT_FORMATS = ("auto", "lines", "paragraphs")
SAMPLE_LINES = 400
SENTENCE_END = tuple(".!?:;\"')]}”’»")
HYPHENATED_BREAK = re.compile(r"[^\W\d_]-$")  # a letter, then the hyphen that ends the line

# auto picks `paragraphs` when, within blocks of consecutive non-blank lines, at least this share of the
# lines that another line follows end mid-sentence, and 90% of the lines are at most this long. Measured on
# the 21 articles of tests/assets/enwiki_sample, one per file: wrapped at 72 columns, a median of 96% of such
# lines end mid-sentence (90% of lines <= 72 chars); one paragraph per line, a median of 1% (50% at most,
# in a list article whose lines are 322 chars at the 90th percentile); one sentence per line, 0.4%.
MID_SENTENCE_SHARE = 0.5
WRAPPED_P90_CHARS = 120
MIN_LINES_INSIDE_BLOCKS = 8


def decide_format(sample: list[str]) -> tuple[str, dict]:
    """`auto`'s decision for a file from its first lines (blank ones included): the format and its evidence."""
    inside = [line.strip() for line, following in zip(sample, sample[1:]) if line.strip() and following.strip()]
    mid_sentence = sum(1 for line in inside if not line.endswith(SENTENCE_END))
    lengths = sorted(len(line.strip()) for line in sample if line.strip())
    share = mid_sentence / len(inside) if inside else 0.0
    p90 = lengths[int(0.9 * (len(lengths) - 1))] if lengths else 0
    wrapped = len(inside) >= MIN_LINES_INSIDE_BLOCKS and share >= MID_SENTENCE_SHARE and p90 <= WRAPPED_P90_CHARS
    evidence = {"lines_sampled": len(lengths), "lines_inside_blocks": len(inside),
                "ending_mid_sentence": round(share, 3), "p90_line_chars": p90}
    return ("paragraphs" if wrapped else "lines"), evidence


def sample_and_rest(lines: Iterator[str]) -> tuple[list[str], Iterator[str]]:
    """The first SAMPLE_LINES non-blank lines (with the blank ones among them), and an iterator over the whole
    file again: the sample is replayed, then the rest streams on."""
    sample: list[str] = []
    nonblank = 0
    for line in lines:
        sample.append(line)
        nonblank += bool(line.strip())
        if nonblank >= SAMPLE_LINES:
            break
    return sample, chain(sample, lines)


def line_documents(lines: Iterator[str], max_doc_bytes: int, separator: re.Pattern | None,
                   cut: Callable[[], None]) -> Iterator[list[str]]:
    """`lines`: one line is one paragraph, a blank line (or a separator line) ends a document."""
    paragraphs: list[str] = []
    size = 0
    for line in lines:
        if separator is not None and separator.fullmatch(line.strip()):
            if paragraphs:
                yield paragraphs
            paragraphs, size = [], 0
        elif line.strip():
            paragraphs.append(line)
            size += len(line)
            if size >= max_doc_bytes:
                cut()
                yield paragraphs
                paragraphs, size = [], 0
        elif paragraphs:
            yield paragraphs
            paragraphs, size = [], 0
    if paragraphs:
        yield paragraphs


def paragraph_documents(lines: Iterator[str], max_doc_bytes: int, max_paragraph_bytes: int,
                        separator: re.Pattern | None, cut: Callable[[], None]) -> Iterator[list[str]]:
    """`paragraphs`: non-blank lines joined into paragraphs, blank lines between paragraphs, the file (or the
    text between separator lines) one document."""
    paragraphs: list[str] = []
    pieces: list[str] = []  # the lines of the paragraph being read
    size = piece_size = 0

    def end_paragraph() -> None:
        nonlocal pieces, piece_size
        if pieces:
            paragraphs.append(" ".join(pieces))
            pieces, piece_size = [], 0

    for line in lines:
        text = line.strip()
        if separator is not None and separator.fullmatch(text):
            end_paragraph()
            if paragraphs:
                yield paragraphs
            paragraphs, size = [], 0
            continue
        if not text:
            end_paragraph()
            continue
        if pieces and HYPHENATED_BREAK.search(pieces[-1]) and text[0].islower():
            pieces[-1] = pieces[-1][:-1] + text  # "exam-" + "ple" is one word
        else:
            pieces.append(text)
        piece_size += len(text) + 1
        size += len(text) + 1
        if piece_size >= max_paragraph_bytes:  # no blank line for a very long stretch: bound the paragraph
            end_paragraph()
        if size >= max_doc_bytes:
            end_paragraph()
            cut()
            yield paragraphs
            paragraphs, size = [], 0
    end_paragraph()
    if paragraphs:
        yield paragraphs
