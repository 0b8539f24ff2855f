"""One work unit, in a worker process: sentences → WordPiece ids (tokenized once) → SOP pairs for every
length and dupe pass, with an RNG seeded by (seed, length, pass, unit) → one shard per length, then the
unit's record in every `seqN/.progress/` (the unit is finished once all exist)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections import Counter

import numpy as np

from formats.files import atomic_write_bytes
from formats.layout import seq_folder
from formats.shards import SHARD_PATTERN, build_table, write_shard

from .config import PrepConfig
from .output_folder import PROGRESS_DIR
from .sentences import split_sentences
from .sop_pairs import assemble, pair_document
from .sources import Document
from .tokenizer import special_token_ids
from .units import is_held_out

ENCODE_BATCH_SENTENCES = 4096  # bounds the Encoding objects alive at once (~100 bytes per token)

_worker: dict = {}


def init_worker(tokenizer_path: str, config: dict, out_dir: str, vocab_size: int, parent_pid: int) -> None:
    from tokenizers import Tokenizer

    _worker.update(
        tokenizer=Tokenizer.from_file(tokenizer_path),
        config=PrepConfig(**config),
        out_dir=out_dir,
        vocab_size=vocab_size,
    )
    if parent_pid:
        # Ctrl-C signals the whole process group: the main process answers it (ends the pool, prints one line,
        # exits 130); a worker that raised KeyboardInterrupt too would print its own traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    # After a kill -9 of the main process its workers must not linger as orphans.
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(1.0)


def tokenize_unit(documents: list[Document], config: PrepConfig,
                  tokenizer) -> tuple[np.ndarray, list[np.ndarray], list[int], Counter]:
    """Token ids of the unit (one flat array), per document its sentence offsets into it, and the documents'
    positions in `documents` (those without tokens are left out)."""
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
    kept: list[int] = []
    first = 0
    for position, count in enumerate(doc_sentence_counts):
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
        kept.append(position)
    return flat, doc_offsets, kept, skips


def _cut_long_sentences(bounds: np.ndarray, max_tokens: int) -> np.ndarray:
    lengths = np.diff(bounds)
    if not (lengths > max_tokens).any():
        return bounds
    pieces = [bounds[:1]]
    for start, length in zip(bounds[:-1], lengths):
        pieces.append(np.minimum(start + np.arange(max_tokens, length + max_tokens, max_tokens), start + length))
    return np.concatenate(pieces)


def process_unit(unit_index: int, documents: list[Document], reader_skips: dict, text_formats: dict,
                 first_document: int = 0) -> dict:
    """`first_document`: the input position of the unit's first document, which decides the held-out split."""
    config: PrepConfig = _worker["config"]
    tokenizer = _worker["tokenizer"]
    special = special_token_ids(tokenizer)
    tokens, doc_offsets, kept, skips = tokenize_unit(documents, config, tokenizer)
    skips.update(reader_skips)
    held_out = [is_held_out(config.seed, first_document + position, config.holdout_fraction) for position in kept]
    splits = {"train": [o for o, h in zip(doc_offsets, held_out) if not h]}
    if config.holdout_fraction > 0:
        splits["heldout"] = [o for o, h in zip(doc_offsets, held_out) if h]
    record = {
        "unit": unit_index,
        "skips": {k: v for k, v in sorted(skips.items()) if v},
        "text_formats": text_formats,  # how the plain-text files first read in this unit were read
    }
    for split, offsets in splits.items():
        # train: the record's own keys, as without a held-out split; heldout: the same keys under "heldout"
        part = record if split == "train" else record.setdefault("heldout", {})
        part.update(inputs=_inputs(offsets), shards={}, dropped_chunks={})
        for seq_len in config.seq_lens:
            part["shards"][str(seq_len)], part["dropped_chunks"][str(seq_len)] = _write_split(
                unit_index, tokens, offsets, seq_len, split, special)
    data = json.dumps(record, sort_keys=True).encode("utf-8")
    for seq_len in config.seq_lens:  # the unit counts as done once its record is in every folder
        progress = os.path.join(seq_folder(_worker["out_dir"], seq_len), PROGRESS_DIR)
        atomic_write_bytes(os.path.join(progress, f"unit-{unit_index:06d}.json"), data)
    return json.loads(data)  # the same form a resumed run reads back, so manifests match byte for byte


def _inputs(doc_offsets: list[np.ndarray]) -> dict:
    return {
        "documents": len(doc_offsets),
        "sentences": int(sum(len(o) - 1 for o in doc_offsets)),
        "tokens": int(sum(int(o[-1] - o[0]) for o in doc_offsets)),
    }


def _write_split(unit_index: int, tokens: np.ndarray, doc_offsets: list[np.ndarray], seq_len: int, split: str,
                 special: dict) -> tuple[dict, int]:
    """Pairs the documents for every dupe pass and writes the unit's shard of one length and split."""
    config: PrepConfig = _worker["config"]
    spans = []
    dropped = 0
    for dupe in range(config.dupe_factor):
        # the training split keeps the seeds it had before held-out splits existed
        rng = np.random.default_rng([config.seed, seq_len, dupe, unit_index] + ([1] if split != "train" else []))
        for offsets in doc_offsets:
            doc_spans, doc_dropped = pair_document(offsets, seq_len, config.short_seq_prob, rng)
            spans.extend(doc_spans)
            dropped += doc_dropped
    ids, offsets, a_lengths, labels = assemble(tokens, spans, special["[CLS]"], special["[SEP]"])
    table = build_table(ids, offsets, a_lengths, labels, _worker["vocab_size"])
    folder = seq_folder(_worker["out_dir"], seq_len, split)
    return write_shard(os.path.join(folder, SHARD_PATTERN.format(unit_index)), table), dropped
