"""Atomic file writes: write to a temporary name in the same folder, fsync, rename, fsync the folder.

A reader (or a resumed run) never takes a partial file for a complete one: a file exists under its
final name only once every byte of it is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import socket

from .errors import FileWriteError, UserError, one_line

TMP_SUFFIX = ".tmp"
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_error(path: str, error: OSError) -> FileWriteError:
    """The one-line error for a failed write of `path`."""
    if error.errno in DISK_FULL_ERRNOS:
        return FileWriteError(
            f"{path}: disk full while writing ({error.strerror}); free space and rerun the same command: "
            "finished work is kept"
        )
    return FileWriteError(f"{path}: cannot write ({error.strerror})")


def fsync_path(path: str) -> None:
    """fsync a file (its bytes) or a folder (its entries: a file created or renamed in a folder is on disk
    only once the folder is fsynced too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: str) -> str:
    # host and pid: processes of several machines may write the same file of a shared filesystem
    return f"{path}.{socket.gethostname()}-{os.getpid()}{TMP_SUFFIX}"


def commit(tmp_path: str, final_path: str) -> None:
    """fsync `tmp_path`, rename it to `final_path` and fsync the folder."""
    fsync_path(tmp_path)
    os.replace(tmp_path, final_path)
    fsync_path(os.path.dirname(os.path.abspath(final_path)))


def atomic_write_bytes(path: str, data) -> None:
    tmp_path = tmp_name(path)
    try:
        with open(tmp_path, "wb") as handle:
            handle.write(data)
        commit(tmp_path, path)
    except OSError as error:
        remove_quietly(tmp_path)
        raise write_error(path, error) from None
    except BaseException:
        remove_quietly(tmp_path)
        raise


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def fsync_tree(folder: str) -> None:
    """fsync every file and folder under `folder`, `folder` included (before it is renamed into place):
    `fsync_path` of each, so the files' entries are on disk with their bytes."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def replace_folder(new_dir: str, out_dir: str) -> None:
    """Put the complete folder `new_dir` in the place of `out_dir`. The old folder is moved aside to
    `OUT.old` first and removed only after the new one is in place, so at every moment one of the two is
    whole on disk (`recover_folder` puts the old one back after a crash between the two renames)."""
    old_dir = out_dir + ".old"
    shutil.rmtree(old_dir, ignore_errors=True)
    if os.path.exists(out_dir):
        os.replace(out_dir, old_dir)
    os.replace(new_dir, out_dir)
    fsync_path(os.path.dirname(os.path.abspath(out_dir)))
    shutil.rmtree(old_dir, ignore_errors=True)


def recover_folder(out_dir: str) -> None:
    """After a crash between `replace_folder`'s two renames, `OUT.old` is the complete one: put it back."""
    old_dir = out_dir + ".old"
    if os.path.isdir(old_dir) and not os.path.exists(out_dir):
        os.replace(old_dir, out_dir)


@contextlib.contextmanager
def atomic_folder(out_dir: str, write_errors: tuple[type[BaseException], ...] = ()):
    """Yields a temporary folder to fill; once complete and fsynced it replaces `out_dir` (`replace_folder`).
    A failed write (OSError, torch's RuntimeError, or one of `write_errors`: a library's own error type) is
    one `FileWriteError` naming `out_dir`; the temporary folder is removed and a previous `out_dir` stays."""
    out_dir = out_dir.rstrip("/")
    recover_folder(out_dir)
    tmp_dir = out_dir + TMP_SUFFIX
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        os.makedirs(tmp_dir)
        yield tmp_dir
        fsync_tree(tmp_dir)
    except (OSError, RuntimeError, UserError, *write_errors) as error:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        kept = "the previous one is kept; " if os.path.isdir(out_dir) else ""
        raise FileWriteError(f"{out_dir}: could not write ({one_line(error)}); {kept}free space and rerun") from None
    replace_folder(tmp_dir, out_dir)
