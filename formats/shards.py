"""Shard files: Arrow IPC stream files, the format `datasets` memory-maps (`Dataset.from_file`).

One row is one example: `input_ids` (`[CLS] A [SEP] B [SEP]`, unmasked, uint16 when the vocabulary
fits in 16 bits), `a_length` (tokens of A, so token types and the SOP split are recoverable) and
`sop_label` (1 when the segments are swapped). Opening a shard maps it; `table["input_ids"][i]` is an
O(1) lookup through the list offsets, and nothing is read from disk until it is touched.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import FormatError
from .files import atomic_write_bytes

SHARD_PATTERN = "shard-{:06d}.arrow"


def token_type(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 1 << 16 else pa.uint32()


def schema(vocab_size: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("input_ids", pa.list_(token_type(vocab_size))),
            pa.field("a_length", pa.uint16()),
            pa.field("sop_label", pa.uint8()),
        ]
    )


def build_table(
    ids: np.ndarray, offsets: np.ndarray, a_lengths: np.ndarray, labels: np.ndarray, vocab_size: int
) -> pa.Table:
    value_type = token_type(vocab_size)
    values = pa.array(ids.astype(np.uint16 if value_type == pa.uint16() else np.uint32), type=value_type)
    input_ids = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pa.Table.from_arrays(
        [
            input_ids.cast(pa.list_(value_type)),
            pa.array(a_lengths.astype(np.uint16), type=pa.uint16()),
            pa.array(labels.astype(np.uint8), type=pa.uint8()),
        ],
        schema=schema(vocab_size),
    )


def write_shard(path: str, table: pa.Table) -> dict:
    """Write atomically; returns the shard's record (file name, counts, size, sha256)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=8192)
    data = sink.getvalue()
    atomic_write_bytes(path, data)
    labels = table.column("sop_label")
    return {
        "file": os.path.basename(path),
        "examples": table.num_rows,
        "tokens": int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0),
        "sop_swapped": int(pc.sum(labels).as_py() or 0),
        "bytes": data.size,
        "sha256": hashlib.sha256(memoryview(data)).hexdigest(),
    }


def shard_tokens(table: pa.Table) -> int:
    """The tokens of a shard from the list offsets of its record batches (last minus first of each): O(batches),
    none of the tokens is read."""
    total = 0
    for chunk in table.column("input_ids").chunks:
        if len(chunk):
            total += chunk.offsets[-1].as_py() - chunk.offsets[0].as_py()
    return total


def open_shard(path: str) -> pa.Table:
    """Memory-map a shard (zero-copy); raises FormatError naming the file if it is not a valid shard."""
    try:
        source = pa.memory_map(path, "r")
        return pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowInvalid) as error:
        raise FormatError(f"{path}: not a readable shard ({error})") from None
