"""One run per folder (`formats.locks`): the lock names its holder, refuses a second process, dies with its
process (a forked child's copy included), and a filesystem without locks is told apart from a held lock. The
holders are real processes; the checkpointer and data_prep's output folder are exercised as they run."""

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from data_prep.config import PrepConfig, PrepError
from data_prep.output_folder import STATE_FILE, OutputFolder
from formats.locks import LOCK_FILE, lock_folder
from pretrain.checkpoint import CheckpointDirBusy, Checkpointer
from pretrain.config import CheckpointConfig
from tests.conftest import ROOT

# Takes the lock, optionally forks a child that only sleeps (what a data loader's worker is to the lock),
# prints the child's pid (0: none) once the child runs (fork's handlers done) and holds the lock until its
# stdin closes.
HOLDER = """
import os, sys, time
from formats.locks import lock_folder
assert lock_folder(sys.argv[1]).held
started, running = os.pipe()
child = os.fork() if sys.argv[2] == "fork" else 0
if child == 0 and sys.argv[2] == "fork":
    os.write(running, b"1")
    time.sleep(600)
    os._exit(0)
if child:
    os.read(started, 1)
print(child, flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def holder(folder, fork=False):
    """A separate process holding `folder`'s lock: (the process, its forked child's pid or 0)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), "fork" if fork else "-"], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        child = int(process.stdout.readline())
        yield process, child
    finally:
        process.kill()
        process.wait()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def kill_hard(process):
    process.kill()  # SIGKILL: no handler, no cleanup of its own
    process.wait()


def test_a_second_process_is_refused_and_told_who_holds_the_lock(tmp_path):
    with holder(tmp_path) as (process, _):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record == {"host": socket.gethostname(), "pid": process.pid}
        lock = lock_folder(str(tmp_path))
        assert not lock.held and not lock.unsupported
        assert lock.holder == f"host {socket.gethostname()}, pid {process.pid}"


def test_a_killed_holder_leaves_the_lock_free_and_the_next_holder_records_itself(tmp_path):
    with holder(tmp_path) as (process, _):
        kill_hard(process)
        assert lock_folder(str(tmp_path)).held
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert lock_folder(str(tmp_path)).held  # asking again in the process that holds it


def test_a_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path):
    """A data loader's forked worker outlives its killed parent by seconds; it must not hold the lock meanwhile."""
    with holder(tmp_path, fork=True) as (process, child):
        kill_hard(process)
        os.kill(child, 0)  # the child still runs
        assert lock_folder(str(tmp_path)).held


def failing_flock(number):
    def flock(descriptor, operation):
        raise OSError(number, os.strerror(number))
    return flock


@pytest.mark.parametrize("number", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL])
def test_a_filesystem_without_locks_is_told_apart_from_a_held_lock(tmp_path, monkeypatch, number):
    """No filesystem without flock (Lustre without `-o flock`) is at hand in a test, so `fcntl.flock` is replaced
    by one failing as such a filesystem's does; what is under test is the reading of its error."""
    monkeypatch.setattr(fcntl, "flock", failing_flock(number))
    lock = lock_folder(str(tmp_path))
    assert lock.unsupported == os.strerror(number) and not lock.holder and not lock.held


def test_a_held_lock_and_other_flock_errors_read_as_such(tmp_path, monkeypatch):
    """As above, `fcntl.flock` fails as told: EWOULDBLOCK is a held lock; an error of neither kind is raised."""
    monkeypatch.setattr(fcntl, "flock", failing_flock(errno.EWOULDBLOCK))
    assert lock_folder(str(tmp_path)).holder == "holder unknown"  # the holder has not written its record yet
    monkeypatch.setattr(fcntl, "flock", failing_flock(errno.EBADF))
    with pytest.raises(OSError):
        lock_folder(str(tmp_path))


def test_checkpoint_dir_and_data_prep_out_are_refused_while_another_process_holds_them(tmp_path):
    """Refused before anything is removed: the holder's save in progress (`.tmp-step-N/`) stays."""
    checkpoints, out = tmp_path / "checkpoints", tmp_path / "out"
    (checkpoints / ".tmp-step-00000006" / "state").mkdir(parents=True)
    out.mkdir()
    with holder(checkpoints) as (checkpoint_run, _), holder(out) as (prep_run, _):
        with pytest.raises(CheckpointDirBusy) as refused:
            Checkpointer(CheckpointConfig(dir=str(checkpoints)), rank=0)
        assert str(refused.value) == (f"checkpoint.dir {checkpoints}: another run is training there (host "
                                      f"{socket.gethostname()}, pid {checkpoint_run.pid}); wait for it to end or "
                                      "choose another checkpoint.dir")
        assert (checkpoints / ".tmp-step-00000006" / "state").is_dir()
        with pytest.raises(PrepError, match=rf"--out {out}: another data_prep run is writing there \(host .*, pid "
                                            rf"{prep_run.pid}\); wait for it or choose another folder"):
            OutputFolder(str(out), PrepConfig(), {})
        assert not (out / STATE_FILE).exists()


def test_checkpoint_dir_and_data_prep_out_warn_and_go_on_without_lock_support(tmp_path, monkeypatch, capsys):
    """`fcntl.flock` fails as on Lustre without `-o flock` (ENOSYS); the two users of the lock are real."""
    monkeypatch.setattr(fcntl, "flock", failing_flock(errno.ENOSYS))
    checkpoints, out = tmp_path / "checkpoints", tmp_path / "out"
    (checkpoints / ".tmp-step-00000006").mkdir(parents=True)
    Checkpointer(CheckpointConfig(dir=str(checkpoints)), rank=0)
    assert not (checkpoints / ".tmp-step-00000006").exists()  # it went on as the only run
    OutputFolder(str(out), PrepConfig(), {})
    assert (out / STATE_FILE).exists()
    assert capsys.readouterr().err.splitlines() == [
        f"pretrain: warning: checkpoint.dir {checkpoints}: its filesystem cannot lock the folder (Function not "
        "implemented); going on without the lock: make sure no other run uses this checkpoint.dir",
        f"data_prep: warning: --out {out}: its filesystem cannot lock the folder (Function not implemented); "
        "going on without the lock: make sure no other data_prep run writes there",
    ]
