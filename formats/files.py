"""Atomic file writes: write to a temporary name in the same folder, fsync, rename, fsync the folder.

A reader (or a resumed run) never takes a partial file for a complete one: a file exists under its
final name only once every byte of it is on disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket

from .errors import FileWriteError

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


def fsync_dir(path: str) -> None:
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
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp_path, final_path)
    fsync_dir(os.path.dirname(os.path.abspath(final_path)))


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
