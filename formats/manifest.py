"""The manifest of a shard set, and `verify`.

`manifest.json` in each `seqN/` folder is the set's contract with the trainer; what it records and what a
training start checks against it: docs/design.md, "Shards". Nothing in it depends on the machine, the time
or the number of worker processes, so two runs on the same inputs write byte-identical manifests.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pyarrow.compute as pc

from .errors import FormatError, one_line
from .files import atomic_write_bytes, file_sha256
from .layout import vocab_beside
from .shards import open_shard, schema, shard_tokens, token_type
from .vocabulary import has_vocabulary, identity_problem, record_problems, short

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


COUNT_KEYS = ("examples", "tokens", "sop_swapped")  # a shard entry's counts, summed in "totals"


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def type_problems(manifest: dict, path: str, fix: str) -> list[str]:
    """Every count of the shards' entries a count, `tokenizer.vocab_size` a size: what the other checks compare."""
    problems = [f"{path}: shards[{index}].{key} is {entry.get(key)!r}, not a count; {fix}"
                for index, entry in enumerate(manifest["shards"]) for key in COUNT_KEYS if not is_count(entry.get(key))]
    tokenizer = manifest.get("tokenizer")
    vocab_size = tokenizer.get("vocab_size") if isinstance(tokenizer, dict) else None
    if not is_count(vocab_size) or not vocab_size:
        problems.append(f"{path}: tokenizer.vocab_size is {vocab_size!r}, not a vocabulary size; {fix}")
    return problems


def total_problems(manifest: dict, path: str, fix: str) -> list[str]:
    """The manifest against itself, in O(shards): `totals` the sums over the shards' entries, `schema` the one
    `tokenizer.vocab_size` implies. Each line names `path` and the key, then `fix`. Needs `type_problems` clean."""
    totals, vocab_size = manifest.get("totals"), manifest["tokenizer"]["vocab_size"]
    if not isinstance(totals, dict):
        return [f"{path}: \"totals\" is {totals!r}, not the totals of the shards; {fix}"]
    sums = {"shards": len(manifest["shards"]),
            **{key: sum(entry[key] for entry in manifest["shards"]) for key in COUNT_KEYS}}
    problems = [f"{path}: totals.{key} is {totals.get(key)!r}, not the sum over the shards' entries ({value}); {fix}"
                for key, value in sums.items() if totals.get(key) != value]
    if manifest.get("schema") != str(schema(vocab_size)):
        problems.append(f"{path}: \"schema\" is not the one tokenizer.vocab_size {vocab_size} implies (token ids "
                        f"of {token_type(vocab_size)}); {fix}")
    return problems


def shard_problems(index: int, table, manifest: dict, folder: str, fix: str) -> list[str]:
    """Shard `index`'s Arrow file against its manifest entry, in O(record batches): the schema `vocab_size`
    implies, the rows (`examples`) and the tokens (`tokens`, from the list offsets). Needs `type_problems` clean."""
    entry, path = manifest["shards"][index], os.path.join(folder, MANIFEST_FILE)
    shard_path = os.path.join(folder, entry["file"])
    expected = schema(manifest["tokenizer"]["vocab_size"])
    if not table.schema.equals(expected):
        return [f"{shard_path}: schema {one_line(table.schema)} is not {one_line(expected)}, the one "
                f"tokenizer.vocab_size of {path} implies; {fix}"]
    problems = []
    if table.num_rows != entry["examples"]:
        problems.append(f"{shard_path}: {table.num_rows} examples, manifest says {entry['examples']} "
                        f"(shards[{index}].examples of {path}); {fix}")
    tokens = shard_tokens(table)
    if tokens != entry["tokens"]:
        problems.append(f"{shard_path}: {tokens} tokens, manifest says {entry['tokens']} "
                        f"(shards[{index}].tokens of {path}); {fix}")
    return problems


def content_problems(index: int, table, manifest: dict, folder: str, fix: str) -> list[str]:
    """What only reading every token of shard `index` shows: examples longer than `seq_len`, token ids beyond
    `vocab_size`, a `sop_swapped` count that is not the labels'. Needs `shard_problems` clean."""
    entry, path = manifest["shards"][index], os.path.join(folder, MANIFEST_FILE)
    shard_path = os.path.join(folder, entry["file"])
    ids = table.column("input_ids")
    problems = []
    too_long = int(pc.sum(pc.greater(pc.list_value_length(ids), manifest["seq_len"])).as_py() or 0)
    if too_long:
        problems.append(f"{shard_path}: {too_long} examples longer than {manifest['seq_len']}")
    largest = pc.max(pc.list_flatten(ids)).as_py()
    if largest is not None and largest >= manifest["tokenizer"]["vocab_size"]:
        problems.append(f"{shard_path}: token id {largest}, beyond tokenizer.vocab_size "
                        f"{manifest['tokenizer']['vocab_size']} of {path}; {fix}")
    swapped = int(pc.sum(table.column("sop_label")).as_py() or 0)
    if swapped != entry["sop_swapped"]:
        problems.append(f"{shard_path}: {swapped} swapped pairs, manifest says {entry['sop_swapped']} "
                        f"(shards[{index}].sop_swapped of {path}); {fix}")
    return problems


def vocabulary_problems(folder: str, manifest: dict, fix: str, required: bool) -> list[str]:
    """The vocabulary beside a shard set (`formats.layout.vocab_beside`) against the manifest's `tokenizer`: the
    vocabulary of sha256 `tokenizer.sha256` (its `vocab.txt` agreeing), then `vocab_size` and the special-token
    ids. Without a vocabulary there, a problem only when `required`. `fix` ends a line about an edited manifest."""
    path, vocab = os.path.join(folder, MANIFEST_FILE), vocab_beside(folder)
    record = manifest.get("tokenizer") if isinstance(manifest.get("tokenizer"), dict) else {}
    if not has_vocabulary(vocab):
        return [f"{vocab}: no vocabulary beside the shard set; copy there the one the shards were made with "
                f"(tokenizer.json of sha256 {short(record.get('sha256'))}): whole-word masking and the export read "
                "it"] if required else []
    problem = identity_problem(vocab, record.get("sha256"), path, "not the vocabulary the shards were made with: "
                               "restore that one there, or remake the shards with this one (`python -m data_prep "
                               "shards`)")
    return [problem] if problem else record_problems(vocab, record, path, fix)


def check_for_training(folder: str, manifest: dict, tables: list) -> None:
    """What training relies on, checked at its start in O(shards + record batches) (a shard set may hold terabytes:
    nothing is hashed but the vocabulary): the vocabulary beside the set, when there, is the one the shards were
    made with; the manifest's counts add up; every shard's rows and tokens are its entry's. Raises a FormatError
    with the first problem (`verify` lists them all)."""
    fix = f"run `python -m data_prep verify {folder}`, then restore the manifest or remake the shard set"
    path = os.path.join(folder, MANIFEST_FILE)
    problems = vocabulary_problems(folder, manifest, fix, required=False) + type_problems(manifest, path, fix)
    if not problems:
        problems += total_problems(manifest, path, fix)
        problems += [line for index, table in enumerate(tables)
                     for line in shard_problems(index, table, manifest, folder, fix)]
    if problems:
        more = f" (and {len(problems) - 1} more: `verify` lists them)" if len(problems) > 1 else ""
        raise FormatError(problems[0] + more)


def vocabulary_recorded_beside(vocab_dir: str) -> str | None:
    """The `tokenizer.sha256` that the shard sets beside a vocabulary folder (the `seq*/` of its data folder)
    record, when there are some and they agree; else None."""
    try:
        folders = shard_set_folders(os.path.dirname(os.path.abspath(vocab_dir)))
        records = {load_manifest(folder).get("tokenizer", {}).get("sha256") for folder in folders}
    except (FormatError, AttributeError):  # no shard set there, or one that is not a manifest
        return None
    return records.pop() if len(records) == 1 and None not in records else None


def verify_folder(folder: str) -> list[str]:
    """Problems found in one shard set (empty when it is intact): every shard hashed and read whole, the manifest's
    counts, and the vocabulary beside the set. Each names the file (and the manifest's key)."""
    manifest = load_manifest(folder)
    fix = "restore the manifest, or remake the shard set (`python -m data_prep shards`)"
    path = os.path.join(folder, MANIFEST_FILE)
    problems = vocabulary_problems(folder, manifest, fix, required=True)
    mistyped = type_problems(manifest, path, fix)
    problems += mistyped or total_problems(manifest, path, fix)
    for index, shard in enumerate(manifest["shards"]):
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
        if mistyped:
            continue  # the manifest's counts are not counts: nothing to compare with
        found = shard_problems(index, table, manifest, folder, fix)
        problems += found or content_problems(index, table, manifest, folder, fix)
    listed = {shard["file"] for shard in manifest["shards"]}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".arrow") and name not in listed:
            problems.append(f"{os.path.join(folder, name)}: not listed in the manifest")
    return problems
