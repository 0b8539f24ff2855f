"""The manifest of a shard set, and `verify`.

`manifest.json` in each `seqN/` folder is the set's contract with the trainer (docs/design.md): format version,
the resolved prep config, tokenizer hash, vocab size and special-token ids, seed, per-shard example and
token counts with size and sha256, and the counts of every input that was skipped and why. It holds
nothing that depends on the machine, the time or the number of worker processes, so two runs on the same
inputs write byte-identical manifests.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pyarrow.compute as pc

from .errors import FormatError
from .files import atomic_write_bytes, file_sha256
from .shards import open_shard, schema

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


def split_records(unit_records: list[dict], split: str) -> list[dict]:
    """The records of one split, in the form `build_manifest` reads. A unit's record holds its training split in
    its own keys and, with `--holdout-fraction`, its held-out split's `inputs`, `shards` and `dropped_chunks`
    under "heldout"; reading problems (`skips`) are the input's, counted in the training split's manifest."""
    if split == "train":
        return unit_records
    return [{"unit": r["unit"], "skips": {}, "text_formats": r.get("text_formats", {}), **r["heldout"]}
            for r in unit_records]


def build_manifest(
    seq_len: int,
    config: dict,
    tokenizer_info: dict,
    unit_records: list[dict],
    part: tuple[int, int],
    split: str = "train",
) -> dict:
    """The manifest of one shard set; `unit_records` as `split_records` gives them for `split`."""
    shards = [record["shards"][str(seq_len)] for record in unit_records]
    skips: Counter = Counter()
    inputs: Counter = Counter()
    text_formats: dict = {}
    for record in unit_records:
        skips.update(record["skips"])
        text_formats.update(record.get("text_formats", {}))
        skips["single_token_chunk"] += record["dropped_chunks"][str(seq_len)]
        inputs.update(record["inputs"])
    return {
        "format_version": FORMAT_VERSION,
        "seq_len": seq_len,
        "split": split,  # "heldout": documents set aside by --holdout-fraction, for evaluation only
        "seed": config["seed"],
        "part": {"index": part[0], "count": part[1]},
        "config": config,
        "tokenizer": tokenizer_info,
        "schema": str(schema(tokenizer_info["vocab_size"])),
        "totals": {
            "shards": len(shards),
            "examples": sum(s["examples"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "sop_swapped": sum(s["sop_swapped"] for s in shards),
        },
        "inputs": dict(sorted(inputs.items())),
        "skipped": {reason: count for reason, count in sorted(skips.items()) if count},
        # How each plain-text file was read (data_prep.plain_text), in reading order.
        "text_formats": text_formats,
        # Each shard keeps its unit's own counts, so parts made on several machines merge exactly.
        "shards": [
            {"unit": r["unit"], **s, "inputs": r["inputs"], "skips": r["skips"],
             **({"text_formats": r["text_formats"]} if r.get("text_formats") else {}),
             "dropped_chunks": r["dropped_chunks"][str(seq_len)]}
            for r, s in zip(unit_records, shards)
        ],
    }


def records_from_manifest(manifest: dict) -> list[dict]:
    """The per-unit records a manifest was built from (the inverse of `build_manifest`, one length)."""
    seq = str(manifest["seq_len"])
    records = []
    for entry in manifest["shards"]:
        shard = {k: v for k, v in entry.items()
                 if k not in ("unit", "inputs", "skips", "text_formats", "dropped_chunks")}
        records.append({"unit": entry["unit"], "inputs": entry["inputs"], "skips": entry["skips"],
                        "text_formats": entry.get("text_formats", {}),
                        "dropped_chunks": {seq: entry["dropped_chunks"]}, "shards": {seq: shard}})
    return records


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode("utf-8")


def write_manifest(folder: str, manifest: dict) -> None:
    atomic_write_bytes(os.path.join(folder, MANIFEST_FILE), manifest_bytes(manifest))


def load_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise FormatError(f"{folder}: no {MANIFEST_FILE}; not a finished shard set (rerun `data_prep shards`)")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        raise FormatError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise FormatError(f"{path}: format version {version}, this tool reads {FORMAT_VERSION}")
    check_shard_names(manifest, path)
    return manifest


def is_plain_file_name(name: object) -> bool:
    """A name that can only mean a file in the folder it is joined to: no separator of any platform, not
    absolute, not `.` or `..`, no NUL."""
    return (isinstance(name, str) and name not in ("", ".", "..")
            and not any(character in name for character in "/\\\0"))


def check_shard_names(manifest: dict, path: str) -> None:
    """Every shard a manifest lists is a plain file name in the manifest's own folder. Manifests travel between
    machines and people (`merge` of parts made elsewhere, shard sets handed over), and every reader joins these
    names to the folder: `../x` or `/x` would make `merge` replace, and the readers read, a file elsewhere."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise FormatError(f"{path}: \"shards\" is not a list; not a shard-set manifest (rerun `data_prep shards`)")
    for index, entry in enumerate(shards):
        name = entry.get("file") if isinstance(entry, dict) else None
        if not is_plain_file_name(name):
            raise FormatError(f"{path}: shards[{index}] names the file {name!r}, which is not a plain file name in "
                              f"this folder; a manifest lists only its own folder's shards (remake the set with "
                              f"`data_prep shards`)")


def shard_set_folders(path: str) -> list[str]:
    """`path` itself if it is a shard set, else its `seq*/` subfolders that are."""
    if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        return [path]
    if not os.path.isdir(path):
        raise FormatError(f"{path}: no such folder")
    found = sorted(
        os.path.join(path, name)
        for name in os.listdir(path)
        if name.startswith("seq") and os.path.isfile(os.path.join(path, name, MANIFEST_FILE))
    )
    if not found:
        raise FormatError(f"{path}: no {MANIFEST_FILE} here nor in seq*/ subfolders")
    return found


def verify_folder(folder: str) -> list[str]:
    """Problems found in one shard set (empty when it is intact). Each names the shard."""
    manifest = load_manifest(folder)
    expected_schema = schema(manifest["tokenizer"]["vocab_size"])
    problems = []
    for shard in manifest["shards"]:
        path = os.path.join(folder, shard["file"])
        if not os.path.isfile(path):
            problems.append(f"{path}: missing")
            continue
        size = os.path.getsize(path)
        if size != shard["bytes"]:
            problems.append(f"{path}: {size} bytes, manifest says {shard['bytes']} (truncated or replaced)")
            continue
        if file_sha256(path) != shard["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (corrupt)")
            continue
        try:
            table = open_shard(path)
        except FormatError as error:
            problems.append(str(error))
            continue
        if not table.schema.equals(expected_schema):
            problems.append(f"{path}: schema {table.schema} is not {expected_schema}")
        elif table.num_rows != shard["examples"]:
            problems.append(f"{path}: {table.num_rows} examples, manifest says {shard['examples']}")
        else:
            lengths = pc.list_value_length(table.column("input_ids"))
            tokens = int(pc.sum(lengths).as_py() or 0)
            too_long = int(pc.sum(pc.greater(lengths, manifest["seq_len"])).as_py() or 0)
            if tokens != shard["tokens"]:
                problems.append(f"{path}: {tokens} tokens, manifest says {shard['tokens']}")
            if too_long:
                problems.append(f"{path}: {too_long} examples longer than {manifest['seq_len']}")
    listed = {shard["file"] for shard in manifest["shards"]}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".arrow") and name not in listed:
            problems.append(f"{os.path.join(folder, name)}: not listed in the manifest")
    return problems
