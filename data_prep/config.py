"""Configuration of a data-preparation run, as documented and validated dataclasses.

Everything that changes the bytes of the shards lives in `PrepConfig` and is recorded in every
manifest; what only changes how fast the run goes (`num_proc`) is kept out of it, so that the shards
and manifests are byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from formats.errors import UserError
from formats.vocabulary import SPECIAL_TOKENS  # noqa: F401 (re-exported)

from .plain_text import TEXT_FORMATS


class PrepError(UserError):
    """Bad input to data preparation: the CLI prints the message on one line and exits 2."""

# Ids of the special tokens (formats.vocabulary.SPECIAL_TOKENS) are looked up in the vocabulary, never assumed:
# an imported Google BERT vocab.txt has [PAD]=0, [UNK]=100, [CLS]=101, ..., a vocabulary trained here 0..4.


@dataclass
class PrepConfig:
    """How sources become MLM+SOP examples. Stored verbatim in every manifest."""

    sources: list[str] = field(default_factory=list)
    """Source specs (see `data_prep.sources`), read in the order given."""

    seq_lens: list[int] = field(default_factory=lambda: [128, 512])
    """One shard set per length, all made from one tokenization pass."""

    seed: int = 12345
    """Seeds the pairing (short targets, A/B split points, swaps, truncation sides)."""

    dupe_factor: int = 1
    """Passes over every document with different pairings (BERT used 5-10 with static masking; with
    dynamic masking at train time 1 is the usual choice)."""

    short_seq_prob: float = 0.1
    """Probability of a shorter random target length (ALBERT/BERT: 0.1), so the model sees short inputs."""

    shard_text_mb: float = 8.0
    """Input text per work unit; every unit becomes one shard per length. Bounds memory per worker and is
    the grain of resume and of `--part` (units are dealt round-robin to parts)."""

    max_line_mb: float = 1.0
    """Lines longer than this are skipped and counted: no paragraph of real prose is this long, and a
    100 MB line would otherwise be held, split and tokenized in one piece."""

    max_sentence_tokens: int = 4096
    """Sentences with more wordpieces are cut into pieces of this size (a run-on 'sentence' of a table or
    a list); keeps one sentence from making a single-segment chunk larger than any sequence."""

    text_format: str = "auto"
    """How plain-text files are read (`data_prep.plain_text`): `lines` (a line is a paragraph, a blank line
    ends a document), `paragraphs` (hard-wrapped text: lines joined into paragraphs, a file is a document) or
    `auto` (decided per file from its first lines). A `::FORMAT` suffix on a `--source` overrides it."""

    doc_separator: str | None = None
    """A regular expression: a plain-text line that matches it whole ends a document (several documents in
    one file)."""

    bookcorpus_doc_sentences: int = 256
    """BookCorpus on the hub is one sentence per row with no book boundaries: a document is this many
    consecutive rows (enough for several 512-token pairs; a boundary between books falls inside roughly
    one document in 20 for books of ~5k sentences)."""

    lowercase: bool = True
    """Uncased vocabulary (the paper's). Recorded so a cased run cannot resume an uncased one."""

    holdout_fraction: float = 0.0
    """Share of the documents set aside for evaluation (the paper held out 3%): a document goes to the held-out
    shard sets (`seqN-heldout/`) when a hash of (seed, its index in the input) says so, so the split is by
    document, the same for any `--num-proc` or `--part`, and disjoint from training."""

    part_index: int = 0
    part_count: int = 1
    """`--part i/N`: this run makes only the units u with u % N == i (0-based), for N machines."""

    def __post_init__(self) -> None:
        if not self.seq_lens:
            raise PrepError("--seq-len: give at least one sequence length")
        for length in self.seq_lens:
            if not 8 <= length <= 65535:
                raise PrepError(f"--seq-len {length}: must be between 8 and 65535")
        if len(set(self.seq_lens)) != len(self.seq_lens):
            raise PrepError(f"--seq-len {self.seq_lens}: lengths repeat; give each once")
        self.seq_lens = sorted(self.seq_lens)
        if self.dupe_factor < 1:
            raise PrepError(f"--dupe-factor {self.dupe_factor}: must be at least 1")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise PrepError(f"--short-seq-prob {self.short_seq_prob}: must be within [0, 1]")
        if self.shard_text_mb <= 0:
            raise PrepError(f"--shard-text-mb {self.shard_text_mb}: must be positive")
        if self.text_format not in TEXT_FORMATS:
            raise PrepError(f"--text-format {self.text_format}: choose one of {', '.join(TEXT_FORMATS)}")
        if self.doc_separator is not None:
            try:
                re.compile(self.doc_separator)
            except re.error as error:
                raise PrepError(f"--doc-separator {self.doc_separator!r}: not a regular expression ({error})") \
                    from None
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise PrepError(f"--holdout-fraction {self.holdout_fraction}: must be within [0, 1), e.g. 0.03")
        if self.max_line_mb <= 0:
            raise PrepError(f"--max-line-mb {self.max_line_mb}: must be positive")
        if self.max_sentence_tokens < 2:
            raise PrepError(f"--max-sentence-tokens {self.max_sentence_tokens}: must be at least 2")
        if self.bookcorpus_doc_sentences < 2:
            raise PrepError("--bookcorpus-doc-sentences: must be at least 2 (SOP needs two segments)")
        if not 0 <= self.part_index < self.part_count:
            raise PrepError(
                f"--part {self.part_index}/{self.part_count}: need 0 <= i < N (parts are 0-based)"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_part(text: str) -> tuple[int, int]:
    """Parse `--part i/N`."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise PrepError(f"--part {text!r}: expected i/N, for example 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise PrepError(f"--part {text}: need N >= 1 and 0 <= i < N (parts are 0-based)")
    return index, count
