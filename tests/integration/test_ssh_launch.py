"""launch/ssh_job.sh, the ssh form, over a real sshd that the module starts on a loopback port with its own host
key, user key and ssh configuration (never ~/.ssh): two nodes, `node0` and `node1`, both 127.0.0.1, one rank
each. A run matches one process; SIGTERM saves on every rank and leaves no process; a lost node fails the job;
of two jobs on the same nodes, ending one (even by SIGKILL of its command) leaves the other running."""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time

import psutil
import pytest

from tests.conftest import ROOT
from tests.integration.test_launch import assert_close_to, free_port, kill_tree, node_env, set_args, single  # noqa: F401
from tests.integration.test_trainer import assert_same_run, wait_for

SSH_JOB = os.path.join(ROOT, "launch", "ssh_job.sh")
CONFIG = os.path.join(ROOT, "configs", "tiny.toml")
NODES = ("node0", "node1")
TOOLS = {"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client", "pdsh": "pdsh"}


class SshCluster:
    def __init__(self, folder, sshd):
        self.folder, self.sshd = folder, sshd
        self.ssh_config = str(folder / "ssh_config")
        self.hostfile = str(folder / "hostfile")

    def env(self, **values):
        """A job's environment: ssh (and pdsh, the way DeepSpeed's runner uses it) read the module's ssh config,
        which also gives the master's address (node0's HostName)."""
        return {**node_env(MASTER_PORT=free_port(), **values),
                "SSH_OPTIONS": f"-F {self.ssh_config}", "PDSH_RCMD_TYPE": "ssh",
                "PDSH_SSH_ARGS_APPEND": f"-F {self.ssh_config}"}


def find_tool(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def unused_loopback_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = sorted({package for tool, package in TOOLS.items() if not find_tool(tool)})
    if missing:
        pytest.skip(f"the ssh form's tests need {' and '.join(missing)}: `bash scripts/install.sh --test` installs "
                    "them as root on Debian (apt-get install openssh-server pdsh)")
    folder = tmp_path_factory.mktemp("ssh_cluster")
    for key in ("host_key", "user_key"):
        subprocess.run([find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", folder / key],
                       check=True)
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port = unused_loopback_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_key\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
        "PermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 100\n")
    host_key = " ".join((folder / "host_key.pub").read_text().split()[:2])
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (folder / "ssh_config").write_text(
        f"Host {' '.join(NODES)}\n  HostName 127.0.0.1\n  Port {port}\n  User {psutil.Process().username()}\n"
        f"  IdentityFile {folder}/user_key\n  IdentitiesOnly yes\n  UserKnownHostsFile {folder}/known_hosts\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n")
    (folder / "hostfile").write_text("".join(f"{node} slots=1\n" for node in NODES))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder (made by its service)
    with open(folder / "sshd.log", "w") as log:
        sshd = subprocess.Popen([find_tool("sshd"), "-D", "-e", "-f", folder / "sshd_config"], stdout=log,
                                stderr=subprocess.STDOUT)
    cluster = SshCluster(folder, psutil.Process(sshd.pid))
    deadline = time.monotonic() + 30
    while subprocess.run(["ssh", "-F", cluster.ssh_config, "node0", "true"], capture_output=True).returncode != 0:
        assert sshd.poll() is None and time.monotonic() < deadline, (folder / "sshd.log").read_text()[-2000:]
        time.sleep(0.2)
    yield cluster
    kill_tree(sshd.pid)  # the listener and whatever a failed test left running on the nodes
    sshd.wait(timeout=30)


def start_job(cluster, shard_root, workdir, *overrides, log="job.log", **env):
    with open(workdir / log, "a") as output:  # a file: a pipe nobody reads can fill up
        return subprocess.Popen(["bash", SSH_JOB, cluster.hostfile, CONFIG, *set_args(shard_root, *overrides)],
                                cwd=workdir, env=cluster.env(**env), stdout=output, stderr=subprocess.STDOUT, text=True)


def job_id(workdir, log="job.log"):
    return re.search(r"ssh_job: job (\S+) on", (workdir / log).read_text()).group(1)


def node_sessions(cluster, job):
    """{node rank: the sshd session of that node of the job}: the node's whole side of the connection."""
    sessions = {}
    for session in cluster.sshd.children():
        for process in session.children(recursive=True):
            try:
                if job in process.cmdline():
                    sessions[int(process.environ()["NODE_RANK"])] = session
                    break
            except psutil.NoSuchProcess:
                pass
    return sessions


def job_processes(cluster, launcher, job):
    """Every process of the job on this machine: the launcher's tree (its ssh clients) and every node's tree
    under the test's sshd (sessions, node scripts, DeepSpeed's launchers, ranks, loader workers)."""
    trees = [psutil.Process(launcher.pid), *node_sessions(cluster, job).values()]
    return [process for root in trees for process in (root, *root.children(recursive=True))]


def loader_worker(process):
    """A rank's data-loader worker (forked: the rank's command line); workers come and go with each phase."""
    try:
        return process.parent().cmdline() == process.cmdline()
    except (psutil.NoSuchProcess, AttributeError):
        return True


def alive(processes):
    def running(process):
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return [process for process in processes if running(process)]


def assert_all_end(processes, timeout=20):
    deadline = time.monotonic() + timeout
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(processes), [process.cmdline() for process in alive(processes)]


@pytest.fixture(scope="module")
def over_ssh(cluster, shard_root, tmp_path_factory):
    """The schedule run once over the two ssh nodes, uninterrupted."""
    workdir = tmp_path_factory.mktemp("over_ssh")
    job = start_job(cluster, shard_root, workdir)
    job.wait(timeout=600)
    return workdir, job.returncode


def test_the_fixture_serves_both_nodes_to_ssh_and_pdsh(cluster):
    result = subprocess.run(["pdsh", "-w", ",".join(NODES), "echo rank %n"], env=cluster.env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["node0: rank 0", "node1: rank 1"]


def test_a_run_over_ssh_completes_within_1e_5_of_one_process(over_ssh, single):  # noqa: F811 (imported fixture)
    workdir, code = over_ssh
    log = (workdir / "job.log").read_text()
    assert code == 0, log[-3000:]
    assert "parameters identical on all 2 ranks" in log and "ssh_job: every node exited 0 0: complete" in log
    assert_close_to(single, workdir)


def test_sigterm_to_the_job_saves_every_rank_at_one_step_leaves_no_process_and_resumes_bit_identical(
        over_ssh, cluster, shard_root, tmp_path):
    job = start_job(cluster, shard_root, tmp_path)
    wait_for(tmp_path / "checkpoints" / "latest", job, timeout=300)
    time.sleep(random.uniform(0.0, 0.5))
    processes = job_processes(cluster, job, job_id(tmp_path))
    assert len(node_sessions(cluster, job_id(tmp_path))) == 2 and job.poll() is None
    job.send_signal(signal.SIGTERM)  # to the user's command only, as `kill` or a scheduler does
    job.wait(timeout=180)
    log = (tmp_path / "job.log").read_text()
    assert job.returncode == 75, log[-3000:]
    assert "ssh_job: every node exited 75 75: preempted" in log
    step = int(re.search(r"preempted: saved at global step (\d+)", log).group(1))
    saved = tmp_path / "checkpoints" / f"step-{step:08d}" / "state"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step-{step:08d}" and 0 < step < 12
    assert sorted(path.name for path in saved.glob("rng-rank*")) == ["rng-rank00000.safetensors",
                                                                     "rng-rank00001.safetensors"]
    assert_all_end(processes)
    assert_all_end(cluster.sshd.children(recursive=True))  # and nothing started later either
    rerun = start_job(cluster, shard_root, tmp_path, log="rerun.log")
    rerun.wait(timeout=600)
    rerun_log = (tmp_path / "rerun.log").read_text()
    assert rerun.returncode == 0, rerun_log[-3000:]
    assert f"resumed from checkpoints/step-{step:08d}" in rerun_log
    assert_same_run(str(over_ssh[0]), str(tmp_path))


def test_a_lost_node_ends_the_other_within_seconds_with_one_line_and_exit_1_and_a_rerun_resumes(cluster, shard_root,
                                                                                                   tmp_path):
    job = start_job(cluster, shard_root, tmp_path, "distributed_timeout_minutes=0.5")
    wait_for(tmp_path / "checkpoints" / "latest", job, timeout=300)
    saved = (tmp_path / "checkpoints" / "latest").read_text().strip()
    sessions = node_sessions(cluster, job_id(tmp_path))
    kill_tree(sessions[1].pid)  # node 1 dies: its sshd session, node script, launcher and rank
    lost = time.monotonic()
    job.wait(timeout=240)
    log = (tmp_path / "job.log").read_text()
    assert job.returncode == 1, log[-3000:]
    assert time.monotonic() - lost < 60, log[-3000:]
    assert log.count("pretrain: error: lost contact with another rank") == 1, log[-3000:]
    assert "pretrain/__main__.py" not in log and "ssh_job: node 1 (node1) lost: its ssh connection ended" in log
    assert_all_end(cluster.sshd.children(recursive=True))
    # the rerun resumes from the last complete checkpoint (one step is enough to show it)
    rerun = start_job(cluster, shard_root, tmp_path, "max_steps_this_run=1", log="rerun.log")
    rerun.wait(timeout=300)
    rerun_log = (tmp_path / "rerun.log").read_text()
    assert rerun.returncode == 75, rerun_log[-3000:]
    assert re.search(r"resumed from checkpoints/step-(\d+)", rerun_log).group(1) >= saved.split("-")[1]


def test_nodes_still_running_a_grace_period_after_a_failure_are_killed(cluster, shard_root, tmp_path):
    """Node 1 dies before its rank joins: node 0's rank would wait for it at the rendezvous for the whole
    collective timeout; FAILURE_GRACE_SECONDS after the failure, node 0 is told to end everything."""
    job = start_job(cluster, shard_root, tmp_path, FAILURE_GRACE_SECONDS=5)
    deadline = time.monotonic() + 60
    while "ssh_job: job " not in (tmp_path / "job.log").read_text() or \
            1 not in node_sessions(cluster, job_id(tmp_path)):
        assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "job.log").read_text()[-3000:]
        time.sleep(0.05)
    kill_tree(node_sessions(cluster, job_id(tmp_path))[1].pid)
    lost = time.monotonic()
    job.wait(timeout=120)
    log = (tmp_path / "job.log").read_text()
    assert job.returncode == 1, log[-3000:]
    assert "ssh_job: the other nodes did not end 5 s after the failure: killing them" in log, log[-3000:]
    assert time.monotonic() - lost < 60
    assert_all_end(cluster.sshd.children(recursive=True))


def test_sigkill_to_one_jobs_command_saves_its_nodes_and_leaves_another_job_on_the_same_nodes_running(
        cluster, shard_root, tmp_path):
    """The harshest end of a job's command (nothing of it can run): its nodes read the end of their ssh
    connections, save and end, and the sweep of their leftovers spares the other job's processes."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    jobs = [start_job(cluster, shard_root, first), start_job(cluster, shard_root, second)]
    for workdir, job in zip((first, second), jobs):
        wait_for(workdir / "checkpoints" / "latest", job, timeout=400)
    ended = job_processes(cluster, jobs[0], job_id(first))
    others = [process for process in job_processes(cluster, jobs[1], job_id(second)) if not loader_worker(process)]
    jobs[0].kill()
    jobs[0].wait()
    assert_all_end(ended, timeout=180)
    assert "preempted: saved at global step" in (first / "job.log").read_text(), (first / "job.log").read_text()[-3000:]
    assert alive(others) == others, "ending the first job took processes of the second"
    assert jobs[1].poll() is None
    jobs[1].send_signal(signal.SIGINT)  # it still trains, and saves on its own signal (Ctrl-C's, here)
    jobs[1].wait(timeout=180)
    assert jobs[1].returncode == 75, (second / "job.log").read_text()[-3000:]
    assert_all_end(cluster.sshd.children(recursive=True))


@pytest.mark.parametrize("hostfile, message", [
    (None, "HOSTFILE {path}: no such file"),
    ("node0 slots=1\nnode0 slots=1\n", "HOSTFILE {path}: node0 is listed twice"),
    ("node0 gpus=1\n", "HOSTFILE {path}: 'node0 gpus=1' is not 'hostname slots=N'"),
    ("node0 slots=1\nnode7 slots=1\n", "HOSTFILE {path}: cannot run a command on node7 over ssh without a password"),
])
def test_bad_hostfile_or_unreachable_host_is_one_line_and_exit_2(cluster, tmp_path, hostfile, message):
    path = tmp_path / "hostfile"
    if hostfile is not None:
        path.write_text(hostfile)
    result = subprocess.run(["bash", SSH_JOB, str(path), CONFIG], cwd=tmp_path, env=cluster.env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("ssh_job: error: " + message.format(path=path)), line


def test_a_config_every_rank_refuses_exits_2_without_a_traceback(cluster, shard_root, tmp_path):
    job = start_job(cluster, shard_root, tmp_path, "phases.0.global_batch=15")
    job.wait(timeout=300)
    log = (tmp_path / "job.log").read_text()
    assert job.returncode == 2, log[-3000:]
    assert "ssh_job: every node exited 2 2: bad input" in log and "pretrain/__main__.py" not in log, log[-3000:]


@pytest.mark.parametrize("codes, expected", [
    ("0 0", 0), ("75 75", 75), ("0 75", 75), ("2 2", 2), ("1 255", 1), ("2 1", 1), ("75 137", 1), ("0 2", 1),
])
def test_the_jobs_exit_code_from_its_nodes_codes(codes, expected):
    script = f"source {ROOT}/launch/lib.sh && job_exit_code {codes}"
    assert subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout.strip() == str(expected)


def test_kill_marked_ends_the_processes_of_its_mark_only(tmp_path):
    """Marks differ by job id and node: another job's node, or node 01 beside node 0, is not this mark."""
    marks = ["job-a/node0", "job-a/node01", "job-b/node0"]
    sleepers = [subprocess.Popen(["sleep", "60"], env={**os.environ, "SQUEEZEBERT_JOB": mark}) for mark in marks]
    try:
        subprocess.run(["bash", "-c", f"source {ROOT}/launch/lib.sh && kill_marked job-a/node0"], check=True)
        assert [sleeper.poll() for sleeper in sleepers] == [-signal.SIGKILL, None, None]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
