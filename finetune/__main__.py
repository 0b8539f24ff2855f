"""`python -m finetune {glue,chain,demo}`: finetuning on GLUE, with or without distillation.

- `glue`: one task from a transformers-format model (flags, or a TOML file with the same keys);
- `chain`: the SqueezeBERT paper's recipe: MNLI with distillation → headless → each listed task with its
  teacher, and a results table beside the regime without distillation;
- `demo`: a short finetune of `python -m pretrain demo`'s export on a task made from its own corpus.

Bad input ends with one line `finetune: error: ...` naming the file or flag, and exit status 2, before any
training starts. Data-parallel: `torchrun --nproc_per_node N -m finetune glue ...` (the Trainer's DDP).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per `FinetuneConfig` field, its docstring as help; unset flags stay None (not an override)."""
    from .config import FinetuneConfig, field_docs, flag_name

    docs, types = field_docs(), typing.get_type_hints(FinetuneConfig)
    for field in dataclasses.fields(FinetuneConfig):
        if field.name in skip:
            continue
        kind = types[field.name]
        help_text = f"{docs.get(field.name, '')} (default: {field.default!r})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag_name(field.name), type=kind, default=None, metavar=kind.__name__.upper(),
                                help=help_text)


def flag_values(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    from .config import FinetuneConfig

    return {field.name: getattr(args, field.name) for field in dataclasses.fields(FinetuneConfig)
            if field.name not in skip and getattr(args, field.name, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    from formats.errors import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="python -m finetune", name="finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    glue = commands.add_parser("glue", help="finetune on one GLUE task (with --teacher: with distillation)")
    glue.add_argument("--config", help="a TOML file with any of the flags' keys (learning_rate = 2e-5); flags win")
    add_config_flags(glue)
    chain = commands.add_parser("chain", help="MNLI distilled -> headless -> other tasks distilled -> results table")
    chain.add_argument("--config", help="a TOML chain config (see configs/finetune/chain-paper.toml)")
    chain.add_argument("--model", help="the pretrained (headless) student")
    chain.add_argument("--data", help="hub, or the GLUE folder holding every task (glue_data/)")
    chain.add_argument("--out", help="output folder: mnli/, headless/, <task>/, without/<task>/, results.{md,json}")
    chain.add_argument("--mnli-teacher", help="the MNLI teacher (a transformers classifier with 3 labels)")
    chain.add_argument("--task", action="append", default=None, metavar="TASK=TEACHER",
                       help="a task after MNLI and its teacher, e.g. rte=teachers/rte (repeatable)")
    chain.add_argument("--without", action=argparse.BooleanOptionalAction, default=None,
                       help="also finetune each task from --model without distillation, for the table (default on)")
    chain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a finetuning setting for every run of the chain, e.g. --set epochs=1 (repeatable)")
    demo = commands.add_parser("demo", help="finetune the pretrain demo's export on a task made from its corpus")
    demo.add_argument("--out", default="demo_out", help="the folder of python -m pretrain demo (default %(default)s)")
    demo.add_argument("--epochs", type=float, default=None, help="default: the demo config's")
    return parser


def command_glue(args: argparse.Namespace) -> None:
    from .config import build_config, read_toml
    from .run import run_glue

    layers = [(f"--config {args.config}: ", read_toml(args.config))] if args.config else []
    config = build_config(*layers, ("", flag_values(args)))
    run_glue(config)


def command_chain(args: argparse.Namespace) -> None:
    from .chain import load_chain_config, run_chain

    run_chain(load_chain_config(args))


def command_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, args.epochs)


def main(argv: list[str] | None = None) -> int:
    from formats.errors import UserError, os_error_line
    from formats.host_memory import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # each training step takes back the memory the last one freed, without page faults
    try:
        {"glue": command_glue, "chain": command_chain, "demo": command_demo}[args.command](args)
        return 0
    except UserError as error:  # bad input of every kind, and failed writes: one line
        print(f"finetune: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        print(f"finetune: error: {os_error_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # the Trainer's checkpoints are complete or ignored: the same command resumes
        print("\nfinetune: interrupted; run the same command again to resume from the last complete checkpoint",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
