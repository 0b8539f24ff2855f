"""A SLURM stand-in for testing the job scripts of launch/: `sbatch`, `srun`, `scontrol` and `squeue` on PATH
(tests/fake_slurm/bin), sharing one state folder (FAKE_SLURM_DIR).

What it does as SLURM does, so that the real scripts run unchanged:
- `sbatch` reads `#SBATCH` lines and command-line options (the command line wins), snapshots the submitting
  environment (`--export`), queues the job (or one per task of `--array`) and returns its id at once;
  a controller process, started by the first `sbatch`, runs the queued jobs one at a time in id order once
  their `--dependency` (afterany / afterok) is met, and ends when the queue is empty.
- A job's batch script runs in the submit folder with SLURM's variables (SLURM_JOB_ID, SLURM_JOB_NODELIST,
  SLURM_JOB_NUM_NODES, SLURM_SUBMIT_DIR, SLURM_RESTART_COUNT, SLURM_ARRAY_*, SLURM_CPUS_PER_TASK), its output
  in `--output` (%x %j %A %a; appended with --open-mode=append; a missing folder fails the job, as it does
  on a real cluster). The nodes are loopback addresses: `127.0.0.[1-N]`.
- `srun` starts one task per node (SLURM_NODEID, SLURM_PROCID, SLURMD_NODENAME), each in its own session
  (a node), forwards SIGUSR1/SIGUSR2/SIGTERM to them, and with `--kill-on-bad-exit` terminates the others
  (SIGTERM, then SIGKILL after KillWait) when one exits non-zero.
- `--signal=[B:]SIG@T` is delivered T seconds before `--time` runs out: to the batch shell with `B:`, else to
  the tasks. At the time limit every process of the job gets SIGTERM, then SIGKILL after KillWait
  (FAKE_SLURM_KILL_WAIT seconds, 30 by default); the job ends TIMEOUT.
- `scontrol requeue ID` ends the running job (SIGTERM, KillWait, SIGKILL) and queues it again with
  SLURM_RESTART_COUNT one higher; a job submitted with `--no-requeue` refuses it. `scontrol show hostnames`
  expands node lists.

Faults and the clock, for tests: FAKE_SLURM_EVENTS in the submitting environment is a JSON list of
`{"job": N, "run": R, "when": PATH, "do": ACTION}`: while the N-th job submitted (0-based, array tasks
counted one by one) runs for the R-th time (its restart count), once PATH (relative to the submit folder)
exists, ACTION happens: `warn` (the clock jumps to the warning time of `--signal`), `time-limit` (the clock
jumps to the time limit) or `kill-node` with `"node": K` (every process of node K gets SIGKILL at once, as
when a machine dies; node 0 holds the batch shell, and its loss ends the job NODE_FAIL).

Every job's record (state, exit code, restart count, and a history of what happened) is a JSON file in
FAKE_SLURM_DIR/jobs; `jobs()` and `wait_until_idle()` below read them for tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "bin")


def environment(state_dir: str, events: list[dict] | None = None, **values) -> dict:
    """The environment of a shell on a login node of the fake cluster."""
    env = {**os.environ, **{key: str(value) for key, value in values.items()}}
    env["PATH"] = os.pathsep.join([BIN, os.path.dirname(sys.executable), env["PATH"]])
    env["FAKE_SLURM_DIR"] = str(state_dir)
    env["FAKE_SLURM_PYTHON"] = sys.executable
    if events is not None:
        env["FAKE_SLURM_EVENTS"] = json.dumps(events)
    return env


def jobs(state_dir: str) -> list[dict]:
    folder = os.path.join(str(state_dir), "jobs")
    if not os.path.isdir(folder):
        return []
    records = [json.load(open(os.path.join(folder, name))) for name in os.listdir(folder) if name.endswith(".json")]
    return sorted(records, key=lambda record: record["id"])


def wait_until_idle(state_dir: str, timeout: float) -> list[dict]:
    """Waits until no job is pending or running; returns every job's record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = jobs(state_dir)
        if records and all(record["state"] not in ("PENDING", "RUNNING") for record in records):
            return records
        time.sleep(0.2)
    subprocess.run(["pkill", "-f", f"fake_slurm.slurm controller {state_dir}"], check=False)
    raise TimeoutError(f"fake SLURM jobs still queued or running after {timeout} s: "
                       + json.dumps([(r["id"], r["state"]) for r in jobs(state_dir)]))
