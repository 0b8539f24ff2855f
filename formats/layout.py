"""Where things are in a prepared data folder: the one answer to "where is the vocabulary?" and to "what is
a seq folder?".

    OUT/vocab/        tokenizer.json, vocab.txt
    OUT/seq128/       shard-000000.arrow ... manifest.json
    OUT/seq512/       ...
    OUT/seq128-heldout/   the held-out split (`--holdout-fraction`), the same format; beside the others so
    OUT/seq512-heldout/   that its vocabulary is found the same way
"""

from __future__ import annotations

import os
import re

VOCAB_DIR = "vocab"
SEQ_FOLDER = re.compile(r"^seq(\d+)$")
SPLITS = ("train", "heldout")


def shard_set_name(seq_len: int, split: str = "train") -> str:
    """`seq128`, or `seq128-heldout` for the held-out split."""
    return f"seq{seq_len}" + ("" if split == "train" else f"-{split}")


def seq_folder(root: str, seq_len: int, split: str = "train") -> str:
    """The shard set of length `seq_len` under a prepared data folder (`split` "heldout": its held-out twin)."""
    return os.path.join(root, shard_set_name(seq_len, split))


def seq_lengths(root: str) -> list[int]:
    """The lengths of the `seqN/` shard sets under a prepared data folder, sorted."""
    return sorted(int(match.group(1)) for name in os.listdir(root) if (match := SEQ_FOLDER.match(name))
                  and os.path.isdir(os.path.join(root, name)))


def vocab_dir(root: str) -> str:
    """The vocabulary of a prepared data folder."""
    return os.path.join(root, VOCAB_DIR)


def vocab_beside(shard_folder: str) -> str:
    """The vocabulary of the data folder a `seqN/` shard set belongs to."""
    return vocab_dir(os.path.dirname(os.path.abspath(shard_folder)))
