"""The one user-facing error base: every command line catches `UserError`, prints `<prog>: error: <message>`
on one line and exits 2. Each stage subclasses it for its own errors; none is translated into another on
the way up."""


class UserError(Exception):
    """Bad input or environment; the message names the file, flag or key and what to do."""


class FormatError(UserError):
    """A shard set, manifest or vocabulary on disk that cannot be read as this format."""


class FileWriteError(UserError):
    """A file or folder that could not be written (a full disk, a quota, permissions)."""


def one_line(error: BaseException, limit: int = 240) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(str(error).split())[:limit]
