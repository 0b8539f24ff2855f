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

import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter, deque

from formats.layout import seq_folder
from formats.manifest import MANIFEST_FILE, build_manifest, load_manifest, split_records, write_manifest
from formats.vocabulary import TOKENIZER_FILE

from .config import PrepConfig, PrepError
from .output_folder import PROGRESS_DIR, OutputFolder, copy_vocab, tokenizer_info
from .progress import Progress
from .sources import DocumentReader, SkipCounter, parse_source, total_input_bytes
from .unit_worker import init_worker, process_unit
from .units import work_units


def run_shards(config: PrepConfig, vocab_dir: str, out_dir: str, num_proc: int, progress: bool = True) -> dict:
    specs = [parse_source(s) for s in config.sources]
    if not specs:
        raise PrepError("--source: give at least one source")
    info = tokenizer_info(vocab_dir)
    output = OutputFolder(out_dir, config, info)
    if progress:
        print(f"data_prep: resolved config {json.dumps(config.to_dict())} num_proc={num_proc}", file=sys.stderr)
    folders = {n: seq_folder(out_dir, n) for n in config.seq_lens}
    shard_sets = output.shard_sets(config.seq_lens)
    if all(os.path.isfile(os.path.join(f, MANIFEST_FILE)) for f in shard_sets.values()):
        # Manifests are written only once every unit is done; a run killed while it then removed the
        # per-unit records left some behind, which are finished with here rather than taken for work to redo.
        for folder in folders.values():
            shutil.rmtree(os.path.join(folder, PROGRESS_DIR), ignore_errors=True)
        print(f"data_prep: {out_dir} is complete with these settings; nothing to do", file=sys.stderr)
        return {key: load_manifest(f) for key, f in shard_sets.items()}
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
            num_proc, initializer=init_worker, initargs=(*worker_args, os.getpid())
        )
    else:
        init_worker(*worker_args, 0)
    pending: deque = deque()
    first_document = 0  # the input position of the unit's first document: it decides the held-out split

    def collect(oldest) -> None:
        unit_index, input_bytes, result = oldest
        record = result.get() if pool else result
        records[unit_index] = record
        meter.advance(input_bytes, record)

    try:
        for unit_index, documents, unit_skips, text_formats, input_bytes in work_units(reader, unit_bytes):
            first_document, unit_args = first_document + len(documents), \
                (unit_index, documents, unit_skips, text_formats, first_document)
            if unit_index % config.part_count != config.part_index:
                meter.advance(input_bytes, None)
                continue
            done = output.finished_record(unit_index, config.seq_lens)
            if done is not None:
                records[unit_index] = done
                meter.advance(input_bytes, done, resumed=True)
                continue
            if pool is None:
                collect((unit_index, input_bytes, process_unit(*unit_args)))
                continue
            result = pool.apply_async(process_unit, unit_args)
            pending.append((unit_index, input_bytes, result))
            del documents, unit_args
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
    for (seq_len, split), folder in shard_sets.items():
        manifests[seq_len, split] = build_manifest(
            seq_len, config.to_dict(), info, split_records(ordered, split), (config.part_index, config.part_count),
            split,
        )
        write_manifest(folder, manifests[seq_len, split])
    for folder in folders.values():
        shutil.rmtree(os.path.join(folder, PROGRESS_DIR), ignore_errors=True)
    meter.summary(manifests, out_dir)
    return manifests
