"""`python -m data_prep {vocab,shards,inspect,verify,demo}`: the data-preparation command line.

Bad input ends with one line `data_prep: error: ...` naming the file or flag, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from formats.errors import OneLineArgumentParser, UserError, os_error_line
from formats.layout import seq_folder, shard_set_name, vocab_dir

from .config import SPECIAL_TOKENS, PrepConfig, PrepError, parse_part
from .plain_text import TEXT_FORMATS

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", action="append", default=[], metavar="SPEC",
        help="repeatable: a file or folder (text, WikiExtractor, .jsonl, .parquet, a saved `datasets` "
        "folder), `bookcorpus[=DIR]`, or `wikipedia:CONFIG[=DIR]` (e.g. wikipedia:20231101.en)",
    )
    parser.add_argument("--max-line-mb", type=float, default=PrepConfig.max_line_mb,
                        help="skip (and count) lines longer than this (default %(default)s)")
    parser.add_argument("--text-format", choices=TEXT_FORMATS, default=PrepConfig.text_format,
                        help="plain-text files: `lines` (a line is a paragraph, a blank line ends a document), "
                        "`paragraphs` (hard-wrapped: lines joined, a file is a document) or `auto` (decided per "
                        "file; default). A source can carry its own: --source books/::paragraphs")
    parser.add_argument("--doc-separator", metavar="REGEX",
                        help="a plain-text line matching REGEX whole ends a document (many documents in a file)")
    parser.add_argument("--bookcorpus-doc-sentences", type=int, default=PrepConfig.bookcorpus_doc_sentences,
                        help="BookCorpus rows per document (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="python -m data_prep", name="data_prep", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    vocab = commands.add_parser("vocab", help="train an uncased WordPiece vocabulary, or import a vocab.txt")
    _add_source_options(vocab)
    vocab.add_argument("--import-vocab", metavar="VOCAB_TXT", help="use this BERT vocab.txt instead of training")
    vocab.add_argument("--out", required=True, help="folder for tokenizer.json and vocab.txt")
    vocab.add_argument("--vocab-size", type=int, default=30528, help="target size (default %(default)s)")
    vocab.add_argument("--min-frequency", type=int, default=2, help="default %(default)s")
    vocab.add_argument("--cased", action="store_true", help="keep case (the paper's vocabulary is uncased)")

    shards = commands.add_parser("shards", help="make MLM+SOP shard sets, one per --seq-len, in one pass")
    _add_source_options(shards)
    shards.add_argument("--vocab", required=True, help="folder with tokenizer.json (from `vocab`)")
    shards.add_argument("--out", required=True, help="output folder; shard sets go to OUT/seq<N>/")
    shards.add_argument("--seq-len", type=int, nargs="+", default=[128, 512], help="default: 128 512")
    shards.add_argument("--num-proc", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: all cores, %(default)s); does not change the output")
    shards.add_argument("--seed", type=int, default=PrepConfig.seed, help="default %(default)s")
    shards.add_argument("--dupe-factor", type=int, default=PrepConfig.dupe_factor, help="default %(default)s")
    shards.add_argument("--short-seq-prob", type=float, default=PrepConfig.short_seq_prob, help="default %(default)s")
    shards.add_argument("--holdout-fraction", type=float, default=PrepConfig.holdout_fraction, metavar="F",
                        help="hold out this share of the documents (e.g. 0.03, as the paper) in OUT/seq<N>-heldout/ "
                             "for evaluation; by document, deterministic (default %(default)s: none)")
    shards.add_argument("--part", default="0/1", help="i/N: make only part i (0-based) of N, for N machines")
    shards.add_argument("--shard-text-mb", type=float, default=PrepConfig.shard_text_mb,
                        help="input text per shard (default %(default)s)")
    shards.add_argument("--max-sentence-tokens", type=int, default=PrepConfig.max_sentence_tokens,
                        help="cut longer sentences into pieces (default %(default)s)")
    shards.add_argument("--cased", action="store_true", help="must match the vocabulary")
    shards.add_argument("--quiet", action="store_true", help="no progress bar, warnings or summary")

    inspect = commands.add_parser("inspect", help="decode examples and print statistics of a shard set")
    inspect.add_argument("dir", help="a seq<N>/ folder, or the folder holding several")
    inspect.add_argument("-n", "--num-examples", type=int, default=3, help="default %(default)s")
    inspect.add_argument("--json", action="store_true", help="one JSON object per line")
    inspect.add_argument("--vocab", help="vocabulary folder (default: the copy beside the shards)")
    inspect.add_argument("--no-stats", action="store_true")

    verify = commands.add_parser("verify", help="check every shard against its manifest")
    verify.add_argument("dir", help="a seq<N>/ folder, or the folder holding several")

    merge = commands.add_parser("merge", help="merge the outputs of --part i/N runs into one shard set")
    merge.add_argument("--parts", nargs="+", required=True, help="the --out folders of all parts")
    merge.add_argument("--out", required=True)

    demo = commands.add_parser("demo", help="vocabulary + 128/512 shards from Python's own documentation")
    demo.add_argument("--out", default="demo_out", help="default %(default)s")
    demo.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
    return parser


def prep_config(args: argparse.Namespace) -> PrepConfig:
    part_index, part_count = parse_part(args.part)
    return PrepConfig(
        sources=list(args.source),
        seq_lens=list(args.seq_len),
        seed=args.seed,
        dupe_factor=args.dupe_factor,
        short_seq_prob=args.short_seq_prob,
        shard_text_mb=args.shard_text_mb,
        max_line_mb=args.max_line_mb,
        text_format=args.text_format,
        doc_separator=args.doc_separator,
        max_sentence_tokens=args.max_sentence_tokens,
        bookcorpus_doc_sentences=args.bookcorpus_doc_sentences,
        lowercase=not args.cased,
        holdout_fraction=args.holdout_fraction,
        part_index=part_index,
        part_count=part_count,
    )


def command_vocab(args: argparse.Namespace) -> None:
    from .sentences import clean
    from .sources import DocumentReader, SkipCounter, parse_source
    from .tokenizer import import_vocab, save_vocab, train_vocab, training_texts

    if args.import_vocab and args.source:
        raise PrepError("give either --import-vocab or --source, not both")
    if not args.import_vocab:
        if not args.source:
            raise PrepError("--source: give at least one source to train on (or --import-vocab)")
        if args.vocab_size < 16:
            raise PrepError(f"--vocab-size {args.vocab_size}: too small")
        config = PrepConfig(sources=list(args.source), max_line_mb=args.max_line_mb,
                            text_format=args.text_format, doc_separator=args.doc_separator,
                            bookcorpus_doc_sentences=args.bookcorpus_doc_sentences)
        specs = [parse_source(s) for s in config.sources]  # bad sources are named before --out is made
    _check_writable(args.out)  # before minutes of training, not after
    if args.import_vocab:
        tokenizer = import_vocab(args.import_vocab, lowercase=not args.cased)
    else:
        reader = DocumentReader(specs, config, SkipCounter())
        tokenizer = train_vocab(training_texts(reader, clean), args.vocab_size, not args.cased, args.min_frequency)
        if tokenizer.get_vocab_size() <= len(SPECIAL_TOKENS):
            raise PrepError(f"--source {' '.join(args.source)}: no usable text to train a vocabulary on")
    save_vocab(tokenizer, args.out)
    print(f"data_prep: vocabulary of {tokenizer.get_vocab_size():,} wordpieces -> {args.out}", file=sys.stderr)


def _check_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise PrepError(f"--out {folder}: cannot write there ({error.strerror}); choose another folder") from None


def command_shards(args: argparse.Namespace) -> None:
    from .pipeline import run_shards

    if args.num_proc < 1:
        raise PrepError(f"--num-proc {args.num_proc}: must be at least 1")
    config = prep_config(args)
    run_shards(config, args.vocab, args.out, args.num_proc, progress=not args.quiet)


def command_inspect(args: argparse.Namespace) -> None:
    from formats.manifest import shard_set_folders

    from .inspect_shards import print_examples, print_stats, shard_set_stats

    for folder in shard_set_folders(args.dir):
        print_examples(folder, args.num_examples, args.json, args.vocab)
        if not args.no_stats:
            print_stats(shard_set_stats(folder), args.json)


def command_verify(args: argparse.Namespace) -> int:
    from formats.manifest import shard_set_folders, verify_folder

    failed = False
    for folder in shard_set_folders(args.dir):
        problems = verify_folder(folder)
        for problem in problems:
            print(f"data_prep: verify: {problem}", file=sys.stderr)
        failed |= bool(problems)
        print(f"{folder}: {'FAILED' if problems else 'ok'}")
    return 1 if failed else 0


def command_merge(args: argparse.Namespace) -> None:
    from .merge import merge_parts

    merged = merge_parts(args.parts, args.out)
    for (seq_len, split), manifest in merged.items():
        totals = manifest["totals"]
        print(f"data_prep: merged {len(args.parts)} parts: {shard_set_name(seq_len, split)} {totals['examples']:,} "
              f"examples in {totals['shards']} shards -> {seq_folder(args.out, seq_len, split)}", file=sys.stderr)


def command_demo(args: argparse.Namespace) -> None:
    from .builtin_corpus import write_corpus

    corpus = write_corpus(os.path.join(args.out, "corpus", "python_docs.jsonl"))
    vocab_folder = vocab_dir(args.out)
    shards_dir = os.path.join(args.out, "shards")
    parser = build_parser()
    # The demo vocabulary is small (8192) so the tiny demo model trains quickly; the paper's is 30528.
    command_vocab(parser.parse_args(["vocab", "--source", corpus, "--out", vocab_folder, "--vocab-size", "8192"]))
    command_shards(parser.parse_args(
        ["shards", "--source", corpus, "--vocab", vocab_folder, "--out", shards_dir, "--num-proc", str(args.num_proc)]
    ))
    print("data_prep: demo done; look at the examples with: python -m data_prep inspect "
          f"{seq_folder(shards_dir, 128)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"vocab": command_vocab, "shards": command_shards, "inspect": command_inspect,
                "verify": command_verify, "merge": command_merge, "demo": command_demo}
    try:
        return handlers[args.command](args) or 0
    except UserError as error:  # bad input, unreadable shard sets, failed writes: one line
        print(f"data_prep: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `inspect | head`: the reader has what it wanted; a subclass of OSError, so first
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush would fail again
        return 0
    except OSError as error:  # an environment failure no check foresaw: still one line, naming the file
        print(f"data_prep: error: {os_error_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("data_prep: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
