"""Readers that turn every supported source into one stream of documents, with the bad-input policy.

A document is a list of paragraphs (for BookCorpus, of sentences that are already split). What is unusable
is skipped and counted by reason in a `Counter` that ends up in the manifest; the first few skips of each
reason are also reported on stderr with their file. What cannot be read at all (a missing path, a damaged
parquet file, no `text` column) is a `PrepError` from `parse_source` before any work starts: it reads every
parquet footer and every saved dataset's features (the schema, not the data), so a bad file among thousands
is named in seconds. The source specs and how each becomes documents: README, "Sources".
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from typing import Iterator

from formats.errors import one_line

from .config import PrepConfig, PrepError
from .plain_text import TEXT_FORMATS, decide_format, line_documents, paragraph_documents, sample_and_rest

WARNINGS_PER_REASON = 5
# The hub's BookCorpus as parquet: the conversion the hub keeps of every dataset (`refs/convert/parquet`),
# in its `plain_text` config folder.
BOOKCORPUS_PARQUET_REVISION = "refs/convert/parquet"
BOOKCORPUS_PARQUET_CONFIG = "plain_text"


@dataclass
class Document:
    paragraphs: list[str]
    presplit: bool = False  # paragraphs are sentences already (BookCorpus rows)

    @property
    def num_bytes(self) -> int:
        return sum(len(p) for p in self.paragraphs)


class SkipCounter:
    """Counts skipped inputs by reason; warns about the first few of each reason on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.counts: Counter = Counter()
        self.quiet = quiet

    def skip(self, reason: str, where: str, count: int = 1) -> None:
        self.counts[reason] += count
        if not self.quiet and self.counts[reason] - count < WARNINGS_PER_REASON:
            print(f"data_prep: skipped ({reason}): {where}", file=sys.stderr)
            if self.counts[reason] >= WARNINGS_PER_REASON:
                print(f"data_prep: further '{reason}' skips are only counted", file=sys.stderr)


@dataclass
class SourceSpec:
    kind: str  # bookcorpus | wikipedia | local
    location: str  # hub id, or a local path
    config_name: str | None = None
    text_format: str | None = None  # from a `::FORMAT` suffix: how this source's plain-text files are read

    @property
    def label(self) -> str:
        return self.location if self.kind == "local" else f"{self.kind}({self.location})"


def parse_source(spec: str) -> SourceSpec:
    """One `--source` spec, checked as far as is cheap (paths exist, schemas have a `text` column)."""
    text_format = None
    body, suffix, given_format = spec.rpartition("::")
    if suffix:
        if given_format not in TEXT_FORMATS:
            raise PrepError(f"--source {spec}: '::{given_format}' is not a text format; "
                            f"choose one of {', '.join(TEXT_FORMATS)}")
        spec, text_format = body, given_format
    source = _parse_location(spec)
    source.text_format = text_format
    check_schemas(source)
    return source


def _parse_location(spec: str) -> SourceSpec:
    name, _, path = spec.partition("=")
    if name == "bookcorpus":
        source = SourceSpec("bookcorpus", path or "bookcorpus/bookcorpus")
    elif name.startswith("wikipedia:") or name == "wikipedia":
        config_name = name.partition(":")[2]
        if not config_name:
            raise PrepError(f"--source {spec}: name a Wikipedia dump config, e.g. wikipedia:20231101.en")
        source = SourceSpec("wikipedia", path or "wikimedia/wikipedia", config_name)
    elif not os.path.exists(spec):
        raise PrepError(f"--source {spec}: no such file or folder")
    else:
        source = SourceSpec("local", spec)
    if source.kind != "local" and path and not os.path.exists(path):
        raise PrepError(f"--source {spec}: no such folder; give a local copy (a folder of parquet files with a "
                        f"'text' column), or {name} alone to stream it from the hub")
    return source


def check_schemas(spec: SourceSpec) -> None:
    """Opens every parquet file and saved dataset of a source for its schema alone (a parquet footer, a
    dataset's features), so that a damaged file or a missing `text` column stops the run before any work.
    A streamed hub source is not opened here: that would mean a network round trip per file."""
    if not os.path.exists(spec.location):
        return  # a hub id, streamed
    if spec.kind == "local" and is_saved_dataset(spec.location):
        load_saved_dataset(spec.location)
        return
    for path in list_files(spec.location):
        # An empty local file is a counted skip; the hub loader reads every file it is given.
        if path.lower().endswith(".parquet") and (spec.kind != "local" or os.path.getsize(path) > 0):
            open_parquet(path)


def open_parquet(path: str):
    """The file as a `pyarrow.parquet.ParquetFile` (its footer read, no data), checked to have `text`."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types (ArrowInvalid, OSError) for a damaged file
        raise PrepError(f"{path}: not a readable parquet file ({one_line(error)}); "
                        "re-download it or remove it from the source") from None
    columns = parquet.schema_arrow.names
    if "text" not in columns:
        raise PrepError(f"{path}: has no 'text' column (columns: {', '.join(columns)}); "
                        "the documents must be in a column named 'text'")
    return parquet


def load_saved_dataset(path: str) -> list:
    """The splits of a folder saved by `datasets` (memory-mapped, not read), checked to have `text`."""
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as error:  # datasets and pyarrow raise many types for a damaged folder
        raise PrepError(f"{path}: not a readable saved dataset ({one_line(error)}); "
                        "save it again with save_to_disk or remove it from the source") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = [(f"{path} (split {name})", loaded[name]) for name in sorted(loaded)]
    else:
        splits = [(path, loaded)]
    for where, split in splits:
        if "text" not in split.column_names:
            raise PrepError(f"{where}: dataset has no 'text' column (columns: {', '.join(split.column_names)}); "
                            "the documents must be in a column named 'text'")
    return [split for _, split in splits]


def is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "dataset_dict.json"))
        or os.path.exists(os.path.join(path, "state.json"))
    )


def list_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
    return files


def total_input_bytes(specs: list[SourceSpec]) -> int | None:
    """Size of all local inputs, for the progress bar's ETA; None when a source is streamed."""
    total = 0
    for spec in specs:
        if spec.kind != "local" or is_saved_dataset(spec.location):
            return None
        files = list_files(spec.location)
        if any(f.lower().endswith(".parquet") for f in files):
            return None  # compressed: file size says little about the text inside
        total += sum(os.path.getsize(f) for f in files)
    return total


class DocumentReader:
    """Iterates documents of all sources in order; `bytes_read` follows the input for progress."""

    def __init__(self, specs: list[SourceSpec], config: PrepConfig, skips: SkipCounter) -> None:
        self.specs = specs
        self.config = config
        self.skips = skips
        self.max_line_bytes = int(config.max_line_mb * 1024 * 1024)
        self.max_doc_bytes = int(config.shard_text_mb * 1024 * 1024)
        self.separator = re.compile(config.doc_separator) if config.doc_separator else None
        self.bytes_read = 0
        # How each plain-text file was read, in reading order: (path, {"format", "chosen_by", "evidence"}).
        self.text_formats: list[tuple[str, dict]] = []

    def __iter__(self) -> Iterator[Document]:
        for spec in self.specs:
            if spec.kind == "bookcorpus":
                yield from self._bookcorpus(spec)
            elif spec.kind == "wikipedia":
                yield from self._row_documents(self._hub_rows(spec), spec.label)
            elif is_saved_dataset(spec.location):
                yield from self._row_documents(self._saved_dataset_rows(spec.location), spec.location)
            else:
                for path in list_files(spec.location):
                    yield from self._file(path, spec.text_format or self.config.text_format)

    # -- local files ------------------------------------------------------------------------------

    def _file(self, path: str, text_format: str) -> Iterator[Document]:
        try:
            size = os.path.getsize(path)
        except OSError as error:
            raise PrepError(f"{path}: cannot read ({error.strerror})") from None
        if size == 0:
            self.skips.skip("empty_file", path)
            return
        lower = path.lower()
        if lower.endswith(".parquet"):
            documents = self._row_documents(self._parquet_rows(path), path)
        elif lower.endswith((".jsonl", ".json")):
            documents = self._row_documents(self._jsonl_rows(path), path, count_bytes=False)
        else:
            documents = self._text_file(path, text_format)
        count = 0
        for count, document in enumerate(documents, start=1):
            yield document
        if count == 0:
            self.skips.skip("file_without_text", path)

    def _lines(self, path: str) -> Iterator[str | None]:
        """Decoded lines without their newline; over-long and non-UTF-8 lines are skipped, counted and
        stand as None (so line numbers stay right and a skipped line does not end a document).

        Reads with a length limit so that a 100 MB line is never held in memory whole."""
        try:
            handle = open(path, "rb")
        except OSError as error:
            raise PrepError(f"{path}: cannot open ({error.strerror})") from None
        with handle:
            line_number = 0
            while True:
                raw = handle.readline(self.max_line_bytes + 1)
                if not raw:
                    return
                line_number += 1
                self.bytes_read += len(raw)
                if len(raw) > self.max_line_bytes and not raw.endswith(b"\n"):
                    while raw and not raw.endswith(b"\n"):  # drain the rest of the line
                        raw = handle.readline(self.max_line_bytes)
                        self.bytes_read += len(raw)
                    self.skips.skip(
                        "line_too_long", f"{path}:{line_number} (longer than --max-line-mb)"
                    )
                    yield None  # the line is left out; it does not end a document
                    continue
                try:
                    yield raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    self.skips.skip("line_not_utf8", f"{path}:{line_number} (not valid UTF-8)")
                    yield None

    def _text_file(self, path: str, text_format: str) -> Iterator[Document]:
        lines = (line for line in self._lines(path) if line is not None)
        first = ""
        for first in lines:
            if first.strip():
                break
        if first.lstrip().startswith("<doc "):
            self.text_formats.append((path, {"format": "wikiextractor", "chosen_by": "first line"}))
            yield from self._wikiextractor(path, lines)
            return
        rest = chain([first], lines) if first.strip() else iter(())
        decision = {"format": text_format, "chosen_by": "--text-format or the source's ::FORMAT"}
        if text_format == "auto":
            sample, rest = sample_and_rest(rest)
            chosen, evidence = decide_format(sample)
            decision = {"format": chosen, "chosen_by": "auto", "evidence": evidence}
        self.text_formats.append((path, decision))

        def cut() -> None:
            self.skips.skip("document_cut_at_size_limit", path)

        if decision["format"] == "paragraphs":
            documents = paragraph_documents(rest, self.max_doc_bytes, self.max_line_bytes, self.separator, cut)
        else:
            documents = line_documents(rest, self.max_doc_bytes, self.separator, cut)
        for paragraphs in documents:
            yield Document(paragraphs)

    def _wikiextractor(self, path: str, lines: Iterator[str]) -> Iterator[Document]:
        paragraphs: list[str] | None = []  # the first <doc> line was consumed by the caller
        title_pending = True
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("<doc "):
                if paragraphs:
                    self.skips.skip("unclosed_doc_tag", f"{path} (a <doc> has no </doc>; kept)")
                    yield Document(paragraphs)
                paragraphs, title_pending = [], True
            elif stripped == "</doc>":
                if paragraphs:
                    yield Document(paragraphs)
                else:
                    self.skips.skip("empty_document", path)
                paragraphs = None
            elif paragraphs is None or not stripped:
                continue
            elif title_pending:
                title_pending = False  # WikiExtractor repeats the title as the first line
            else:
                paragraphs.append(stripped)
        if paragraphs:
            self.skips.skip("unclosed_doc_tag", f"{path} (last <doc> has no </doc>; kept)")
            yield Document(paragraphs)

    # -- row sources (one document per row of a `text` column) -----------------------------------

    def _row_documents(self, rows: Iterator[object], where: str, count_bytes: bool = True) -> Iterator[Document]:
        for text in rows:
            if not isinstance(text, str):
                self.skips.skip("row_without_text", where)
                continue
            if count_bytes:  # JSON lines are counted as read, in file bytes
                self.bytes_read += len(text)
            paragraphs = []
            for line in text.split("\n"):
                if len(line) > self.max_line_bytes:
                    self.skips.skip("line_too_long", f"{where} (a row's line longer than --max-line-mb)")
                elif line.strip():
                    paragraphs.append(line)
            if paragraphs:
                yield Document(paragraphs)
            else:
                self.skips.skip("empty_document", where)

    def _jsonl_rows(self, path: str) -> Iterator[object]:
        for line_number, line in enumerate(self._lines(path), start=1):
            if line is None or not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                self.skips.skip("bad_json_line", f"{path}:{line_number}")
                continue
            yield row.get("text") if isinstance(row, dict) else None

    def _parquet_rows(self, path: str) -> Iterator[object]:
        batches = open_parquet(path).iter_batches(batch_size=1024, columns=["text"])
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as error:  # damage past the footer shows only when the data is decoded
                raise PrepError(f"{path}: damaged parquet data ({one_line(error)}); "
                                "re-download it or remove it from the source") from None
            yield from batch.column(0).to_pylist()

    def _saved_dataset_rows(self, path: str) -> Iterator[object]:
        for split in load_saved_dataset(path):
            for batch in split.select_columns(["text"]).iter(batch_size=1024):
                yield from batch["text"]

    # -- the datasets hub ------------------------------------------------------------------------

    def _hub_rows(self, spec: SourceSpec) -> Iterator[object]:
        import datasets

        local = os.path.exists(spec.location)
        local_form = "bookcorpus=DIR" if spec.kind == "bookcorpus" else f"wikipedia:{spec.config_name}=DIR"
        try:
            if local:
                stream = datasets.load_dataset(spec.location, split="train", streaming=True)
            elif spec.kind == "bookcorpus":
                # The hub's BookCorpus is a loading script, which datasets 4 and later refuse to run; the hub
                # keeps a parquet conversion of it on this branch, which any datasets release reads.
                stream = datasets.load_dataset(spec.location, revision=BOOKCORPUS_PARQUET_REVISION,
                                               data_dir=BOOKCORPUS_PARQUET_CONFIG, split="train", streaming=True)
            else:
                stream = datasets.load_dataset(spec.location, spec.config_name, split="train", streaming=True)
            if "text" not in (stream.column_names or ["text"]):
                raise PrepError(f"{spec.label}: has no 'text' column (columns: {stream.column_names})")
            for row in stream:
                yield row.get("text")
        except PrepError:
            raise
        except Exception as error:  # datasets raises many types for network and schema problems
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if "scripts are no longer supported" in first_line:
                raise PrepError(
                    f"--source {spec.label}: datasets {datasets.__version__} refuses it ({first_line}); download "
                    f"its parquet files (see README, 'Sources') and pass {local_form}") from None
            raise PrepError(
                f"--source {spec.label}: cannot load ({first_line}); check the network, or pass a local copy "
                f"with the same schema (parquet files with a 'text' column) as {local_form}") from None

    def _bookcorpus(self, spec: SourceSpec) -> Iterator[Document]:
        sentences: list[str] = []
        for text in self._hub_rows(spec):
            if not isinstance(text, str) or not text.strip():
                self.skips.skip("empty_row", spec.label)
                continue
            if len(text) > self.max_line_bytes:
                self.skips.skip("line_too_long", f"{spec.label} (a row longer than --max-line-mb)")
                continue
            self.bytes_read += len(text)
            sentences.append(text.strip())
            if len(sentences) == self.config.bookcorpus_doc_sentences:
                yield Document(sentences, presplit=True)
                sentences = []
        if sentences:
            yield Document(sentences, presplit=True)
