"""`shards`: sources → work units → (workers) sentences → WordPiece ids → SOP pairs → one shard per length.

Design: the main process only reads documents and deals them into work units of about
`shard_text_mb` of text; a unit's number depends on the input alone. Each unit is tokenized ONCE by a
worker, which then pairs it for every sequence length and every dupe pass with an RNG seeded by
(seed, seq_len, pass, unit), and writes one shard per length. Hence:

- determinism: a unit's shards depend on its text and the seed, not on which worker made them or how
  many there are, so shards and manifests are byte-identical for any `--num-proc`;
- resume: a unit is finished when its per-unit record (`seqN/.progress/unit-*.json`, written after its
  shard was renamed into place) exists for every length; a rerun keeps those units and redoes the rest;
- bounded memory: at most 2 units per worker are in flight, whatever the input size;
- `--part i/N`: units are dealt round-robin, so N machines make disjoint shards whose union is exactly
  the single-machine result.
"""

from __future__ import annotations

import fcntl
import glob
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections import Counter, deque
from typing import Iterator

import numpy as np

from formats.files import TMP_SUFFIX, atomic_write_bytes, file_sha256, remove_quietly
from formats.layout import seq_folder
from formats.layout import vocab_dir as vocab_dir_of
from formats.manifest import MANIFEST_FILE, build_manifest, load_manifest, write_manifest
from formats.shards import SHARD_PATTERN, build_table, write_shard
from formats.vocabulary import TOKENIZER_FILE, copy_vocab_files

from .config import PrepConfig, PrepError
from .sentences import split_sentences
from .sop_pairs import assemble, pair_document
from .sources import Document, DocumentReader, SkipCounter, parse_source, total_input_bytes
from .tokenizer import load_vocab, special_token_ids

STATE_FILE = "prep_config.json"
PROGRESS_DIR = ".progress"
ENCODE_BATCH_SENTENCES = 4096  # bounds the Encoding objects alive at once (~100 bytes per token)


# -- work units (main process) -------------------------------------------------------------------


def work_units(reader: DocumentReader, unit_bytes: int) -> Iterator[tuple[int, list[Document], dict, int]]:
    """(unit index, documents, reader skips attributed to the unit, input bytes) in input order."""
    documents: list[Document] = []
    size = 0
    index = 0
    skips_before: Counter = Counter()
    bytes_before = 0
    for document in reader:
        documents.append(document)
        size += document.num_bytes
        if size >= unit_bytes:
            yield index, documents, _delta(reader, skips_before), reader.bytes_read - bytes_before
            skips_before, bytes_before = Counter(reader.skips.counts), reader.bytes_read
            documents, size, index = [], 0, index + 1
    trailing_skips = _delta(reader, skips_before)
    if documents or trailing_skips or index == 0:
        # Skips after the last full unit make a (possibly empty) unit of their own so they are counted.
        yield index, documents, trailing_skips, reader.bytes_read - bytes_before


def _delta(reader: DocumentReader, before: Counter) -> dict:
    return {k: v - before.get(k, 0) for k, v in reader.skips.counts.items() if v - before.get(k, 0)}


# -- one unit (worker process) -------------------------------------------------------------------

_worker: dict = {}


def _init_worker(tokenizer_path: str, config: dict, out_dir: str, vocab_size: int, parent_pid: int) -> None:
    from tokenizers import Tokenizer

    _worker.update(
        tokenizer=Tokenizer.from_file(tokenizer_path),
        config=PrepConfig(**config),
        out_dir=out_dir,
        vocab_size=vocab_size,
    )
    if parent_pid:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    # After a kill -9 of the main process its workers must not linger as orphans.
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(1.0)


def tokenize_unit(documents: list[Document], config: PrepConfig,
                  tokenizer) -> tuple[np.ndarray, list[np.ndarray], Counter]:
    """Token ids of the unit (one flat array) and, per document, its sentence offsets into it."""
    skips: Counter = Counter()
    sentences: list[str] = []
    doc_sentence_counts = []
    for document in documents:
        document_sentences = split_sentences(document.paragraphs, document.presplit)
        sentences.extend(document_sentences)
        doc_sentence_counts.append(len(document_sentences))
    ids: list[list[int]] = []
    for start in range(0, len(sentences), ENCODE_BATCH_SENTENCES):
        batch = sentences[start : start + ENCODE_BATCH_SENTENCES]
        ids.extend(e.ids for e in tokenizer.encode_batch_fast(batch, add_special_tokens=False))
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    del ids, sentences
    ends = np.cumsum(lengths)
    doc_offsets: list[np.ndarray] = []
    first = 0
    for count in doc_sentence_counts:
        sentence_ends = ends[first : first + count]
        start = int(ends[first - 1]) if first > 0 else 0
        first += count
        bounds = np.concatenate([[start], sentence_ends])
        bounds = bounds[np.concatenate([[True], np.diff(bounds) > 0])]  # drop sentences with no token
        bounds = _cut_long_sentences(bounds, config.max_sentence_tokens)
        if len(bounds) < 2:
            skips["document_without_tokens"] += 1
            continue
        doc_offsets.append(bounds)
    return flat, doc_offsets, skips


def _cut_long_sentences(bounds: np.ndarray, max_tokens: int) -> np.ndarray:
    lengths = np.diff(bounds)
    if not (lengths > max_tokens).any():
        return bounds
    pieces = [bounds[:1]]
    for start, length in zip(bounds[:-1], lengths):
        pieces.append(np.minimum(start + np.arange(max_tokens, length + max_tokens, max_tokens), start + length))
    return np.concatenate(pieces)


def process_unit(unit_index: int, documents: list[Document], reader_skips: dict) -> dict:
    config: PrepConfig = _worker["config"]
    tokenizer = _worker["tokenizer"]
    special = special_token_ids(tokenizer)
    tokens, doc_offsets, skips = tokenize_unit(documents, config, tokenizer)
    skips.update(reader_skips)
    record = {
        "unit": unit_index,
        "inputs": {
            "documents": len(doc_offsets),
            "sentences": int(sum(len(o) - 1 for o in doc_offsets)),
            "tokens": int(len(tokens)),
        },
        "skips": {k: v for k, v in sorted(skips.items()) if v},
        "shards": {},
        "dropped_chunks": {},
    }
    for seq_len in config.seq_lens:
        spans = []
        dropped = 0
        for dupe in range(config.dupe_factor):
            rng = np.random.default_rng([config.seed, seq_len, dupe, unit_index])
            for offsets in doc_offsets:
                doc_spans, doc_dropped = pair_document(offsets, seq_len, config.short_seq_prob, rng)
                spans.extend(doc_spans)
                dropped += doc_dropped
        ids, offsets, a_lengths, labels = assemble(tokens, spans, special["[CLS]"], special["[SEP]"])
        table = build_table(ids, offsets, a_lengths, labels, _worker["vocab_size"])
        folder = seq_folder(_worker["out_dir"], seq_len)
        record["shards"][str(seq_len)] = write_shard(os.path.join(folder, SHARD_PATTERN.format(unit_index)), table)
        record["dropped_chunks"][str(seq_len)] = dropped
    data = json.dumps(record, sort_keys=True).encode("utf-8")
    for seq_len in config.seq_lens:  # the unit counts as done once its record is in every folder
        progress = os.path.join(seq_folder(_worker["out_dir"], seq_len), PROGRESS_DIR)
        atomic_write_bytes(os.path.join(progress, f"unit-{unit_index:06d}.json"), data)
    return json.loads(data)  # the same form a resumed run reads back, so manifests match byte for byte


# -- the run (main process) ----------------------------------------------------------------------


class OutputFolder:
    """The output folder: checks it is writable, locks it, and remembers the config it was made with."""

    def __init__(self, out_dir: str, config: PrepConfig, tokenizer_info: dict) -> None:
        self.out_dir = out_dir
        try:
            os.makedirs(out_dir, exist_ok=True)
            self._lock = open(os.path.join(out_dir, ".lock"), "w")
        except OSError as error:
            raise PrepError(f"--out {out_dir}: cannot write there ({error.strerror}); choose another folder") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PrepError(f"--out {out_dir}: another data_prep run is writing there; "
                            "wait for it or choose another folder") from None
        state = {"config": config.to_dict(), "tokenizer": tokenizer_info}
        state_path = os.path.join(out_dir, STATE_FILE)
        if os.path.exists(state_path):
            with open(state_path, encoding="utf-8") as handle:
                previous = json.load(handle)
            if previous != json.loads(json.dumps(state)):
                changed = sorted(
                    k for k in set(previous["config"]) | set(state["config"])
                    if previous["config"].get(k) != state["config"].get(k)
                ) + (["tokenizer"] if previous["tokenizer"] != state["tokenizer"] else [])
                raise PrepError(
                    f"--out {out_dir}: holds shards made with other settings ({', '.join(changed)}); "
                    "rerun with the same settings to resume, or choose a new --out"
                )
        else:
            atomic_write_bytes(state_path, (json.dumps(state, indent=1) + "\n").encode("utf-8"))
        for seq_len in config.seq_lens:
            folder = seq_folder(out_dir, seq_len)
            os.makedirs(os.path.join(folder, PROGRESS_DIR), exist_ok=True)
            for stale in glob.glob(os.path.join(folder, f"*{TMP_SUFFIX}")):
                remove_quietly(stale)  # an interrupted write; the unit is redone

    def finished_record(self, unit_index: int, seq_lens: list[int]) -> dict | None:
        record = None
        for seq_len in seq_lens:
            folder = seq_folder(self.out_dir, seq_len)
            path = os.path.join(folder, PROGRESS_DIR, f"unit-{unit_index:06d}.json")
            try:
                with open(path, encoding="utf-8") as handle:
                    record = json.load(handle)
                shard = record["shards"][str(seq_len)]
                if os.path.getsize(os.path.join(folder, shard["file"])) != shard["bytes"]:
                    return None
            except (OSError, ValueError, KeyError):
                return None
        return record


def copy_vocab(vocab_dir: str, out_dir: str) -> None:
    """The shard set carries its vocabulary, so `inspect` and the trainer need no other path."""
    copy_vocab_files(vocab_dir, vocab_dir_of(out_dir))


def tokenizer_info(vocab_dir: str) -> dict:
    tokenizer = load_vocab(vocab_dir)
    return {
        "sha256": file_sha256(os.path.join(vocab_dir, TOKENIZER_FILE)),
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "special_token_ids": special_token_ids(tokenizer),
    }


def run_shards(config: PrepConfig, vocab_dir: str, out_dir: str, num_proc: int, progress: bool = True) -> dict:
    specs = [parse_source(s) for s in config.sources]
    if not specs:
        raise PrepError("--source: give at least one source")
    info = tokenizer_info(vocab_dir)
    output = OutputFolder(out_dir, config, info)
    if progress:
        print(f"data_prep: resolved config {json.dumps(config.to_dict())} num_proc={num_proc}", file=sys.stderr)
    folders = {n: seq_folder(out_dir, n) for n in config.seq_lens}
    if all(os.path.isfile(os.path.join(f, MANIFEST_FILE)) for f in folders.values()) and not any(
        os.listdir(os.path.join(f, PROGRESS_DIR))
        for f in folders.values() if os.path.isdir(os.path.join(f, PROGRESS_DIR))
    ):
        print(f"data_prep: {out_dir} is complete with these settings; nothing to do", file=sys.stderr)
        return {n: load_manifest(f) for n, f in folders.items()}
    copy_vocab(vocab_dir, out_dir)

    skips = SkipCounter(quiet=not progress)
    reader = DocumentReader(specs, config, skips)
    unit_bytes = int(config.shard_text_mb * 1024 * 1024)
    worker_args = (os.path.join(vocab_dir, TOKENIZER_FILE), config.to_dict(), out_dir, info["vocab_size"])
    meter = Progress(total_input_bytes(specs), enabled=progress)
    records: dict[int, dict] = {}
    pool = None
    if num_proc > 1:
        # Each worker tokenizes on one core; rayon threads inside every worker would only compete.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        pool = multiprocessing.get_context("spawn").Pool(
            num_proc, initializer=_init_worker, initargs=(*worker_args, os.getpid())
        )
    else:
        _init_worker(*worker_args, 0)
    pending: deque = deque()

    def collect(oldest) -> None:
        unit_index, input_bytes, result = oldest
        record = result.get() if pool else result
        records[unit_index] = record
        meter.advance(input_bytes, record)

    try:
        for unit_index, documents, unit_skips, input_bytes in work_units(reader, unit_bytes):
            if unit_index % config.part_count != config.part_index:
                meter.advance(input_bytes, None)
                continue
            done = output.finished_record(unit_index, config.seq_lens)
            if done is not None:
                records[unit_index] = done
                meter.advance(input_bytes, done, resumed=True)
                continue
            if pool is None:
                collect((unit_index, input_bytes, process_unit(unit_index, documents, unit_skips)))
                continue
            result = pool.apply_async(process_unit, (unit_index, documents, unit_skips))
            pending.append((unit_index, input_bytes, result))
            del documents
            while len(pending) >= 2 * num_proc:
                collect(pending.popleft())
        while pending:
            collect(pending.popleft())
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        meter.close()

    ordered = [records[i] for i in sorted(records)]
    total_examples = sum(r["shards"][str(config.seq_lens[0])]["examples"] for r in ordered)
    if total_examples == 0:
        all_skips: Counter = Counter()
        for r in ordered:
            all_skips.update(r["skips"])
        raise PrepError(
            f"--source {' '.join(config.sources)}: no usable documents (skipped: {dict(all_skips) or 'none'}); "
            "check the paths and formats"
        )
    manifests = {}
    for seq_len, folder in folders.items():
        manifests[seq_len] = build_manifest(
            seq_len, config.to_dict(), info, ordered, (config.part_index, config.part_count)
        )
        write_manifest(folder, manifests[seq_len])
    for folder in folders.values():
        shutil.rmtree(os.path.join(folder, PROGRESS_DIR), ignore_errors=True)
    meter.summary(manifests, out_dir)
    return manifests


class Progress:
    """A tqdm bar over input bytes (with an ETA when the input size is known), documents/s and tokens/s."""

    def __init__(self, total_bytes: int | None, enabled: bool) -> None:
        from tqdm import tqdm

        self.start = time.monotonic()
        self.documents = 0
        self.tokens = 0
        self.resumed_units = 0
        self.enabled = enabled
        self.bar = tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc="shards", disable=not enabled,
            dynamic_ncols=True, file=sys.stderr,
        )

    def advance(self, input_bytes: int, record: dict | None, resumed: bool = False) -> None:
        if record is not None and not resumed:
            self.documents += record["inputs"]["documents"]
            self.tokens += record["inputs"]["tokens"]
        self.resumed_units += resumed
        elapsed = max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix(docs_per_s=f"{self.documents / elapsed:,.0f}",
                             tokens_per_s=f"{self.tokens / elapsed:,.0f}", refresh=False)
        self.bar.update(input_bytes)

    def close(self) -> None:
        self.bar.close()

    def summary(self, manifests: dict, out_dir: str) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        first = next(iter(manifests.values()))
        lines = [
            f"data_prep: {first['inputs'].get('documents', 0):,} documents, "
            f"{first['inputs'].get('sentences', 0):,} sentences, "
            f"{first['inputs'].get('tokens', 0):,} input tokens in {elapsed:,.1f} s "
            f"({self.tokens / max(elapsed, 1e-9):,.0f} tokens/s this run; {self.resumed_units} units kept from before)"
        ]
        for seq_len, manifest in manifests.items():
            totals = manifest["totals"]
            lines.append(
                f"  seq{seq_len}: {totals['examples']:,} examples, {totals['tokens']:,} tokens "
                f"in {totals['shards']} shards"
                f" -> {seq_folder(out_dir, seq_len)}"
            )
        if first["skipped"]:
            lines.append("  skipped: " + ", ".join(f"{k}={v:,}" for k, v in first["skipped"].items()))
        print("\n".join(lines), file=sys.stderr)

