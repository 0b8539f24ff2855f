"""`python -m pretrain export`: the pretraining command line.

Bad input ends with one line `pretrain: error: ...` naming the file or flag, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write the headless transformers-format model")
    export.add_argument("--checkpoint", required=True,
                        help="a model folder (model_config.json + model.safetensors) or a transformers SqueezeBERT folder")
    export.add_argument("--out", required=True, help="output folder (replaced atomically)")
    export.add_argument("--vocab", help="vocabulary folder (tokenizer.json, vocab.txt) if the checkpoint has none")
    return parser


def command_export(args: argparse.Namespace) -> None:
    from .export import export_headless, load_any

    model, vocab = load_any(args.checkpoint)
    vocab = args.vocab or vocab
    export_headless(model, args.out, vocab)
    print(f"pretrain: exported the headless model to {args.out}"
          f"{'' if vocab else ' (no tokenizer files: pass --vocab DIR)'}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from .export import ExportError
    from .model import ConfigError

    args = build_parser().parse_args(argv)
    try:
        {"export": command_export}[args.command](args)
    except (ExportError, ConfigError) as error:
        print(f"pretrain: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"pretrain: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
