"""The WordPiece vocabulary: train one with `tokenizers`, import a BERT `vocab.txt`, load one.

A vocabulary folder holds `tokenizer.json` (the `tokenizers` pipeline: BERT normalization, BERT
pre-tokenizer, WordPiece, the `[CLS] A [SEP] B [SEP]` template) and `vocab.txt` (what transformers'
`BertTokenizer` / `SqueezeBertTokenizer` read). Both are written atomically.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from formats.files import atomic_write_bytes
from formats.vocabulary import (  # noqa: F401 (re-exported)
    TOKENIZER_FILE,
    VOCAB_FILE,
    copy_vocab_files,
    special_token_ids,
    vocab_txt_bytes,
)

from .config import SPECIAL_TOKENS, PrepError

DEFAULT_VOCAB_SIZE = 30528  # BERT's 30522 rounded up to a multiple of 64 (the paper's size)


def _bert_pipeline(model: WordPiece, lowercase: bool) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _add_template(tokenizer: Tokenizer) -> None:
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def train_vocab(texts: Iterable[str], vocab_size: int, lowercase: bool, min_frequency: int = 2) -> Tokenizer:
    tokenizer = _bert_pipeline(WordPiece(unk_token="[UNK]"), lowercase)
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    _add_template(tokenizer)
    return tokenizer


def import_vocab(vocab_txt: str, lowercase: bool) -> Tokenizer:
    if not os.path.isfile(vocab_txt):
        raise PrepError(f"--import-vocab {vocab_txt}: no such file")
    try:
        model = WordPiece.from_file(vocab_txt, unk_token="[UNK]")
    except Exception as error:  # tokenizers raises a bare Exception for unreadable files
        raise PrepError(f"--import-vocab {vocab_txt}: not a WordPiece vocab.txt ({error})") from None
    tokenizer = _bert_pipeline(model, lowercase)
    missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise PrepError(f"--import-vocab {vocab_txt}: lacks the special tokens {missing}")
    _add_template(tokenizer)
    return tokenizer


def vocab_lines(tokenizer: Tokenizer) -> bytes:
    lines = vocab_txt_bytes(tokenizer)
    if lines is None:
        raise PrepError("vocabulary ids are not contiguous; cannot write vocab.txt")
    return lines


def save_vocab(tokenizer: Tokenizer, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_bytes(os.path.join(out_dir, TOKENIZER_FILE), tokenizer.to_str(pretty=True).encode("utf-8"))
    atomic_write_bytes(os.path.join(out_dir, VOCAB_FILE), vocab_lines(tokenizer))


def load_vocab(vocab_dir: str) -> Tokenizer:
    path = os.path.join(vocab_dir, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise PrepError(
            f"--vocab {vocab_dir}: no {TOKENIZER_FILE} there; make one with `python -m data_prep vocab`"
        )
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as error:  # tokenizers raises a bare Exception for malformed JSON
        raise PrepError(f"{path}: not a tokenizers file ({error})") from None
    missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise PrepError(f"{path}: vocabulary lacks the special tokens {missing}")
    return tokenizer


def training_texts(documents: Iterable, clean) -> Iterator[str]:
    for document in documents:
        for paragraph in document.paragraphs:
            yield clean(paragraph)
