"""One run per folder: an exclusive `flock` on `FOLDER/.lock`, held until the process ends.

The kernel drops the lock when its process ends, however it ends (`kill -9` included), so a killed run never
blocks a rerun. The lock file records its holder (host and pid) so that a refused start can name it. Some
filesystems do not lock at all (Lustre mounted without `-o flock`, some NFS setups): `flock` then fails with
ENOLCK, EOPNOTSUPP, ENOSYS or EINVAL, told apart here from a lock another process holds (EWOULDBLOCK), so
that a caller can warn and go on instead of refusing every run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass

LOCK_FILE = ".lock"
NO_LOCK_SUPPORT = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
HELD_ELSEWHERE = frozenset({errno.EWOULDBLOCK, errno.EAGAIN})

_held: dict[str, int] = {}  # lock file (real path) -> its descriptor, open until the process ends


def _drop_in_child() -> None:
    # A forked child (a data loader's worker) shares the descriptor; flock is released only when every copy is
    # closed, so a child outliving a killed parent by seconds would block the rerun.
    for descriptor in _held.values():
        os.close(descriptor)
    _held.clear()


os.register_at_fork(after_in_child=_drop_in_child)


@dataclass(frozen=True)
class FolderLock:
    """What `lock_folder` got. `holder`: another process holds the lock, as "host h, pid 123". `unsupported`:
    the filesystem has no locks (the OS's reason). Neither: this process holds it."""

    path: str
    holder: str = ""
    unsupported: str = ""

    @property
    def held(self) -> bool:
        return not self.holder and not self.unsupported


def lock_folder(folder: str) -> FolderLock:
    """Takes `folder/.lock` for the rest of this process and records this host and pid in it; asking again
    in the same process answers held. Raises `OSError` when the file cannot be opened or flock fails
    otherwise."""
    path = os.path.realpath(os.path.join(folder, LOCK_FILE))
    if path in _held:
        return FolderLock(path)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not truncated: it names the current holder
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        return refusal(path, error)
    _held[path] = descriptor
    os.ftruncate(descriptor, 0)
    os.write(descriptor, (json.dumps({"host": socket.gethostname(), "pid": os.getpid()}) + "\n").encode())
    return FolderLock(path)


def refusal(path: str, error: OSError) -> FolderLock:
    """A failed `flock` on `path`: held by another process, or no lock support; any other error is raised."""
    if error.errno in HELD_ELSEWHERE:
        return FolderLock(path, holder=read_holder(path))
    if error.errno in NO_LOCK_SUPPORT:
        return FolderLock(path, unsupported=error.strerror or errno.errorcode[error.errno])
    raise error


def read_holder(path: str) -> str:
    """The holder a lock file records, as "host h, pid 123" (a holder that has not written yet: "holder
    unknown")."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        return f"host {record['host']}, pid {record['pid']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
