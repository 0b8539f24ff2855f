"""Seeded SOP pairing (ALBERT's `create_instances_from_document`), on token coordinates.

The rules (targets, whole-sentence chunks, one-sentence chunks cut inside the sentence, swaps, ALBERT's
truncation): README, "From documents to examples". The output is a list of
`(first_start, first_end, second_start, second_end, label)` spans into the document's token array;
`[CLS] first [SEP] second [SEP]` is the example, each segment a contiguous run of the document's tokens. The
truncation is computed in closed form (how many tokens from each segment, then a binomial front/back split),
so a 100k-token sentence costs no more than a short one.
"""

from __future__ import annotations

import numpy as np

Span = tuple[int, int, int, int, int]


def truncation_amounts(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Tokens to remove from A and from B so that len_a + len_b <= max_tokens (ALBERT's rule)."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return 0, 0
    cut_a = cut_b = 0
    if len_a > len_b:
        cut_a = min(excess, len_a - len_b)
    else:
        cut_b = min(excess, len_b - len_a)
    remaining = excess - cut_a - cut_b
    # The segments are now equally long; ALBERT removes from B first on a tie, then alternates.
    cut_b += (remaining + 1) // 2
    cut_a += remaining // 2
    return cut_a, cut_b


def pair_document(
    sentence_offsets: np.ndarray,
    seq_len: int,
    short_seq_prob: float,
    rng: np.random.Generator,
) -> tuple[list[Span], int]:
    """SOP spans for one document whose sentence `i` is tokens [offsets[i], offsets[i+1]).

    Returns the spans and the number of one-token single-sentence chunks that were dropped."""
    max_tokens = seq_len - 3
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    offsets = sentence_offsets.tolist()
    num_sentences = len(offsets) - 1
    spans: list[Span] = []
    dropped = 0
    chunk_first = 0
    for last in range(num_sentences):
        chunk_length = offsets[last + 1] - offsets[chunk_first]
        if last < num_sentences - 1 and chunk_length < target:
            continue
        start, end = offsets[chunk_first], offsets[last + 1]
        chunk_sentences = last + 1 - chunk_first
        if chunk_sentences >= 2:
            split = offsets[chunk_first + int(rng.integers(1, chunk_sentences))]
        elif end - start >= 2:
            split = start + int(rng.integers(1, end - start))
        else:
            split = None
        chunk_first = last + 1
        if split is None:
            dropped += 1
            continue
        swapped = rng.random() < 0.5
        first = (split, end) if swapped else (start, split)
        second = (start, split) if swapped else (split, end)
        cut_first, cut_second = truncation_amounts(first[1] - first[0], second[1] - second[0], max_tokens)
        first = _trim(first, cut_first, rng)
        second = _trim(second, cut_second, rng)
        spans.append((first[0], first[1], second[0], second[1], int(swapped)))
    return spans, dropped


def _trim(segment: tuple[int, int], count: int, rng: np.random.Generator) -> tuple[int, int]:
    if count == 0:
        return segment
    from_front = int(rng.binomial(count, 0.5))
    return segment[0] + from_front, segment[1] - (count - from_front)


def assemble(
    tokens: np.ndarray, spans: list[Span], cls_id: int, sep_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat `[CLS] A [SEP] B [SEP]` ids of all spans, their offsets, A lengths and SOP labels.

    Built with one gather: an index array into `tokens` extended by the two special ids."""
    count = len(spans)
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=tokens.dtype), np.zeros(1, dtype=np.int64), empty, empty
    table = np.asarray(spans, dtype=np.int64)
    first_len = table[:, 1] - table[:, 0]
    second_len = table[:, 3] - table[:, 2]
    lengths = first_len + second_len + 3
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    cls_index, sep_index = len(tokens), len(tokens) + 1
    source = np.concatenate([tokens, np.asarray([cls_id, sep_id], dtype=tokens.dtype)])
    # Position of each output token inside its example, and the example it belongs to.
    example_of = np.repeat(np.arange(count), lengths)
    position = np.arange(total) - offsets[:-1][example_of]
    a_len = first_len[example_of]
    index = np.full(total, sep_index, dtype=np.int64)
    index[position == 0] = cls_index
    in_first = (position >= 1) & (position <= a_len)
    index[in_first] = table[example_of[in_first], 0] + position[in_first] - 1
    in_second = (position >= a_len + 2) & (position < lengths[example_of] - 1)
    index[in_second] = table[example_of[in_second], 2] + position[in_second] - a_len[in_second] - 2
    return source[index], offsets, first_len, table[:, 4]
