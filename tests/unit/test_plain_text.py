"""Plain-text formats (data_prep.plain_text): `auto`'s decision on real text in each form, the paragraph
reading (joins, hyphens, separators, bounds), and the reader's per-file record."""

import itertools
import os
import re
import textwrap

import blingfire
import pytest

from data_prep.config import PrepConfig, PrepError
from data_prep.plain_text import decide_format, line_documents, paragraph_documents, sample_and_rest
from data_prep.sources import DocumentReader, SkipCounter, parse_source


def articles(small_corpus):
    """The 21 articles of the shipped Wikipedia sample: each a list of paragraphs (the title dropped)."""
    found = []
    for name in ("wiki_00", "wiki_01"):
        text = open(os.path.join(small_corpus, name), encoding="utf-8").read()
        for body in re.findall(r"<doc [^>]*>\n(.*?)</doc>", text, re.S):
            found.append([line for line in body.split("\n") if line.strip()][1:])
    return found


def wrapped(paragraphs, width=72):
    return "\n\n".join(textwrap.fill(p, width, break_on_hyphens=False) for p in paragraphs) + "\n"


def one_per_line(paragraphs):
    return "\n".join(paragraphs) + "\n"


def one_sentence_per_line(documents):
    """BERT's input convention: one sentence per line, a blank line between documents."""
    return "\n\n".join("\n".join(blingfire.text_to_sentences(p) for p in doc) for doc in documents) + "\n"


def read(*sources, **config):
    config = PrepConfig(sources=list(map(str, sources)), **config)
    reader = DocumentReader([parse_source(s) for s in config.sources], config, SkipCounter(quiet=True))
    return [d.paragraphs for d in reader], dict(reader.text_formats)


def test_auto_reads_wrapped_articles_as_paragraphs_and_one_paragraph_or_sentence_per_line_as_lines(small_corpus):
    long_articles = [a for a in articles(small_corpus) if len(a) >= 5]  # disambiguation pages have 1-2 lines
    assert len(long_articles) >= 15
    for article in long_articles:
        assert decide_format(wrapped(article).split("\n"))[0] == "paragraphs"
        assert decide_format(wrapped(article, 100).split("\n"))[0] == "paragraphs"
        assert decide_format(one_per_line(article).split("\n"))[0] == "lines"
    fmt, evidence = decide_format(one_sentence_per_line(long_articles).split("\n"))
    assert fmt == "lines" and evidence["ending_mid_sentence"] < 0.05, evidence


def test_paragraphs_join_lines_and_hyphenated_words_and_a_file_is_one_document():
    text = ["The first para-", "graph goes on", "over three lines.", "", "Second: well-", "Known words stay.", ""]
    [document] = paragraph_documents(iter(text), 10**6, 10**6, None, lambda: None)
    assert document == ["The first paragraph goes on over three lines.", "Second: well- Known words stay."]


def test_a_separator_line_ends_a_document_in_either_format():
    text = ["One line.", "Two lines.", "=== END ===", "Next doc,", "wrapped.", "", "=== END ==="]
    separator = re.compile(r"=+ END =+")
    assert list(paragraph_documents(iter(text), 10**6, 10**6, separator, lambda: None)) == [
        ["One line. Two lines."], ["Next doc, wrapped."]]
    assert list(line_documents(iter(text), 10**6, separator, lambda: None)) == [
        ["One line.", "Two lines."], ["Next doc,", "wrapped."]]


def test_paragraphs_stream_and_bound_what_they_hold():
    """An endless wrapped text without a blank line: paragraphs are cut at their limit, documents at theirs,
    and the first document comes out without reading the rest (a 100 MB book is never held whole)."""
    endless = itertools.cycle(["a line of wrapped prose that goes on"])
    cuts = []
    documents = paragraph_documents(endless, 4000, 1000, None, lambda: cuts.append(1))
    first = next(documents)
    assert all(len(p) <= 1000 + 40 for p in first) and sum(len(p) for p in first) <= 4000 + 40
    assert len(first) == 4 and cuts == [1]


def test_sample_and_rest_replays_the_sample_then_streams():
    lines = iter(f"line {i}" for i in range(1000))
    sample, rest = sample_and_rest(lines)
    assert len(sample) == 400 and list(rest) == [f"line {i}" for i in range(1000)]


def test_the_reader_records_each_files_format_and_a_source_suffix_overrides_auto(small_corpus, tmp_path):
    article = articles(small_corpus)[0]
    (tmp_path / "book.txt").write_text(wrapped(article))
    (tmp_path / "bert.txt").write_text(one_sentence_per_line([article[:3], article[3:6]]))
    documents, formats = read(tmp_path)
    assert formats[str(tmp_path / "bert.txt")]["format"] == "lines"
    assert formats[str(tmp_path / "book.txt")]["format"] == "paragraphs"
    assert formats[str(tmp_path / "book.txt")]["chosen_by"] == "auto"
    assert len(documents) == 3 and documents[2] == [p.strip() for p in article]  # one document, paragraphs whole
    forced, formats = read(f"{tmp_path / 'book.txt'}::lines")
    assert formats == {str(tmp_path / "book.txt"): {"format": "lines",
                                                   "chosen_by": "--text-format or the source's ::FORMAT"}}
    assert len(forced) == len(article)  # each paragraph a document of wrapped lines
    _, formats = read(os.path.join(small_corpus, "wiki_00"), text_format="paragraphs")
    assert formats[os.path.join(small_corpus, "wiki_00")]["format"] == "wikiextractor"


def test_bad_format_names_and_separators_are_one_line_errors(tmp_path):
    (tmp_path / "a.txt").write_text("text\n")
    with pytest.raises(PrepError, match="'::pages' is not a text format"):
        parse_source(f"{tmp_path / 'a.txt'}::pages")
    with pytest.raises(PrepError, match="--doc-separator"):
        PrepConfig(sources=[str(tmp_path)], doc_separator="(unclosed")
    with pytest.raises(PrepError, match="--text-format"):
        PrepConfig(sources=[str(tmp_path)], text_format="pages")


def test_sop_segments_of_a_wrapped_article_span_its_paragraphs(small_corpus, vocab_dir, tmp_path):
    """Read as `paragraphs`, a wrapped article is one document, so a segment of a 512-token SOP pair takes
    sentences from several paragraphs; read as `lines`, each paragraph was a document of its own."""
    import numpy as np
    from tokenizers import Tokenizer

    from data_prep.sentences import split_sentences
    from data_prep.sop_pairs import pair_document

    article = max(articles(small_corpus), key=len)
    (tmp_path / "article.txt").write_text(wrapped(article))
    [paragraphs], _ = read(tmp_path / "article.txt")
    sentences = split_sentences(paragraphs, presplit=False)
    paragraph_of_sentence = np.repeat(np.arange(len(paragraphs)),
                                      [len(split_sentences([p], presplit=False)) for p in paragraphs])
    assert len(paragraph_of_sentence) == len(sentences)  # a paragraph boundary is a sentence boundary
    tokenizer = Tokenizer.from_file(os.path.join(vocab_dir, "tokenizer.json"))
    lengths = [len(e.ids) for e in tokenizer.encode_batch(sentences, add_special_tokens=False)]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    spans, _ = pair_document(offsets, 512, 0.0, np.random.default_rng(0))

    def paragraph_at(token):
        return paragraph_of_sentence[np.searchsorted(offsets, token, side="right") - 1]

    segments = [(a_start, a_end) for a_start, a_end, *_ in spans] + [(b_start, b_end) for _, _, b_start, b_end, _ in
                                                                     spans]
    crossing = [s for s in segments if paragraph_at(s[0]) != paragraph_at(s[1] - 1)]
    assert len(spans) >= 5 and len(crossing) >= len(segments) // 2, (len(crossing), len(segments))
