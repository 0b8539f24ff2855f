"""The distributed lifecycle: the process group's start, preemption requests, the status file for job
scripts, the parameter fingerprint, the orderly end, and how a lost peer is recognised.

Every function here that makes a collective is called by every rank; rank-0-only or node-first-rank-only
side effects say so.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time

import torch
import torch.distributed as dist

from formats.errors import UserError
from formats.files import atomic_write_bytes


def setup_distributed(timeout_minutes: float = 10.0) -> tuple[int, int]:
    """The process group, from the launcher's variables (deepspeed, torchrun), or a world of one. NCCL on
    GPUs (CUDA tensors only: every collective of the trainer hands it device tensors), gloo on CPUs."""
    import deepspeed

    if "RANK" not in os.environ:  # a plain process: a world of one
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():  # before the process group: NCCL and object collectives use this device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    global BOARD
    BOARD = FailureBoard(dist.get_rank(), dist.get_world_size())
    return dist.get_rank(), dist.get_world_size()


class FailureBoard:
    """How a rank-local failure reaches every rank within seconds, under NCCL as under gloo.

    An error on one rank between two collectives (a failed checkpoint write on rank 0, an out-of-memory on
    one GPU) leaves its peers inside their next collective. gloo fails them when the rank's connections
    close; NCCL does not: they wait for the watchdog's timeout (`distributed_timeout_minutes`), which then
    aborts them with SIGABRT. So the failing rank posts its one-line error and exit status in the job's
    key-value store (torch's TCPStore at MASTER_ADDR:MASTER_PORT, which every rank already reaches, on every
    node); a thread on every rank waits on that key (a blocking wait on its own connection: no polling, no
    traffic while all is well), prints the same line and ends its process with the same status. The failing
    rank leaves the process group only after its peers have read the post (or after `READ_TIMEOUT_S`), so
    under gloo, too, the peers end through the post, not through their collective's error. The watchdog's
    timeout stays for real hangs. A store that closes (the process hosting it died: rank 0 under the
    `deepspeed` launcher, the first node's agent under torchrun) ends every rank as a lost peer."""

    READ_TIMEOUT_S = 10.0

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        # torchrun's agent keeps its store across restarts: a post of an earlier attempt must not end this one
        self.key = f"pretrain/failure/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        # Under `deepspeed` (env://) rank 0's process holds the store; under torchrun the first node's agent does.
        self.holds_store = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        self.ending = threading.Event()
        self.said = threading.Lock()  # the line is printed once, by the watch or by the main thread
        self.announced = False
        self.last_words = None  # called (at most 5 s) before a watch ends the process: the logs' "failed"
        self.store = self.watch_store = self.thread = None
        if world_size > 1:
            # Clients of their own: a wait blocks its connection, which no other store call may queue behind.
            self.store, self.watch_store = (
                dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=datetime.timedelta(seconds=60), wait_for_workers=False) for _ in range(2))
            self.thread = threading.Thread(target=self._watch, name="failure-board", daemon=True)
            self.thread.start()

    def say(self, line: str) -> None:
        """Prints the rank's last line, once."""
        with self.said:
            if not self.announced:
                print(line, file=sys.stderr, flush=True)
                self.announced = True

    def _claim(self, store, payload: str) -> str:
        """The first post wins: `add` claims the key and `set` wakes the waiting watches (with the legacy,
        non-libuv store, `compare_set` would not wake them). Returns the post that stands."""
        if store.add(self.key + "/claim", 1) == 1:
            store.set(self.key, payload)
            return payload
        return store.get(self.key).decode()  # waits for the winner's `set`

    def _reads(self, store) -> int:
        return store.add(self.key + "/read", 0)

    def _wait_for_reads(self, store) -> None:
        deadline = time.monotonic() + self.READ_TIMEOUT_S
        while self._reads(store) < self.world_size - 1 and time.monotonic() < deadline:
            time.sleep(0.05)

    def _watch(self) -> None:
        while True:
            try:
                self.watch_store.wait([self.key], datetime.timedelta(days=7))
                post = json.loads(self.watch_store.get(self.key))
            except dist.DistStoreError:  # the wait's own timeout: wait again
                continue
            except dist.DistError as error:  # the store's process is gone
                if self.ending.is_set():
                    return
                post = {"rank": None, "code": 1, "line": lost_peer_message(error)}
            if post["rank"] == self.rank or post.get("done"):
                return
            self.say(post["line"])
            # The line stays the last: the loop's thread may still print its console line while this one ends the
            # process, so stderr now writes nowhere.
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open until the process ends)
            if self.last_words is not None:
                words = threading.Thread(target=self.last_words, daemon=True)
                words.start()
                words.join(timeout=5)
            if post["rank"] is not None:
                try:
                    self.watch_store.add(self.key + "/read", 1)
                    if self.holds_store:  # its exit closes the store: not before every rank has read the post
                        self._wait_for_reads(self.watch_store)
                except dist.DistError:
                    pass
            # The loader's workers would print a traceback (EOFError) after the line when this process vanishes
            for child in multiprocessing.active_children():
                child.kill()
            os._exit(post["code"])  # this rank's main thread may be inside a collective that will not return

    def post(self, line: str, code: int, wait: bool = True) -> tuple[str, int]:
        """Tells every rank that this one fails with `line` and `code`, and waits (briefly) until they have
        read it, unless `wait` is False (a lost peer: the dead never read, and the living are failing at their
        own collectives anyway). Returns the line and code to end with: an earlier post of another rank wins
        (its error is the cause; this rank's is then usually the lost peer)."""
        self.ending.set()
        if self.store is None:
            return line, code
        mine = json.dumps({"rank": self.rank, "code": code, "line": line})
        try:
            posted = self._claim(self.store, mine)
            if posted != mine:
                first = json.loads(posted)
                return (first["line"], first["code"]) if first.get("line") else (line, code)
            if wait:
                self._wait_for_reads(self.store)
        except dist.DistError:  # the store is gone too: the peers learn it from their own watch
            pass
        return line, code

    def close(self) -> None:
        """The orderly end (after the last collective of the run): rank 0 posts `done` once every rank is
        here, and each watch returns, so no rank's watch sees the store close when rank 0 exits. Collective."""
        self.ending.set()
        if self.store is None:
            return
        dist.barrier()
        if self.rank == 0:
            self._claim(self.store, json.dumps({"rank": None, "done": True}))
        self.thread.join(timeout=30)


BOARD: FailureBoard | None = None  # this process's, once the process group exists


def set_last_words(action) -> None:
    """What this rank does before a peer's post ends its process (closing the logs as failed)."""
    if BOARD is not None:
        BOARD.last_words = action


def say(line: str) -> None:
    """Prints this rank's last line, unless the watch printed it already."""
    if BOARD is None:
        print(line, file=sys.stderr, flush=True)
    else:
        BOARD.say(line)


def post_failure(line: str, code: int, wait: bool = True) -> tuple[str, int]:
    """This rank's one-line error and exit status, told to every rank (see `FailureBoard`); the line and code to
    end with (another rank's earlier post wins)."""
    if BOARD is None:
        return line, code
    return BOARD.post(line, code, wait)


def on_rank0(action) -> None:
    """Runs `action()` on rank 0 alone (a rank-0-only side effect: a check against a server, opening a run);
    the `UserError` it raises is raised on every rank, so no peer waits in a collective for a rank that has
    left. Collective."""
    failure = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            action()
        except UserError as error:
            failure = error
    if dist.is_initialized():
        verdict = [failure]
        dist.broadcast_object_list(verdict, src=0)
        failure = verdict[0]
    if failure is not None:
        raise failure


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """SIGTERM / SIGUSR1 set a flag; every step the ranks agree whether to stop (the flag rides in the step's
    all-reduce: any rank's request stops all)."""

    def __init__(self) -> None:
        self.requested = False
        for signum in PREEMPTION_SIGNALS:
            signal.signal(signum, self._handler)

    def _handler(self, signum, frame) -> None:
        self.requested = True


def leave_signals_to_the_main_process(worker_id: int = 0) -> None:
    """A data-loader worker's `worker_init_fn`. SLURM (preemption, scancel, the time limit) and Kubernetes
    signal every process of the job, loader workers included. A worker that died of the SIGTERM would make
    the main process raise "DataLoader worker ... is killed by signal" in the middle of its save; so
    workers ignore the signals the main process acts on, and end with it."""
    for signum in (*PREEMPTION_SIGNALS, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def device_vector(values: list[float], device: torch.device) -> torch.Tensor:
    """A float64 vector of host values on `device` without a blocking copy: `torch.tensor(values, device=...)`
    copies from pageable memory, which makes the host wait for the device; a fill is a kernel launch."""
    vector = torch.empty(len(values), dtype=torch.float64, device=device)
    for index, value in enumerate(values):
        vector[index].fill_(value)
    return vector


def write_status(state: str, global_step: int) -> None:
    """For job scripts (launch/): PRETRAIN_STATUS_FILE gets `complete` or `preempted <step>`, written by the
    first rank of every node (the outcome is agreed by all ranks), so each node's script knows it even when
    its launcher's exit code says otherwise."""
    path = os.environ.get("PRETRAIN_STATUS_FILE")
    if path and os.environ.get("LOCAL_RANK", "0") == "0":
        atomic_write_bytes(path, f"{state} {global_step}\n".encode())


def parameter_fingerprint(model: torch.nn.Module, world_size: int) -> str:
    """sha256 of all parameters, checked equal on every rank (data parallelism must keep them so).
    Collective."""
    digest = hashlib.sha256()
    for parameter in model.parameters():
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    mine = digest.hexdigest()
    everyone = [mine]
    if dist.is_initialized():
        everyone = [None] * world_size
        dist.all_gather_object(everyone, mine)  # torch moves the bytes to the device the backend needs
    if len(set(everyone)) != 1:
        raise RuntimeError(f"parameters differ between ranks: {everyone}")
    return mine


def leave_together() -> None:
    """The orderly end of a run that returned: every rank leaves the process group together. A rank that
    exits while a peer still holds its connections can make that peer's collective library abort at exit
    (SIGABRT from gloo). Collective."""
    if dist.is_initialized():
        if BOARD is not None:
            BOARD.close()
        dist.barrier()
        dist.destroy_process_group()


def leave_after_error() -> None:
    """The end of a run that raised: the process group is destroyed without waiting for the peers (the error
    may be this rank's alone). Exiting with the group alive lets gloo's worker threads outlive the interpreter,
    which aborts the process at exit (SIGABRT, "terminate called without an active exception") instead of
    returning the one-line error's exit status. A no-op after `leave_together`."""
    if BOARD is not None:
        BOARD.ending.set()
    if dist.is_initialized():
        dist.destroy_process_group()


def lost_a_peer(error: BaseException) -> bool:
    """An error of the collective layer: torch's distributed errors (NCCL's arrive as `DistBackendError`), or
    gloo's and NCCL's that surface as plain RuntimeErrors."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and dist.is_initialized() and ("gloo" in text or "nccl" in text))


def lost_peer_message(error: BaseException) -> str:
    cause = " ".join(str(error).split()).split(". ")[0][:200]  # its first sentence, on one line
    return (f"pretrain: error: lost contact with another rank ({cause}); the last complete checkpoint is kept: "
            "relaunch every node with the same command to resume from it")
