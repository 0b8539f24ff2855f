"""One run per checkpoint folder: a second start is refused on every rank with one line naming the holder,
the first run is not disturbed, and a run killed with `kill -9` does not block its rerun. Real processes, the
tiny config."""

import os
import signal
import socket
import subprocess

from tests.integration.test_trainer import assert_same_run, train_command, wait_for
from tests.integration.test_trainer_guards import ROOT, free_port, run_pretrain
from tests.unit.test_locks import holder

ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def refusal(pid: int) -> str:
    return (f"pretrain: error: checkpoint.dir checkpoints: another run is training there (host "
            f"{socket.gethostname()}, pid {pid}); wait for it to end or choose another checkpoint.dir")


def test_a_second_start_is_refused_while_the_first_trains_and_the_first_ends_as_a_run_alone(
        uninterrupted_run, shard_root, tmp_path):
    """The first run is stopped (SIGSTOP) once it has saved a checkpoint, so that the second start meets it
    alive however slow the machine; a stopped process holds its lock as a running one does."""
    command = train_command(shard_root)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=log, env=ENV)
    try:
        wait_for(tmp_path / "checkpoints" / "latest", first)
        first.send_signal(signal.SIGSTOP)
        in_progress = tmp_path / "checkpoints" / ".tmp-step-00000099"  # what a save in progress leaves
        in_progress.mkdir()
        second = run_pretrain(command, tmp_path)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert second.stderr.strip().splitlines()[-1] == refusal(first.pid)
        assert in_progress.is_dir()  # the refused start removed nothing
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        first.kill()
        first.wait()
    assert_same_run(uninterrupted_run, str(tmp_path))


def test_a_run_killed_with_its_process_group_does_not_block_the_rerun(uninterrupted_run, shard_root, tmp_path):
    command = train_command(shard_root)
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env=ENV)
    try:
        wait_for(tmp_path / "checkpoints" / "latest", process)
        os.killpg(process.pid, signal.SIGKILL)  # the trainer and its loader workers, no handler runs
    finally:
        process.kill()
        process.wait()
    result = run_pretrain(command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from checkpoints/step-" in result.stderr
    assert_same_run(uninterrupted_run, str(tmp_path))


def test_a_refused_start_ends_every_rank_with_the_same_line(shard_root, tmp_path):
    """Rank 0 takes the lock and is refused before the checkpointer's barrier; rank 1, waiting there, is ended
    by the failure board with rank 0's line."""
    (tmp_path / "checkpoints").mkdir()
    command = train_command(shard_root)
    env = {**ENV, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    with holder(tmp_path / "checkpoints") as (other_run, _):
        ranks = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
                 for rank in (0, 1)]
        try:
            outputs = [rank.communicate(timeout=120)[1] for rank in ranks]
        finally:  # a rank left waiting would outlive the test
            for rank in ranks:
                rank.kill()
    assert [rank.returncode for rank in ranks] == [2, 2], outputs[0][-3000:]
    assert [stderr.strip().splitlines()[-1] for stderr in outputs] == [refusal(other_run.pid)] * 2
    assert not any("Traceback" in stderr for stderr in outputs)
