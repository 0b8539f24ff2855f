"""Work units: the main process reads documents and deals them into units of about `--shard-text-mb` of
text. A unit's index depends on the input alone, so its shards do not depend on the number of workers,
and `--part i/N` takes the units u with u mod N = i."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Iterator

from .sources import Document, DocumentReader


def work_units(reader: DocumentReader, unit_bytes: int) -> Iterator[tuple[int, list[Document], dict, dict, int]]:
    """(unit index, documents, reader skips attributed to the unit, how the plain-text files first read
    during the unit were read, input bytes) in input order."""
    documents: list[Document] = []
    size = 0
    index = 0
    skips_before: Counter = Counter()
    bytes_before = formats_before = 0
    for document in reader:
        documents.append(document)
        size += document.num_bytes
        if size >= unit_bytes:
            formats = dict(reader.text_formats[formats_before:])
            yield index, documents, _delta(reader, skips_before), formats, reader.bytes_read - bytes_before
            skips_before, bytes_before = Counter(reader.skips.counts), reader.bytes_read
            formats_before = len(reader.text_formats)
            documents, size, index = [], 0, index + 1
    trailing_skips = _delta(reader, skips_before)
    trailing_formats = dict(reader.text_formats[formats_before:])
    if documents or trailing_skips or trailing_formats or index == 0:
        # Skips after the last full unit make a (possibly empty) unit of their own so they are counted.
        yield index, documents, trailing_skips, trailing_formats, reader.bytes_read - bytes_before


def _delta(reader: DocumentReader, before: Counter) -> dict:
    return {k: v - before.get(k, 0) for k, v in reader.skips.counts.items() if v - before.get(k, 0)}


def is_held_out(seed: int, document_index: int, fraction: float) -> bool:
    """Whether the document at `document_index` (its position in the input, counted over all units) is held
    out: a hash of (seed, index) below `fraction`. It depends on nothing else, so the split is the same
    whatever the number of worker processes or parts."""
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(f"{seed}:{document_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64
