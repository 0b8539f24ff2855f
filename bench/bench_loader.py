"""Data loader alone (read + mask + collate), one process, on shards of the real corpus.

    python bench/bench_loader.py [--corpus ../shared/corpora/enwiki_wikiextractor] [--micro-batch 64]

Makes 128 and 512 shard sets from the corpus with `data_prep` (not timed), then times `Batcher` over
consecutive micro-batches of global sample indices (a fresh epoch permutation included), in this process
with no loader workers. The last line gives samples/s at 128 and 512.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pretrain.config import MaskingConfig  # noqa: E402
from pretrain.data import Batcher, ShardSet  # noqa: E402

DEFAULT_CORPUS = os.path.join(ROOT, "..", "shared", "corpora", "enwiki_wikiextractor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--whole-word", action="store_true", help="whole-word masking (masking.whole_word)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench_loader_")
    run = lambda *a: subprocess.run([sys.executable, "-m", "data_prep", *a], cwd=ROOT, check=True,  # noqa: E731
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run("vocab", "--source", args.corpus, "--out", os.path.join(work, "vocab"))
    run("shards", "--source", args.corpus, "--vocab", os.path.join(work, "vocab"),
        "--out", os.path.join(work, "shards"),
        "--quiet")
    rates = {}
    for seq_len, max_predictions in ((128, 20), (512, 80)):
        shards = ShardSet(os.path.join(work, "shards", f"seq{seq_len}"))
        masking = MaskingConfig(whole_word=args.whole_word)
        batcher = Batcher(shards, seed=0, masking=masking, max_predictions=max_predictions)
        batcher(np.arange(args.micro_batch))  # warm-up
        total = min(args.samples, 4 * len(shards))
        start = time.perf_counter()
        for first in range(0, total, args.micro_batch):
            batcher(np.arange(first, first + args.micro_batch))
        rates[seq_len] = total / (time.perf_counter() - start)
        print(f"seq {seq_len}: {len(shards):,} examples in the set, {total:,} samples in micro-batches of "
              f"{args.micro_batch}: {rates[seq_len]:,.0f} samples/s")
    masking = "whole-word masking" if args.whole_word else "token masking"
    print(f"loader samples/s (one process, {masking}): {rates[128]:,.0f} at 128, {rates[512]:,.0f} at 512")


if __name__ == "__main__":
    main()
