"""launch/: two simulated nodes on loopback (deepspeed no-ssh, torchrun), signals through the node script,
restarts on another number of ranks, and the SLURM scripts' environment and requeue logic without SLURM."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.integration.test_trainer import final_parameters, scalars, train_command, wait_for

LAUNCH = os.path.join(ROOT, "launch")
CONFIG = os.path.join(ROOT, "configs", "tiny.toml")


def set_args(shard_root, *overrides):
    return train_command(shard_root, *overrides)[train_command(shard_root).index("--config") + 2 :]


def node_env(**values):
    env = {**os.environ, "CONFIG": CONFIG, "PYTHON": sys.executable, **{k: str(v) for k, v in values.items()}}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return env


def free_port():
    return random.randint(20000, 45000)


@pytest.fixture
def single(uninterrupted_run):
    """One plain process, dropout on: what every launch form must reproduce (dropout follows the micro-batch's
    place in the global batch, not the rank). The session's one uninterrupted run (tests/integration/conftest.py)."""
    return uninterrupted_run


def assert_close_to(single_dir, workdir, tolerance=1e-5):
    one, other = final_parameters(single_dir), final_parameters(str(workdir))
    assert max((one[k].float() - other[k].float()).abs().max().item() for k in one) < tolerance


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_two_nodes_on_loopback(launcher, single, shard_root, tmp_path):
    port = free_port()
    nodes = [
        subprocess.Popen(["bash", os.path.join(LAUNCH, "run_node.sh"), *set_args(shard_root)], cwd=tmp_path,
                         env=node_env(LAUNCHER=launcher, NNODES=2, NODE_RANK=rank, GPUS_PER_NODE=1,
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                      PRETRAIN_STATUS_FILE=tmp_path / f"status{rank}"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "parameters identical on all 2 ranks" in outputs[0]
    assert (tmp_path / "status0").read_text().startswith("complete")
    assert_close_to(single, tmp_path)


def test_sigterm_to_the_node_script_reaches_the_ranks(shard_root, tmp_path):
    process = subprocess.Popen(["bash", os.path.join(LAUNCH, "run_node.sh"), *set_args(shard_root)], cwd=tmp_path,
                               env=node_env(GPUS_PER_NODE=2, MASTER_PORT=free_port(),
                                            PRETRAIN_STATUS_FILE=tmp_path / "status"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "checkpoints" / "latest", process, timeout=240)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-3000:]  # sent at step 3 of 12: 0 would mean it was lost
    assert (tmp_path / "status").read_text().startswith("preempted")


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_restart_on_another_number_of_ranks(before, after, single, shard_root, tmp_path):
    def launch(ranks, *extra):
        env = node_env(GPUS_PER_NODE=ranks, MASTER_PORT=free_port(), PRETRAIN_STATUS_FILE=tmp_path / "status")
        return subprocess.run(["bash", os.path.join(LAUNCH, "run_node.sh"), *set_args(shard_root, *extra)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    first = launch(before, "max_steps_this_run=5")
    assert first.returncode == 75, first.stderr[-2000:]
    second = launch(after)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"; changed: max_steps_this_run 5 -> 0, world size {before} -> {after} " in second.stderr
    assert_close_to(single, tmp_path)
    expected, got = scalars(single, "train/loss"), scalars(str(tmp_path), "train/loss")
    assert all(abs(got[step][-1] - expected[step][0]) < 1e-4 for step in range(1, 13))


def kill_tree(pid):
    """SIGKILL a process and every descendant, as when a node dies (torchrun's agent starts its ranks in
    their own sessions, so killing the process group would spare them)."""
    import psutil

    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_killing_one_node_fails_the_other_and_a_relaunch_resumes(launcher, single, shard_root, tmp_path):
    port = free_port()

    def start(rank, timeout_minutes, attempt):
        env = node_env(LAUNCHER=launcher, NNODES=2, NODE_RANK=rank, GPUS_PER_NODE=1, MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port, PRETRAIN_STATUS_FILE=tmp_path / f"status{rank}")
        args = set_args(shard_root, f"distributed_timeout_minutes={timeout_minutes}")
        with open(tmp_path / f"node{rank}-{attempt}.log", "w") as log:  # a file: a pipe nobody reads can fill up
            return subprocess.Popen(["bash", os.path.join(LAUNCH, "run_node.sh"), *args], cwd=tmp_path, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def logs(attempt):
        return "".join(f"--- node {rank}:\n" + (tmp_path / f"node{rank}-{attempt}.log").read_text()[-3000:]
                       for rank in (0, 1))

    nodes = [start(0, 0.5, "first"), start(1, 0.5, "first")]
    wait_for(tmp_path / "checkpoints" / "latest", nodes[0], timeout=240)
    kill_tree(nodes[1].pid)  # the whole node: its script, launcher and rank
    started = time.monotonic()
    nodes[0].wait(timeout=240)  # bounded: the survivor must not hang
    assert nodes[0].returncode not in (0, 75), logs("first")
    survivor = (tmp_path / "node0-first.log").read_text()
    # the rank says it in one line, without a traceback (torchrun's agent prints its own, about the child)
    assert "pretrain: error: lost contact with another rank" in survivor, logs("first")
    assert "pretrain/__main__.py" not in survivor, logs("first")
    assert time.monotonic() - started < 200
    nodes[1].wait()
    port += 1
    relaunched = [start(0, 5, "again"), start(1, 5, "again")]
    codes = [node.wait(timeout=300) for node in relaunched]
    assert codes == [0, 0], logs("again")
    assert all((tmp_path / f"status{rank}").read_text().startswith("complete") for rank in (0, 1))
    assert_close_to(single, tmp_path)


# -- the SLURM scripts, without SLURM ---------------------------------------------------------------------


def test_scripts_parse():
    for path in glob.glob(os.path.join(LAUNCH, "*.sh")) + glob.glob(os.path.join(LAUNCH, "*.sbatch")):
        assert subprocess.run(["bash", "-n", path]).returncode == 0, path


def test_slurm_environment_is_derived_from_slurm_variables(tmp_path):
    scontrol = tmp_path / "scontrol"  # what `scontrol show hostnames gpu[01-04]` prints
    scontrol.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'gpu01\\ngpu02\\ngpu03\\ngpu04\\n'\n")
    scontrol.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "1234567", "SLURM_JOB_NODELIST": "gpu[01-04]",
           "SLURM_JOB_NUM_NODES": "4", "SLURM_NODEID": "2", "SLURM_GPUS_ON_NODE": "8"}
    script = f"source {LAUNCH}/slurm_env.sh && echo $MASTER_ADDR $MASTER_PORT $NNODES $NODE_RANK $GPUS_PER_NODE"
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert result.stdout.split() == ["gpu01", str(20000 + 1234567 % 20000), "4", "2", "8"], result.stderr
    outside = subprocess.run(["bash", "-c", f"source {LAUNCH}/slurm_env.sh"], env={"PATH": os.environ["PATH"]},
                             capture_output=True, text=True)
    assert outside.returncode != 0 and "not inside a SLURM job" in outside.stderr


def test_slurm_chain_submits_dependent_jobs(tmp_path):
    """`sbatch` here records its arguments (no SLURM on this machine); the chain script is the real one."""
    sbatch = tmp_path / "sbatch"
    sbatch.write_text('#!/bin/bash\ncalls="$(dirname "$0")/calls"\necho "$*" >> "$calls"\n'
                      'echo $((100 + $(wc -l < "$calls")))\n')  # the job id, as --parsable prints it
    sbatch.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    for args in ([], ["--set", "seed=7", "--", "--nodes", "4", "--time", "12:00:00"]):
        (tmp_path / "calls").unlink(missing_ok=True)
        result = subprocess.run(["bash", os.path.join(LAUNCH, "slurm_chain.sh"), "3", "configs/x.toml", *args],
                                env=env, capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        calls = (tmp_path / "calls").read_text().splitlines()
        assert len(calls) == 3
        assert "--dependency" not in calls[0]
        assert "--dependency=afterany:101" in calls[1] and "--dependency=afterany:102" in calls[2]
        for call in calls:
            assert "--no-requeue" in call and "NO_REQUEUE=1" in call and "MAX_RESTARTS=0" in call
            options, script_args = call.split(" launch/slurm_pretrain.sbatch ")
            if args:  # sbatch options before the script, overrides after it
                assert "--nodes 4 --time 12:00:00" in options and script_args == "configs/x.toml --set seed=7"
            else:
                assert script_args == "configs/x.toml"


@pytest.mark.parametrize("code, restarts, decision", [
    (0, 0, "done"), (75, 0, "requeue"), (75, 99, "requeue"), (1, 0, "requeue"), (137, 2, "requeue"), (1, 3, "fail"),
])
def test_requeue_decision(code, restarts, decision):
    script = f"source {LAUNCH}/lib.sh && decide_after_exit {code} {restarts} 3"
    assert subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout.strip() == decision


@pytest.mark.parametrize("status, launcher_code, expected", [
    ("complete 12", 0, 0), ("complete 12", 1, 0), ("complete 12", 250, 0), ("preempted 5", 75, 75),
    ("preempted 5", 1, 75), (None, 0, 0), (None, 1, 1), (None, 75, 75), (None, 250, 250),
])
def test_node_exit_code_comes_from_the_status_file(status, launcher_code, expected, tmp_path):
    status_file = tmp_path / "status"
    if status:
        status_file.write_text(status + "\n")
    script = f"source {LAUNCH}/lib.sh && exit_code_from_status {launcher_code} {status_file}"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == expected
    # a launcher code that disagrees with the recorded outcome is reported, not silently dropped
    assert ("but the launcher exited" in result.stderr) == (status is not None and launcher_code not in (0, expected))


def test_preemptions_do_not_count_toward_max_restarts(tmp_path):
    """Three preemptions then failures: the first three failures requeue, the fourth fails (MAX_RESTARTS 3),
    whatever SLURM_RESTART_COUNT says (it counts every requeue)."""
    failures = tmp_path / "failures"
    decisions = []
    for code in (75, 75, 75, 1, 137, 1, 1):
        script = (f"source {LAUNCH}/lib.sh && decide_after_exit {code} $(failures_so_far {failures}) 3 "
                  f"&& record_exit {code} {failures}")
        decisions.append(subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout.strip())
    assert decisions == ["requeue"] * 6 + ["fail"]
    assert failures.read_text().strip() == "4"


def test_one_data_prep_task_rerun_alone_needs_the_number_of_parts(small_corpus, vocab_dir, tmp_path):
    """`sbatch --array 1` makes SLURM_ARRAY_TASK_COUNT 1: the script says to give PARTS instead of running
    part 1/1; with PARTS it makes part 1 of 2."""
    script = os.path.join(LAUNCH, "slurm_data_prep.sbatch")
    base = {**os.environ, "SLURM_SUBMIT_DIR": ROOT, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "1",
            "SLURM_CPUS_PER_TASK": "1"}
    args = ["bash", script, vocab_dir, str(tmp_path), "--source", small_corpus, "--shard-text-mb", "0.2", "--quiet"]
    alone = subprocess.run(args, env=base, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2 and "PARTS=<N>" in alone.stderr.strip().splitlines()[-1]
    rerun = subprocess.run(args, env={**base, "PARTS": "2"}, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    manifest = json.loads((tmp_path / "part-1" / "seq128" / "manifest.json").read_text())
    assert manifest["part"] == {"index": 1, "count": 2}
