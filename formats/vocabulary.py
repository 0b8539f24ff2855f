"""A vocabulary folder: `tokenizer.json` (the `tokenizers` pipeline) and `vocab.txt` (what transformers'
`BertTokenizer` / `SqueezeBertTokenizer` read). `data_prep` makes it; shard sets, checkpoints and exports
carry a copy.

A vocabulary is known by the sha256 of its `tokenizer.json`: a shard set's manifest records it
(`tokenizer.sha256`), a checkpoint records the one it was trained with. `vocab.txt` is derived from
`tokenizer.json` (its wordpieces in id order, one a line), so it is checked to agree with it, and the one hash
vouches for both files (whole-word masking reads `vocab.txt`; an export ships both)."""

from __future__ import annotations

import hashlib
import os

from .errors import FormatError, one_line
from .files import atomic_write_bytes, file_sha256

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # BERT's; a manifest records their ids
SHORT_HASH = 12  # hex digits of a sha256 a message shows


def short(sha256: object) -> str:
    """A sha256 as a message shows it (its first 12 hex digits)."""
    return str(sha256)[:SHORT_HASH]


def copy_vocab_files(vocab_dir: str, target_dir: str) -> None:
    """Copy `tokenizer.json` and `vocab.txt` (those present) into `target_dir`, atomically."""
    os.makedirs(target_dir, exist_ok=True)
    for name in (TOKENIZER_FILE, VOCAB_FILE):
        source = os.path.join(vocab_dir, name)
        if os.path.isfile(source):
            with open(source, "rb") as handle:
                atomic_write_bytes(os.path.join(target_dir, name), handle.read())


def has_vocabulary(vocab_dir: str) -> bool:
    """Whether a vocabulary (either of its files) is there."""
    return any(os.path.isfile(os.path.join(vocab_dir, name)) for name in (TOKENIZER_FILE, VOCAB_FILE))


def vocab_txt_bytes(tokenizer) -> bytes | None:
    """The `vocab.txt` of a `tokenizers.Tokenizer`: its wordpieces in id order, one a line; None when its ids
    have gaps (no `vocab.txt` can say it)."""
    by_id = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        return None
    return "".join(token + "\n" for token, _ in by_id).encode("utf-8")


def special_token_ids(tokenizer) -> dict[str, int | None]:
    """The ids of `SPECIAL_TOKENS` in a `tokenizers.Tokenizer` (None for one it lacks)."""
    return {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}


def read_tokenizer(vocab_dir: str):
    """The `tokenizers.Tokenizer` of a vocabulary folder; a FormatError names the file when it is unreadable."""
    from tokenizers import Tokenizer

    path = os.path.join(vocab_dir, TOKENIZER_FILE)
    try:
        return Tokenizer.from_file(path)
    except Exception as error:  # tokenizers raises a bare Exception for a missing or malformed file
        raise FormatError(f"{path}: not a tokenizers file ({one_line(error, 120)})") from None


def identity_problem(vocab_dir: str, sha256: str, recorded_in: str, fix: str) -> str | None:
    """None when `vocab_dir` holds the vocabulary of sha256 `sha256` that `recorded_in` records (its `vocab.txt`
    agreeing with its `tokenizer.json`); else one line naming the file, the expected and found hash, and `fix`."""
    tokenizer_path = os.path.join(vocab_dir, TOKENIZER_FILE)
    vocab_path = os.path.join(vocab_dir, VOCAB_FILE)
    if not os.path.isfile(tokenizer_path):
        return f"{tokenizer_path}: missing ({recorded_in} records sha256 {short(sha256)}); {fix}"
    found = file_sha256(tokenizer_path)
    if found != sha256:
        return f"{tokenizer_path}: sha256 {short(found)}, but {recorded_in} records {short(sha256)}; {fix}"
    expected = vocab_txt_bytes(read_tokenizer(vocab_dir))
    if expected is None:
        return f"{tokenizer_path}: its wordpiece ids have gaps, so no {VOCAB_FILE} can go with it; {fix}"
    if not os.path.isfile(vocab_path):
        return f"{vocab_path}: missing (it goes with {TOKENIZER_FILE} of sha256 {short(sha256)}); {fix}"
    with open(vocab_path, "rb") as handle:
        present = handle.read()
    if present != expected:
        lines, wanted = present.split(b"\n"), expected.split(b"\n")
        line = next((n for n, (a, b) in enumerate(zip(lines, wanted)) if a != b), min(len(lines), len(wanted)))
        return (f"{vocab_path}: sha256 {short(hashlib.sha256(present).hexdigest())}, but the wordpieces of "
                f"{TOKENIZER_FILE} (sha256 {short(sha256)}) in id order make "
                f"{short(hashlib.sha256(expected).hexdigest())} (first difference at line {line + 1}); {fix}")
    return None


def check_identity(vocab_dir: str, sha256: str, recorded_in: str, fix: str) -> None:
    """Raises `identity_problem`'s line as a FormatError unless `vocab_dir` holds the vocabulary of `sha256`."""
    problem = identity_problem(vocab_dir, sha256, recorded_in, fix)
    if problem:
        raise FormatError(problem)


def record_problems(vocab_dir: str, record: dict, manifest_path: str, fix: str) -> list[str]:
    """How a manifest's `tokenizer` record (`vocab_size`, `special_token_ids`) differs from the vocabulary in
    `vocab_dir`, the one whose sha256 it records: only an edit of the manifest makes them differ."""
    tokenizer = read_tokenizer(vocab_dir)
    problems = []
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if record.get("vocab_size") != size:
        problems.append(f"{manifest_path}: tokenizer.vocab_size {record.get('vocab_size')!r}, but the vocabulary "
                        f"of sha256 {short(record.get('sha256'))} has {size} wordpieces; {fix}")
    special, actual = record.get("special_token_ids"), special_token_ids(tokenizer)
    if special != actual:
        problems.append(f"{manifest_path}: tokenizer.special_token_ids {special!r}, but the vocabulary of sha256 "
                        f"{short(record.get('sha256'))} has {actual!r}; {fix}")
    return problems
