"""`merge`: the shard sets of `--part i/N` runs (one per machine) into one shard set.

Checks that every part used the same vocabulary, config and seed, that parts 0..N-1 are all there exactly
once, and that their units do not overlap and leave no gap; then links (or copies) the shards into the
output and writes the manifest the single-machine run would have written, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil

from formats.files import atomic_write_bytes, commit
from formats.layout import seq_folder, seq_lengths, shard_set_name, vocab_dir
from formats.manifest import MANIFEST_FILE, build_manifest, load_manifest, records_from_manifest, write_manifest
from formats.vocabulary import check_identity

from .config import PrepError
from .output_folder import STATE_FILE, copy_vocab


def _link_or_copy(source: str, target: str) -> None:
    if os.path.exists(target):
        if os.path.getsize(target) == os.path.getsize(source):
            return  # a rerun of an interrupted merge
        os.remove(target)
    tmp = target + ".tmp"
    try:
        os.link(source, tmp)
    except OSError:  # another filesystem: copy
        shutil.copyfile(source, tmp)
    commit(tmp, target)  # fsync, rename, fsync the folder


def merge_parts(part_dirs: list[str], out_dir: str) -> dict[int, dict]:
    if len(part_dirs) < 1:
        raise PrepError("--parts: give the output folders of the parts")
    seq_lens = None
    for part_dir in part_dirs:
        found = seq_lengths(part_dir) if os.path.isdir(part_dir) else None
        if not found:
            raise PrepError(f"--parts {part_dir}: no seq*/ shard sets there")
        if seq_lens is not None and found != seq_lens:
            raise PrepError(f"--parts {part_dir}: has lengths {found}, another part has {seq_lens}")
        seq_lens = found
    merged = {}
    held_out = load_manifest(seq_folder(part_dirs[0], seq_lens[0]))["config"].get("holdout_fraction", 0) > 0
    sets = [(n, split) for n in seq_lens for split in ("train", "heldout")[: 1 + held_out]]
    # Every manifest is read (and its shard names checked, `load_manifest`) before anything is written.
    all_manifests = {key: [load_manifest(seq_folder(d, *key)) for d in part_dirs] for key in sets}
    # the vocabulary the merged set carries is part 0's: the one the parts were made with
    check_identity(vocab_dir(part_dirs[0]), all_manifests[sets[0]][0]["tokenizer"].get("sha256"),
                   os.path.join(seq_folder(part_dirs[0], *sets[0]), MANIFEST_FILE),
                   f"not the vocabulary the parts were made with: restore that one in {part_dirs[0]}")
    for seq_len, split in sets:
        manifests = all_manifests[seq_len, split]
        first = manifests[0]
        count = first["part"]["count"]
        indices = [m["part"]["index"] for m in manifests]
        for part_dir, manifest in zip(part_dirs, manifests):
            where = f"--parts {part_dir} ({shard_set_name(seq_len, split)})"
            if manifest["part"]["count"] != count:
                raise PrepError(f"{where}: is part of {manifest['part']['count']}, others of {count}")
            if manifest["tokenizer"] != first["tokenizer"]:
                raise PrepError(f"{where}: made with another vocabulary than {part_dirs[0]}")
            settings = {k: v for k, v in manifest["config"].items() if k != "part_index"}
            if settings != {k: v for k, v in first["config"].items() if k != "part_index"}:
                changed = sorted(k for k in settings if settings[k] != first["config"].get(k))
                raise PrepError(f"{where}: made with other settings than {part_dirs[0]} ({', '.join(changed)})")
        duplicates = sorted({i for i in indices if indices.count(i) > 1})
        missing = sorted(set(range(count)) - set(indices))
        if duplicates or missing:
            raise PrepError(f"--parts: parts {duplicates} given twice" if duplicates else
                            f"--parts: part(s) {missing} of {count} missing; give every part's output folder")
        records = sorted((r for m in manifests for r in records_from_manifest(m)), key=lambda r: r["unit"])
        units = [r["unit"] for r in records]
        if units != list(range(len(units))):
            raise PrepError(f"--parts: units {sorted(set(range(units[-1] + 1)) - set(units))} of "
                            f"{shard_set_name(seq_len, split)} are missing (a part was not finished?)")
        folder = seq_folder(out_dir, seq_len, split)
        os.makedirs(folder, exist_ok=True)
        for part_dir, manifest in zip(part_dirs, manifests):
            for shard in manifest["shards"]:
                _link_or_copy(os.path.join(seq_folder(part_dir, seq_len, split), shard["file"]),
                              os.path.join(folder, shard["file"]))
        config = {**first["config"], "part_index": 0, "part_count": 1}
        merged[seq_len, split] = build_manifest(seq_len, config, first["tokenizer"], records, (0, 1), split)
        write_manifest(folder, merged[seq_len, split])
    copy_vocab(vocab_dir(part_dirs[0]), out_dir)
    first_set = merged[seq_lens[0], "train"]
    state = {"config": first_set["config"], "tokenizer": first_set["tokenizer"]}
    atomic_write_bytes(os.path.join(out_dir, STATE_FILE), (json.dumps(state, indent=1) + "\n").encode("utf-8"))
    return merged
