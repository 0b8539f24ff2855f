"""Properties of the SOP pair builder (hypothesis) and ALBERT's truncation rule."""

import random
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep import sop_pairs
from data_prep.sop_pairs import assemble, pair_document, truncation_amounts

CLS, SEP = -1, -2  # outside the token range, so an example's specials are told from document tokens


def albert_truncate(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """ALBERT's truncate_seq_pair, literally: how many tokens it removes from A and from B."""
    a, b = len_a, len_b
    while a + b > max_tokens:
        if a > b:
            a -= 1
        else:
            b -= 1
    return len_a - a, len_b - b


@given(st.integers(1, 400), st.integers(1, 400), st.integers(5, 600))
def test_truncation_amounts_match_albert(len_a, len_b, max_tokens):
    assert truncation_amounts(len_a, len_b, max_tokens) == albert_truncate(len_a, len_b, max_tokens)


def split_example(row: np.ndarray, a_length: int):
    assert row[0] == CLS and row[a_length + 1] == SEP and row[-1] == SEP
    return row[1 : a_length + 1], row[a_length + 2 : -1]


documents = st.lists(st.integers(1, 300), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(documents, st.integers(8, 600), st.sampled_from([0.0, 0.1, 1.0]), st.integers(0, 2**32 - 1))
def test_pairs_are_well_formed(sentence_lengths, seq_len, short_seq_prob, seed):
    offsets = np.concatenate([[0], np.cumsum(sentence_lengths)])
    tokens = np.arange(offsets[-1], dtype=np.int64)  # token value = its position in the document
    spans, dropped = pair_document(offsets, seq_len, short_seq_prob, np.random.default_rng(seed))
    ids, row_offsets, a_lengths, labels = assemble(tokens, spans, CLS, SEP)
    assert len(a_lengths) == len(spans) == len(labels)
    sentence_starts = set(offsets.tolist())
    for index in range(len(spans)):
        row = ids[row_offsets[index] : row_offsets[index + 1]]
        assert len(row) <= seq_len
        first, second = split_example(row, int(a_lengths[index]))
        assert len(first) > 0 and len(second) > 0
        for segment in (first, second):
            # contiguous run of the document's own tokens, nothing invented
            assert np.all(np.diff(segment) == 1)
            assert 0 <= segment[0] and segment[-1] < len(tokens)
        assert labels[index] == int(second[0] < first[0])  # 1 exactly when B precedes A
        earlier, later = (second, first) if labels[index] else (first, second)
        assert earlier[-1] < later[0]  # the segments do not overlap
    assert dropped <= sum(1 for n in sentence_lengths if n == 1)
    # Examples never share a token; a document that fits one sequence is used whole.
    used = np.concatenate([ids[row_offsets[i] : row_offsets[i + 1]] for i in range(len(spans))] or [ids])
    used = used[used >= 0]
    assert len(np.unique(used)) == len(used)
    if short_seq_prob == 0.0 and len(tokens) <= seq_len - 3 and len(tokens) >= 2:
        assert len(used) == len(tokens)
    # Segments of multi-sentence chunks start and end at sentence boundaries unless truncated.
    for first_start, first_end, second_start, second_end, label in spans:
        start, split, end = (second_start, first_start, first_end) if label else (first_start, first_end, second_end)
        total = (first_end - first_start) + (second_end - second_start)
        if total < seq_len - 3 and split in sentence_starts:
            assert start in sentence_starts


@settings(max_examples=50, deadline=None)
@given(documents, st.integers(8, 600), st.integers(0, 2**32 - 1))
def test_pairing_is_a_function_of_the_seed(sentence_lengths, seq_len, seed):
    offsets = np.concatenate([[0], np.cumsum(sentence_lengths)])
    first = pair_document(offsets, seq_len, 0.1, np.random.default_rng(seed))
    second = pair_document(offsets, seq_len, 0.1, np.random.default_rng(seed))
    assert first == second


def test_sop_labels_are_balanced():
    rng = np.random.default_rng(0)
    labels = []
    for _ in range(300):
        lengths = [random.Random(len(labels)).randint(5, 40) for _ in range(30)]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        labels.extend(span[4] for span in pair_document(offsets, 128, 0.1, rng)[0])
    assert 0.45 < np.mean(labels) < 0.55


def test_one_sentence_chunk_is_split_inside_the_sentence():
    offsets = np.array([0, 50])
    spans, dropped = pair_document(offsets, 128, 0.0, np.random.default_rng(1))
    assert dropped == 0 and len(spans) == 1
    first_start, first_end, second_start, second_end, label = spans[0]
    covered = sorted([(first_start, first_end), (second_start, second_end)])
    assert covered[0][0] == 0 and covered[0][1] == covered[1][0] and covered[1][1] == 50


def test_one_token_document_is_dropped_and_counted():
    spans, dropped = pair_document(np.array([0, 1]), 128, 0.0, np.random.default_rng(1))
    assert spans == [] and dropped == 1


def lines_executed_in_sop_pairs(function, *args):
    """(result, number of lines of data_prep/sop_pairs.py that ran): a count of steps, not a clock."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        count += event == "line"
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename == sop_pairs.__file__ else None

    sys.settrace(tracer)
    try:
        result = function(*args)
    finally:
        sys.settrace(None)
    return result, count


def test_huge_sentence_is_truncated_in_constant_time():
    """Truncating a pair runs as many lines for an excess of 100 000 tokens as for one of 100 (ALBERT's
    truncate_seq_pair removes one token per iteration), and a 10-million-token sentence is cut to fit."""
    steps = {}
    for length in (100 + 512, 100_000 + 512):
        (spans, _), steps[length] = lines_executed_in_sop_pairs(
            pair_document, np.array([0, 3, length]), 512, 0.0, np.random.default_rng(2))
        assert sum(span[1] - span[0] + span[3] - span[2] for span in spans) == 509
    assert len(set(steps.values())) == 1, steps
    offsets = np.array([0, 3, 10_000_000])
    spans, _ = pair_document(offsets, 512, 0.0, np.random.default_rng(2))
    (first_start, first_end, second_start, second_end, _label), = spans
    assert (first_end - first_start) + (second_end - second_start) == 509
