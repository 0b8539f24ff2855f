"""Every source format, and the bad-input policy of the readers."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.config import PrepConfig, PrepError
from data_prep.sentences import clean, split_sentences
from data_prep.sources import DocumentReader, SkipCounter, parse_source


def read(*sources, **config):
    config = PrepConfig(sources=list(map(str, sources)), **config)
    skips = SkipCounter(quiet=True)
    documents = list(DocumentReader([parse_source(s) for s in config.sources], config, skips))
    return documents, dict(skips.counts)


def test_wikiextractor_real_file(small_corpus):
    documents, skips = read(os.path.join(small_corpus, "wiki_00"))
    assert len(documents) == 7 and skips == {}  # 7 <doc> in the sample's wiki_00
    assert documents[0].paragraphs[0].startswith("Anarchism is a political philosophy")  # title line dropped


def test_plain_text_blank_lines_separate_documents(tmp_path):
    (tmp_path / "a.txt").write_text("First doc line one.\nLine two.\n\n\nSecond doc.\n")
    (tmp_path / "b.txt").write_text("A file without blank lines.\nIs one document.\n")
    documents, _ = read(tmp_path)
    assert [d.paragraphs for d in documents] == [
        ["First doc line one.", "Line two."], ["Second doc."], ["A file without blank lines.", "Is one document."]
    ]


def test_jsonl_parquet_and_saved_dataset(tmp_path):
    rows = [{"text": "Para one. Sentence two.\nPara two."}, {"text": "Other doc."}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    pq.write_table(pa.table({"text": [r["text"] for r in rows]}), tmp_path / "rows.parquet")
    import datasets

    datasets.Dataset.from_dict({"text": [r["text"] for r in rows]}).save_to_disk(str(tmp_path / "saved"))
    for source, expected_skips in [
        (tmp_path / "rows.jsonl", {"bad_json_line": 1}), (tmp_path / "rows.parquet", {}), (tmp_path / "saved", {})
    ]:
        documents, skips = read(source)
        assert [d.paragraphs for d in documents] == [["Para one. Sentence two.", "Para two."], ["Other doc."]]
        assert skips == expected_skips


def test_hub_loaders_on_local_stand_ins(tmp_path):
    """The real `datasets.load_dataset(..., streaming=True)` path, on folders with the hub's schema."""
    book = tmp_path / "bookcorpus"
    book.mkdir()
    pq.write_table(pa.table({"text": [f"sentence number {i} ." for i in range(10)]}), book / "train.parquet")
    wiki = tmp_path / "wikipedia"
    wiki.mkdir()
    pq.write_table(pa.table({"id": ["1"], "url": ["u"], "title": ["T"], "text": ["Intro. More.\n\nSection."]}),
                   wiki / "train.parquet")
    documents, _ = read(f"bookcorpus={book}", bookcorpus_doc_sentences=4)
    assert [len(d.paragraphs) for d in documents] == [4, 4, 2] and all(d.presplit for d in documents)
    documents, _ = read(f"wikipedia:20231101.en={wiki}")
    assert [d.paragraphs for d in documents] == [["Intro. More.", "Section."]]


def test_bad_inputs_are_counted(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait.\nGood line.\n".encode("latin-1"))
    (tmp_path / "nul.txt").write_bytes(b"Nul\x00 inside.\x1b Escape.\n")
    documents, skips = read(tmp_path)
    assert skips == {"empty_file": 1, "line_not_utf8": 1}
    assert [d.paragraphs for d in documents][0] == ["Good line."]
    assert split_sentences(documents[1].paragraphs, False) == ["Nul inside.", "Escape."]


def test_hundred_megabyte_line_is_skipped_without_holding_it(tmp_path):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as handle:
        handle.write(b"Before.\n")
        block = b"x" * (1 << 20)
        for _ in range(100):
            handle.write(block)
        handle.write(b"\nAfter.\n")
    documents, skips = read(path)
    assert skips == {"line_too_long": 1}
    assert [d.paragraphs for d in documents] == [["Before.", "After."]]


def test_missing_path_and_missing_text_column(tmp_path):
    with pytest.raises(PrepError, match="no such file"):
        read(tmp_path / "nope")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(PrepError, match="bad.parquet: has no 'text' column"):
        read(tmp_path / "bad.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(PrepError, match="broken.parquet: not a readable parquet"):
        read(tmp_path / "broken.parquet")


def test_sentence_splitting_keeps_paragraph_boundaries():
    assert split_sentences(["Mr. Smith went to Washington. He met the U.S. president", "Heading", "Last one."],
                           False) == ["Mr. Smith went to Washington.", "He met the U.S. president", "Heading",
                                      "Last one."]
    assert clean("tab\tand\x00nul\u2029sep") == "tab andnul sep"
