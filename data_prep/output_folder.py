"""The output folder of `data_prep shards`: checked writable, locked against a second run, and bound to the
settings it was made with (`prep_config.json`), so a rerun resumes and another setting is refused. On a
filesystem that cannot lock (`formats.locks`) the run warns and goes on, as the trainer does with its
checkpoint folder: refusing would make such a filesystem unusable, and one run per folder is then the user's
job."""

from __future__ import annotations

import glob
import json
import os
import sys

from formats.files import TMP_SUFFIX, atomic_write_bytes, file_sha256, remove_quietly
from formats.layout import seq_folder
from formats.layout import vocab_dir as vocab_dir_of
from formats.locks import lock_folder
from formats.manifest import split_records
from formats.vocabulary import TOKENIZER_FILE, copy_vocab_files

from .config import PrepConfig, PrepError
from .tokenizer import load_vocab, special_token_ids

STATE_FILE = "prep_config.json"
PROGRESS_DIR = ".progress"


class OutputFolder:
    """The output folder: checks it is writable, locks it, and remembers the config it was made with."""

    def __init__(self, out_dir: str, config: PrepConfig, tokenizer_info: dict) -> None:
        self.out_dir = out_dir
        try:
            os.makedirs(out_dir, exist_ok=True)
            lock = lock_folder(out_dir)  # held until the process ends
        except OSError as error:
            raise PrepError(f"--out {out_dir}: cannot write there ({error.strerror}); choose another folder") from None
        if lock.holder:
            raise PrepError(f"--out {out_dir}: another data_prep run is writing there ({lock.holder}); "
                            "wait for it or choose another folder")
        if lock.unsupported:
            print(f"data_prep: warning: --out {out_dir}: its filesystem cannot lock the folder ({lock.unsupported}); "
                  "going on without the lock: make sure no other data_prep run writes there", file=sys.stderr)
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
        self.splits = ["train"] + (["heldout"] if config.holdout_fraction > 0 else [])
        for seq_len in config.seq_lens:
            for split in self.splits:
                folder = seq_folder(out_dir, seq_len, split)
                os.makedirs(folder, exist_ok=True)
                for stale in glob.glob(os.path.join(folder, f"*{TMP_SUFFIX}")):
                    remove_quietly(stale)  # an interrupted write; the unit is redone
            os.makedirs(os.path.join(seq_folder(out_dir, seq_len), PROGRESS_DIR), exist_ok=True)

    def shard_sets(self, seq_lens: list[int]) -> dict[tuple[int, str], str]:
        """(length, split) → folder of every shard set this run makes."""
        return {(n, split): seq_folder(self.out_dir, n, split) for n in seq_lens for split in self.splits}

    def finished_record(self, unit_index: int, seq_lens: list[int]) -> dict | None:
        record = None
        for seq_len in seq_lens:
            path = os.path.join(seq_folder(self.out_dir, seq_len), PROGRESS_DIR, f"unit-{unit_index:06d}.json")
            try:
                with open(path, encoding="utf-8") as handle:
                    record = json.load(handle)
                for split in self.splits:
                    shard = split_records([record], split)[0]["shards"][str(seq_len)]
                    if os.path.getsize(os.path.join(seq_folder(self.out_dir, seq_len, split), shard["file"])) \
                            != shard["bytes"]:
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
