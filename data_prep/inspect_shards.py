"""`inspect`: examples decoded back to text, and the statistics of a shard set."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.compute as pc

from formats.layout import vocab_beside
from formats.manifest import MANIFEST_FILE, load_manifest
from formats.shards import open_shard
from formats.vocabulary import TOKENIZER_FILE, check_identity

from .config import PrepError
from .tokenizer import load_vocab


def find_vocab(folder: str, vocab_dir: str | None) -> str:
    """--vocab, else the vocabulary `data_prep shards` copies beside the shard sets (`formats.layout`)."""
    candidate = vocab_dir or vocab_beside(folder)
    if os.path.isfile(os.path.join(candidate, TOKENIZER_FILE)):
        return candidate
    raise PrepError(f"{folder}: no vocabulary at {candidate}; pass --vocab DIR")


def iter_examples(folder: str, manifest: dict, count: int):
    shown = 0
    for shard in manifest["shards"]:
        table = open_shard(os.path.join(folder, shard["file"]))
        ids = table.column("input_ids")
        for row in range(table.num_rows):
            if shown == count:
                return
            yield ids[row].values.to_numpy(), int(table["a_length"][row].as_py()), int(table["sop_label"][row].as_py())
            shown += 1


def print_examples(folder: str, count: int, as_json: bool, vocab_dir: str | None) -> None:
    manifest = load_manifest(folder)
    vocab = find_vocab(folder, vocab_dir)
    # decoded with another vocabulary, the examples would read as other words
    check_identity(vocab, manifest["tokenizer"].get("sha256"), os.path.join(folder, MANIFEST_FILE),
                   "not the vocabulary the shards were made with: pass --vocab with that one")
    tokenizer = load_vocab(vocab)
    for input_ids, a_length, label in iter_examples(folder, manifest, count):
        tokens = [tokenizer.id_to_token(int(i)) for i in input_ids]
        segment_a = tokenizer.decode(input_ids[1 : 1 + a_length].tolist())
        segment_b = tokenizer.decode(input_ids[2 + a_length : -1].tolist())
        if as_json:
            print(json.dumps({"tokens": tokens, "sop_label": label, "a_length": a_length,
                              "text_a": segment_a, "text_b": segment_b}, ensure_ascii=False))
        else:
            print(f"sop_label={label} ({'swapped' if label else 'in order'}) length={len(tokens)}")
            print(f"  A: {segment_a}")
            print(f"  B: {segment_b}")


def shard_set_stats(folder: str, batch_size: int = 32, seed: int = 0) -> dict:
    """Counts, a length histogram and the padding a batch would carry (static and dynamic padding)."""
    manifest = load_manifest(folder)
    seq_len = manifest["seq_len"]
    lengths = []
    swapped = 0
    for shard in manifest["shards"]:
        table = open_shard(os.path.join(folder, shard["file"]))
        lengths.append(pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False))
        swapped += int(pc.sum(table.column("sop_label")).as_py() or 0)
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    examples = int(len(lengths_all))
    tokens = int(lengths_all.sum())
    edges = np.linspace(0, seq_len, 9).astype(int)
    histogram, _ = np.histogram(lengths_all, bins=edges) if examples else (np.zeros(8, dtype=int), edges)
    # Dynamic padding: random batches padded to their longest member, as a shuffled loader would make.
    dynamic = 0.0
    if examples:
        order = np.random.default_rng(seed).permutation(examples)
        usable = examples - examples % batch_size or examples
        batches = lengths_all[order[:usable]].reshape(-1, min(batch_size, usable))
        dynamic = 1.0 - batches.sum() / (batches.max(axis=1).sum() * batches.shape[1])
    return {
        "folder": folder,
        "seq_len": seq_len,
        "shards": len(manifest["shards"]),
        "examples": examples,
        "tokens": tokens,
        "mean_length": tokens / examples if examples else 0.0,
        "length_histogram": {f"{lo}-{hi}": int(n) for lo, hi, n in zip(edges[:-1], edges[1:], histogram)},
        "padding_fraction_static": 1.0 - tokens / (examples * seq_len) if examples else 0.0,
        f"padding_fraction_dynamic_batch{batch_size}": float(dynamic),
        "sop_swapped_fraction": swapped / examples if examples else 0.0,
        "skipped": manifest["skipped"],
        "inputs": manifest["inputs"],
        "text_formats": manifest.get("text_formats", {}),
    }


def print_stats(stats: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"stats": stats}))
        return
    print(f"{stats['folder']}: seq_len {stats['seq_len']}, {stats['shards']} shards, {stats['examples']:,} examples, "
          f"{stats['tokens']:,} tokens (mean length {stats['mean_length']:.1f})")
    peak = max(stats["length_histogram"].values() or [1]) or 1
    for bucket, count in stats["length_histogram"].items():
        print(f"  {bucket:>10} {count:>9,} {'#' * round(40 * count / peak)}")
    dynamic_key = next(k for k in stats if k.startswith("padding_fraction_dynamic"))
    print(f"  padding a batch carries: {stats['padding_fraction_static']:.1%} padded to {stats['seq_len']}, "
          f"{stats[dynamic_key]:.1%} padded to the longest of a random batch ({dynamic_key.rsplit('batch', 1)[1]})")
    print(f"  SOP balance: {stats['sop_swapped_fraction']:.1%} swapped")
    if stats["skipped"]:
        print("  skipped: " + ", ".join(f"{k}={v:,}" for k, v in stats["skipped"].items()))
    print_text_formats(stats["text_formats"])


def print_text_formats(text_formats: dict, shown: int = 5) -> None:
    """How the plain-text files were read: a count per format, then the first few files with auto's evidence."""
    if not text_formats:
        return
    counts: dict[str, int] = {}
    for decision in text_formats.values():
        key = f"{decision['format']} ({decision['chosen_by']})"
        counts[key] = counts.get(key, 0) + 1
    print("  plain-text files read as: " + ", ".join(f"{k}: {v:,}" for k, v in counts.items()))
    for path, decision in list(text_formats.items())[:shown]:
        evidence = decision.get("evidence")
        why = (f": {evidence['ending_mid_sentence']:.0%} of {evidence['lines_inside_blocks']} lines inside "
               f"blocks end mid-sentence, 90% of lines <= {evidence['p90_line_chars']} chars") if evidence else ""
        print(f"    {path}: {decision['format']}{why}")
    if len(text_formats) > shown:
        print(f"    ... and {len(text_formats) - shown:,} more (--json lists all)")

