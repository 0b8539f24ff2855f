"""A vocabulary folder: `tokenizer.json` (the `tokenizers` pipeline) and `vocab.txt` (what transformers'
`BertTokenizer` / `SqueezeBertTokenizer` read). `data_prep` makes it; shard sets, checkpoints and exports
carry a copy."""

from __future__ import annotations

import os

from .files import atomic_write_bytes

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"


def copy_vocab_files(vocab_dir: str, target_dir: str) -> None:
    """Copy `tokenizer.json` and `vocab.txt` (those present) into `target_dir`, atomically."""
    os.makedirs(target_dir, exist_ok=True)
    for name in (TOKENIZER_FILE, VOCAB_FILE):
        source = os.path.join(vocab_dir, name)
        if os.path.isfile(source):
            with open(source, "rb") as handle:
                atomic_write_bytes(os.path.join(target_dir, name), handle.read())
