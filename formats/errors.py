"""The one user-facing error base: every command line catches `UserError`, prints `<prog>: error: <message>`
on one line and exits 2. Each stage subclasses it for its own errors; none is translated into another on
the way up. Command-line flags argparse rejects end the same way (`OneLineArgumentParser`)."""

import argparse
import functools
import pickle
import re
from typing import NoReturn


class UserError(Exception):
    """Bad input or environment; the message names the file, flag or key and what to do."""


class FormatError(UserError):
    """A shard set, manifest or vocabulary on disk that cannot be read as this format."""


class FileWriteError(UserError):
    """A file or folder that could not be written (a full disk, a quota, permissions)."""


def refused_pickle(error: BaseException) -> str | None:
    """What a pickle that `torch.load(weights_only=True)` refused would have called (`io.open`; `code` when the
    message does not say), or None for any other error. torch says so in its message, not in its type, and
    words it two ways ("Unsupported global: GLOBAL x", "unsupported GLOBAL x whose module ...")."""
    if not isinstance(error, pickle.UnpicklingError) or "weights only load failed" not in str(error).lower():
        return None
    found = re.search(r"unsupported global(?:: global)? (\S+)", str(error), re.IGNORECASE)
    return found.group(1) if found else "code"


def one_line(error: BaseException, limit: int = 240) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(str(error).split())[:limit]


def os_error_line(error: OSError) -> str:
    """An `OSError` that reached a command line, as `<file>: <reason>` (the file when the error names one)."""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


class OneLineArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors read like every other bad input: `<name>: error: <message> (see <prog>
    --help)` on one line, exit 2. argparse's own error prints the usage block first, which in a job log
    buries the one line that says what was wrong; `--help` still prints the full help."""

    def __init__(self, *args, name: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.name = name

    def add_subparsers(self, **kwargs):
        # argparse builds each subcommand's parser as parser_class(**add_parser kwargs), type(self) by
        # default; the subcommands need the same name so their errors start the same way.
        kwargs.setdefault("parser_class", functools.partial(type(self), name=self.name))
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.name}: error: {one_line(message)} (see {self.prog} --help)\n")
