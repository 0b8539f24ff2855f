"""Every source format, and the bad-input policy of the readers."""

import json
import os
import subprocess
import sys
import tracemalloc

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
    tracemalloc.start()  # every Python allocation (the reader's bytes, str, lists); the peak of this read alone
    try:
        documents, skips = read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert skips == {"line_too_long": 1}
    assert [d.paragraphs for d in documents] == [["Before.", "After."]]
    # held whole, the line would take 100 MB; read in pieces of --max-line-mb (1 MB), a few pieces at most
    assert peak < 8 * (1 << 20), f"peak {peak / (1 << 20):.1f} MB while reading past a 100 MB line"


def test_missing_path_and_missing_text_column(tmp_path):
    with pytest.raises(PrepError, match="no such file"):
        read(tmp_path / "nope")
    pq.write_table(pa.table({"id": [1], "title": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(PrepError, match=r"bad.parquet: has no 'text' column \(columns: id, title\)"):
        read(tmp_path / "bad.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(PrepError, match="broken.parquet: not a readable parquet file .*; re-download"):
        read(tmp_path / "broken.parquet")


def test_schemas_are_checked_when_the_source_is_parsed_before_any_row_is_read(tmp_path):
    """A damaged file or a missing `text` column deep in a folder is named by `parse_source`, before any work;
    an empty file stays a counted skip, as everywhere."""
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["A document."] * 3}), folder / "part-0.parquet")
    (folder / "part-1.parquet").write_bytes(b"")
    data = (folder / "part-0.parquet").read_bytes()
    (folder / "sub" / "part-2.parquet").write_bytes(data[: len(data) // 2])  # footer cut off
    with pytest.raises(PrepError, match="part-2.parquet: not a readable parquet file"):
        parse_source(str(folder))
    (folder / "sub" / "part-2.parquet").unlink()
    assert parse_source(str(folder)).kind == "local"
    assert read(folder)[1] == {"empty_file": 1}

    import datasets

    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(PrepError, match=r"saved: dataset has no 'text' column \(columns: body\)"):
        parse_source(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]}),
                          "test": datasets.Dataset.from_dict({"title": ["y"]})}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(PrepError, match=r"dict \(split test\): dataset has no 'text' column"):
        parse_source(str(tmp_path / "dict"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:40])
    with pytest.raises(PrepError, match="saved: not a readable saved dataset"):
        parse_source(str(tmp_path / "saved"))


def test_hub_local_copies_are_checked_up_front(tmp_path):
    wiki = tmp_path / "wikipedia"
    wiki.mkdir()
    pq.write_table(pa.table({"id": ["1"], "title": ["T"]}), wiki / "train.parquet")
    with pytest.raises(PrepError, match="train.parquet: has no 'text' column"):
        parse_source(f"wikipedia:20231101.en={wiki}")
    with pytest.raises(PrepError, match="bookcorpus=.*missing: no such folder; .* bookcorpus alone"):
        parse_source(f"bookcorpus={tmp_path / 'missing'}")
    assert parse_source("bookcorpus").location == "bookcorpus/bookcorpus"  # streamed: nothing to open before the run


def test_sentence_splitting_keeps_paragraph_boundaries():
    assert split_sentences(["Mr. Smith went to Washington. He met the U.S. president", "Heading", "Last one."],
                           False) == ["Mr. Smith went to Washington.", "He met the U.S. president", "Heading",
                                      "Last one."]
    assert clean("tab\tand\x00nul\u2029sep") == "tab andnul sep"


def test_a_dataset_that_is_a_loading_script_is_refused_in_one_line_naming_the_local_form(tmp_path):
    """datasets 4+ refuses loading scripts, as the hub's BookCorpus long was; the same refusal comes from a
    folder holding `<name>.py` (the code path `load_dataset` takes for the hub's script datasets)."""
    script_dataset = tmp_path / "bookcorpus"
    script_dataset.mkdir()
    (script_dataset / "bookcorpus.py").write_text("import datasets\n")
    with pytest.raises(PrepError, match=r"refuses it \(Dataset scripts are no longer supported.*bookcorpus=DIR$"):
        read(f"bookcorpus={script_dataset}")


def test_the_hub_sources_unreachable_are_one_line_naming_the_local_form(tmp_path):
    """No network here: the hub offline mode makes the loaders fail as an unreachable hub does."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    wikipedia = "wikipedia:20231101.en"
    for source, local_form in (("bookcorpus", "bookcorpus=DIR"), (wikipedia, f"{wikipedia}=DIR")):
        code = (f"from tests.unit.test_sources import read\ntry:\n    read({source!r})\n"
                "except Exception as error:\n    print(type(error).__name__, error)")
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        assert result.stdout.startswith("PrepError --source") and result.stdout.strip().endswith(local_form), \
            result.stdout + result.stderr[-2000:]
        assert len(result.stdout.strip().splitlines()) == 1
