"""`python -m pretrain {train,export,demo}`: the pretraining command line.

Bad input ends with one line `pretrain: error: ...` naming the file or flag, and exit status 2. A rank that
loses contact with another (a node died, the network failed, a collective timed out) ends with one line
saying so and exit status 1: the last complete checkpoint stands, and relaunching every node resumes. A run
whose loss or gradients stay non-finite (`optimizer.max_consecutive_skips` steps in a row) ends with one
line naming the step and exit status 1, its last complete checkpoint kept.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import traceback

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    from formats.errors import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="python -m pretrain", name="pretrain", description=__doc__.splitlines()[0])
    # The `deepspeed` launcher passes --local_rank before the command; the rank comes from the environment.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="pretrain (resumes from the latest complete checkpoint by itself)")
    train.add_argument("--config", required=True, help="a TOML run config (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one key, e.g. --set phases.0.steps=100 (repeatable)")
    demo = commands.add_parser("demo", help="data prep + phase 1 + phase 2 + export, tiny model, a few minutes on CPU")
    demo.add_argument("--out", default="demo_out")
    export = commands.add_parser("export", help="write the headless transformers-format model")
    export.add_argument("--checkpoint", required=True,
                        help="a trainer checkpoint (a checkpoint dir or one step-N/ in it), a model folder "
                        "(model_config.json + model.safetensors) or a transformers SqueezeBERT folder")
    export.add_argument("--out", required=True, help="output folder (replaced atomically)")
    export.add_argument("--vocab", help="vocabulary folder (tokenizer.json, vocab.txt) if the checkpoint has none")
    return parser


def command_export(args: argparse.Namespace) -> None:
    from .checkpoint import is_checkpoint
    from .model_files import export_headless, load_any

    model, trained_with = load_any(args.checkpoint)
    vocab = args.vocab or trained_with.folder
    if vocab and trained_with.sha256 is None and is_checkpoint(args.checkpoint):
        print(f"pretrain: note: {args.checkpoint} records no vocabulary sha256 (saved by an earlier version) and no "
              f"manifest beside {trained_with.folder} names one: the tokenizer files of {vocab} are exported "
              "unchecked", file=sys.stderr)
    export_headless(model, args.out, vocab, trained_with)
    print(f"pretrain: exported the headless model to {args.out}"
          f"{'' if vocab else ' (no tokenizer files: pass --vocab DIR)'}", file=sys.stderr)


def command_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import Trainer

    config = load_config(args.config, args.set)
    trainer = Trainer(config)
    code = trainer.fit()
    trainer.close()
    return code


def command_demo(args: argparse.Namespace) -> int:
    import importlib.resources
    import os
    import subprocess

    from formats.layout import seq_folder, vocab_dir

    from .config import load_config
    from .model import PRESETS
    from .model_files import export_headless
    from .trainer import Trainer

    prep = subprocess.run([sys.executable, "-m", "data_prep", "demo", "--out", args.out])
    if prep.returncode:
        return prep.returncode
    with importlib.resources.as_file(PRESETS / "demo.toml") as config_path:  # shipped in the package
        config = load_config(str(config_path), [
            f'phases.0.shards="{seq_folder(os.path.join(args.out, "shards"), 128)}"',
            f'phases.1.shards="{seq_folder(os.path.join(args.out, "shards"), 512)}"',
            f'checkpoint.dir="{os.path.join(args.out, "checkpoints")}"',
            f'logging.dir="{os.path.join(args.out, "tensorboard")}"',
        ])
    trainer = Trainer(config)
    code = trainer.fit()
    trainer.close()
    if code:
        return code
    export_dir = os.path.join(args.out, "export")
    export_headless(trainer.model, export_dir, vocab_dir(args.out))
    print(f"pretrain: demo done.\n  TensorBoard: tensorboard --logdir {config.logging.dir}\n"
          f"  headless transformers model: {export_dir} (SqueezeBertForSequenceClassification.from_pretrained)",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from formats.errors import UserError, one_line, os_error_line

    from .distributed import leave_after_error, lost_a_peer, lost_peer_message, post_failure, say
    from .trainer import TrainingDiverged

    args = build_parser().parse_args(argv)

    def fail(line: str, code: int, wait: bool = True) -> int:
        """Ends this rank with one line; in a run of several ranks every rank ends with the same line and code
        (`distributed.FailureBoard`), including ranks waiting in a collective for this one."""
        line, code = post_failure(line, code, wait)
        say(line)
        return code

    try:
        handlers = {"export": command_export, "train": command_train, "demo": command_demo}
        return handlers[args.command](args) or 0
    except UserError as error:  # every stage's bad input and failed writes: one line
        return fail(f"pretrain: error: {error}", EXIT_BAD_INPUT)
    except TrainingDiverged as error:
        return fail(f"pretrain: error: {error}", EXIT_FAILED)
    except OSError as error:
        return fail(f"pretrain: error: {os_error_line(error)}", EXIT_BAD_INPUT)
    except Exception as error:
        if lost_a_peer(error):
            return fail(lost_peer_message(error), EXIT_FAILED, wait=False)
        # A bug (or an error no check foresaw): its traceback for the report, then the same one line as the
        # other ranks end with.
        traceback.print_exc()
        return fail(f"pretrain: error: rank {os.environ.get('RANK', '0')} failed: {type(error).__name__}: "
                    f"{one_line(error)}", EXIT_FAILED)
    finally:
        leave_after_error()
        # Loader workers ignore SIGTERM (preemption is the main process's business), and multiprocessing's exit
        # handler stops daemonic children with SIGTERM and then joins them: a loader kept alive by an error that
        # left `main` (its traceback holds the iterator; e.g. stderr's reader, the launcher, gone) hung the exit.
        for child in multiprocessing.active_children():
            child.kill()


if __name__ == "__main__":
    sys.exit(main())
