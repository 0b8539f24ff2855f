"""launch/'s SLURM scripts, run unchanged on a fake SLURM (tests/fake_slurm): `sbatch`, `srun`, `scontrol` and
`squeue` stand-ins that run the jobs on loopback nodes, deliver `--signal` and the time limit, kill nodes and
requeue, as a cluster does."""

import os
import subprocess

import pytest
import torch

from tests.conftest import ROOT, run_cli
from tests.fake_slurm import environment, jobs, wait_until_idle
from tests.integration.test_data_prep_cli import SMALL_UNITS, assert_same_shards, reference  # noqa: F401
from tests.integration.test_trainer import final_parameters, train_command

CONFIG = os.path.join(ROOT, "configs", "tiny.toml")


def overrides(shard_root):
    return train_command(shard_root)[train_command(shard_root).index("--config") + 2:]


@pytest.fixture
def uninterrupted(launcher_references):
    """The schedule run once, uninterrupted, under the launcher the SLURM jobs use (deepspeed, 2 ranks)."""
    return launcher_references("deepspeed")


@pytest.fixture
def cluster(tmp_path):
    """A submit folder laid out as a checkout of this repository (launch/, logs/) and the cluster's state."""
    submit = tmp_path / "submit"
    submit.mkdir()
    (submit / "launch").symlink_to(os.path.join(ROOT, "launch"))
    (submit / "logs").mkdir()
    return submit, tmp_path / "slurm"


def submit(command, submit_dir, env):
    result = subprocess.run(command, cwd=submit_dir, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def events_of(record, run=None):
    return [entry["event"] for entry in record["history"] if run is None or entry["run"] == run]


def job_log(submit_dir, record, pattern="squeezebert-{id}.out"):
    return (submit_dir / "logs" / pattern.format(id=record["id"], **(record["array"] or {}))).read_text()


def assert_same_parameters(expected_dir, workdir):
    expected, got = final_parameters(expected_dir), final_parameters(str(workdir))
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_the_time_limit_warning_saves_requeues_and_the_job_runs_to_the_end(uninterrupted, shard_root, cluster):
    submit_dir, state = cluster
    warn = [{"job": 0, "run": 0, "when": "checkpoints/latest", "do": "warn"}]  # the clock jumps to 600 s before
    env = environment(state, warn, GPUS_PER_NODE=2)
    submit(["sbatch", "--nodes", "1", "launch/slurm_pretrain.sbatch", CONFIG, *overrides(shard_root)], submit_dir, env)
    [job] = wait_until_idle(state, timeout=600)
    log = job_log(submit_dir, job)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 1, (job["history"], log[-3000:])
    first_run = events_of(job, run=0)
    assert first_run[:2] == ["started", "SIGUSR1 to the batch shell"] and first_run[-1] == "requeued", first_run
    assert events_of(job, run=1) == ["started", "batch script exited 0"]
    assert "slurm_pretrain: nodes exited with 75: requeue" in log and "nodes exited with 0: done" in log
    assert "resumed from checkpoints/step-" in log
    assert not (submit_dir / "logs" / f"failures-{job['id']}").exists()  # a preemption is not a failure
    assert_same_parameters(uninterrupted, submit_dir)  # bit-identical to the run that was never stopped


def test_a_lost_node_requeues_up_to_max_restarts_and_preemptions_do_not_count(shard_root, cluster):
    """MAX_RESTARTS=1: a preemption, then a node lost (requeued: the first failure), then another (the job
    fails). Counting SLURM_RESTART_COUNT, as the script once did, failed the job at the first lost node."""
    submit_dir, state = cluster
    faults = [{"job": 0, "run": 0, "when": "checkpoints/latest", "do": "warn"},
              {"job": 0, "run": 1, "when": "checkpoints/step-00000006", "do": "kill-node", "node": 1},
              {"job": 0, "run": 2, "when": "checkpoints/step-00000009", "do": "kill-node", "node": 1}]
    env = environment(state, faults, FAKE_SLURM_KILL_WAIT=10)
    command = ["sbatch", "--nodes", "2", "--export", "ALL,MAX_RESTARTS=1", "launch/slurm_pretrain.sbatch", CONFIG,
               *overrides(shard_root)]
    submit(command, submit_dir, env)
    [job] = wait_until_idle(state, timeout=600)
    log = job_log(submit_dir, job)
    assert job["state"] == "FAILED" and job["restart_count"] == 2, (job["history"], log[-3000:])
    assert "node 1 lost: SIGKILL to its processes" in events_of(job, run=1)
    assert "node 1 lost: SIGKILL to its processes" in events_of(job, run=2)
    decisions = [line.split(": ")[-1] for line in log.splitlines() if line.startswith("slurm_pretrain: nodes exited")]
    assert decisions == ["requeue", "requeue", "fail"], log[-3000:]
    assert "nodes exited with 75" in log  # the first requeue was the preemption
    assert log.count("resumed from checkpoints/step-") == 2
    assert (submit_dir / "logs" / f"failures-{job['id']}").read_text().strip() == "2"


def test_a_chain_of_jobs_without_requeue_continues_from_each_others_checkpoints(uninterrupted, shard_root, cluster):
    submit_dir, state = cluster
    warn = [{"job": 0, "run": 0, "when": "checkpoints/latest", "do": "warn"}]
    env = environment(state, warn, GPUS_PER_NODE=2)
    out = submit(["bash", "launch/slurm_chain.sh", "3", CONFIG, *overrides(shard_root), "--", "--nodes", "1"],
                 submit_dir, env)
    assert out.count("submitted job") == 3
    first, second, third = wait_until_idle(state, timeout=600)
    logs = [job_log(submit_dir, job) for job in (first, second, third)]
    # the first is preempted and ends (exit 75: no requeue in a chain), the next resumes and finishes the
    # schedule, the last finds it done
    assert [job["state"] for job in (first, second, third)] == ["FAILED", "COMPLETED", "COMPLETED"], logs[0][-2000:]
    assert first["exit_code"] == 75 and all(job["restart_count"] == 0 for job in (first, second, third))
    assert "resumed from checkpoints/step-" in logs[1] and "training complete" in logs[1]
    assert "resumed from checkpoints/step-00000012" in logs[2] and "training complete" in logs[2]
    assert_same_parameters(uninterrupted, submit_dir)


def test_a_data_prep_task_killed_then_rerun_alone_merges_into_the_one_machine_shards(
        reference, vocab_dir, small_corpus, cluster):  # noqa: F811 (the fixture imported above)
    submit_dir, state = cluster
    # the second task's machine dies once that task has finished its first unit of work
    kill = [{"job": 1, "run": 0, "when": "parts/part-1/seq512/.progress/unit-000001.json", "do": "kill-node",
             "node": 0}]
    env = environment(state, kill)
    script_args = [vocab_dir, "parts", "--source", small_corpus, *SMALL_UNITS, "--quiet"]
    submit(["sbatch", "--array", "0-2", "--cpus-per-task", "1", "launch/slurm_data_prep.sbatch", *script_args],
           submit_dir, env)
    tasks = wait_until_idle(state, timeout=600)
    assert [task["state"] for task in tasks] == ["COMPLETED", "NODE_FAIL", "COMPLETED"], [t["history"] for t in tasks]
    assert not (submit_dir / "parts" / "part-1" / "seq128" / "manifest.json").exists()
    submit(["sbatch", "--array", "1", "--cpus-per-task", "1", "--export", "ALL,PARTS=3",
            "launch/slurm_data_prep.sbatch", *script_args], submit_dir, env)
    rerun = wait_until_idle(state, timeout=600)[-1]
    assert rerun["state"] == "COMPLETED", job_log(submit_dir, rerun, "squeezebert-prep-{job_id}_{task_id}.out")
    parts = sorted(str(path) for path in (submit_dir / "parts").iterdir())
    run_cli("merge", "--parts", *parts, "--out", submit_dir / "merged")
    assert_same_shards(reference, str(submit_dir / "merged"))


def test_a_job_whose_output_folder_is_missing_fails_so_the_repository_ships_logs(shard_root, cluster):
    """SLURM opens `--output=logs/...` before the script runs (and its `mkdir -p logs`): on a checkout without
    logs/ the job fails with no output at all."""
    submit_dir, state = cluster
    (submit_dir / "logs").rmdir()
    env = environment(state)
    submit(["sbatch", "launch/slurm_pretrain.sbatch", CONFIG, *overrides(shard_root)], submit_dir, env)
    [job] = wait_until_idle(state, timeout=60)
    assert job["state"] == "FAILED" and "could not open output file" in events_of(job)[0]
    assert os.path.isdir(os.path.join(ROOT, "logs")) and "logs/.gitignore" in subprocess.run(
        ["git", "ls-files", "logs"], cwd=ROOT, capture_output=True, text=True).stdout


def test_the_fake_cluster_expands_node_lists_and_refuses_requeue_of_a_no_requeue_job(tmp_path):
    env = environment(tmp_path / "slurm")
    hosts = subprocess.run(["scontrol", "show", "hostnames", "gpu[01-03,10],login1"], env=env, capture_output=True,
                           text=True)
    assert hosts.stdout.split() == ["gpu01", "gpu02", "gpu03", "gpu10", "login1"]
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --no-requeue\nscontrol requeue $SLURM_JOB_ID\n")
    script.chmod(0o755)
    subprocess.run(["sbatch", str(script)], env=env, cwd=tmp_path, check=True, capture_output=True)
    [job] = wait_until_idle(tmp_path / "slurm", timeout=60)
    assert job["state"] == "FAILED" and "presently disabled" in (tmp_path / f"slurm-{job['id']}.out").read_text()
    assert jobs(tmp_path / "slurm") == [job]
