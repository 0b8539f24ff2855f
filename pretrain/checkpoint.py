"""Checkpoints that become visible only when complete, and the last K of them.

Layout under `checkpoint.dir`:

    step-00001200/state/...   DeepSpeed's files (model, LAMB state) + our client state, complete
    latest                    the name of the newest complete checkpoint (written atomically, last)
    .tmp-step-00001300/       a save in progress: never read, removed at the next start

Every rank writes its DeepSpeed files into the temporary folder; after a barrier rank 0 renames the folder
to its final name (an atomic rename on a shared filesystem), then rewrites `latest`, then deletes the
oldest checkpoints beyond `keep`. A crash at any point leaves the previous checkpoint complete and chosen.

Each rank also stores its random generators (torch, CUDA, numpy, Python) in `state/rng-rankNNNNN.pt` and
gets them back on resume. The trainer itself needs none of them (masks are a function of the sample index
and dropout is reseeded every step, so that a different world size sees the same randomness); they are
kept so that any code drawing from the global generators resumes where it stopped too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import time

import numpy as np
import torch
import torch.distributed as dist

from formats.errors import UserError, one_line
from formats.files import atomic_write_bytes, file_sha256, fsync_tree, replace_folder

from .config import CheckpointConfig
from .distributed import lost_a_peer

LATEST_FILE = "latest"
TAG = "state"
PREFIX = "step-"
FILES_RECORD = "files.json"  # every file of the checkpoint with its size and sha256, written last
MODEL_STATES_FILE = "mp_rank_00_model_states.pt"  # DeepSpeed's name for the weights (and, ZeRO 0, LAMB's state)
# keys of the client state the trainer stores beside DeepSpeed's, that readers of a checkpoint use
MODEL_CONFIG_KEY = "model_config"
VOCAB_DIR_KEY = "vocab_dir"
VOCAB_SHA256_KEY = "vocab_sha256"  # the tokenizer.json the shards were made with (absent before this version)


class CheckpointError(UserError):
    """A checkpoint that could not be written (a full disk, a quota); the previous one stays `latest`."""


def checkpoint_name(global_step: int) -> str:
    return f"{PREFIX}{global_step:08d}"


def read_latest(directory: str) -> str | None:
    """The name `latest` holds (None without one), checked to be a `step-N` folder name: the name is joined to
    `directory`, so a `latest` copied from elsewhere must not lead out of it (`../elsewhere`, an absolute path)."""
    pointer = os.path.join(directory, LATEST_FILE)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8", errors="replace") as handle:
        name = handle.read().strip()
    if not re.fullmatch(re.escape(PREFIX) + r"[0-9]{8}", name):
        raise CheckpointError(f"{pointer} names {name[:80]!r}, not a step-NNNNNNNN folder beside it; a trainer "
                              "writes only those: restore the file or remove it (the newest complete checkpoint "
                              "is then used)")
    return name


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(path: str, rank: int) -> str:
    return os.path.join(path, TAG, f"rng-rank{rank:05d}.pt")


class Checkpointer:
    """Owns the checkpoints: their layout, when to save (`due`), keeping the last K, and reading them."""

    def __init__(self, config: CheckpointConfig, rank: int) -> None:
        self.directory = config.dir
        self.keep = config.keep
        self.every_steps = config.every_steps
        self.every_minutes = config.every_minutes
        self.rank = rank
        self.last_save_time = time.monotonic()
        directory = self.directory
        if rank == 0:
            os.makedirs(directory, exist_ok=True)
            for name in os.listdir(directory):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()

    def clock_due(self) -> bool:
        """Rank 0's wall clock says a save is due (`every_minutes`). Clocks differ between ranks, so the
        trainer carries rank 0's answer to every rank in the step's all-reduce and passes it to `due`."""
        every = self.every_minutes
        return bool(every) and self.rank == 0 and time.monotonic() - self.last_save_time >= every * 60

    def due(self, global_step: int, phase_ended: bool, clock_due_on_rank0: bool) -> bool:
        """Save at a phase end, every `every_steps` optimizer steps, or when rank 0's clock says so."""
        if phase_ended or clock_due_on_rank0:
            return True
        return bool(self.every_steps) and global_step % self.every_steps == 0

    def complete(self) -> list[str]:
        """Names of complete checkpoints, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(n for n in os.listdir(self.directory)
                      if n.startswith(PREFIX) and os.path.isdir(os.path.join(self.directory, n, TAG)))

    def candidates(self) -> list[str]:
        """Complete checkpoints, the one `latest` names first, then the others newest first."""
        names = self.complete()[::-1]
        try:
            name = read_latest(self.directory)
        except CheckpointError:  # `usable` reports it; the complete checkpoints beside it stand
            name = None
        if name is not None:
            if name in names:
                names.remove(name)
                names.insert(0, name)
        return [os.path.join(self.directory, name) for name in names]

    def usable(self) -> tuple[str | None, list[str]]:
        """The newest checkpoint whose files match their record (sizes and sha256), and a line for each newer
        one that did not. Rank 0 reads the files and tells every rank (collective)."""
        choice, problems = None, []
        if self.rank == 0:
            pointer = os.path.join(self.directory, LATEST_FILE)
            try:
                named = read_latest(self.directory)
            except CheckpointError as error:
                named = None
                problems.append(str(error))
            if named is not None and not os.path.isdir(os.path.join(self.directory, named, TAG)):
                problems.append(f"{pointer} names {named}, which is not a complete checkpoint")
            for path in self.candidates():
                problem = damage(path)
                if problem is None:
                    choice = path
                    break
                problems.append(f"{path} is damaged ({problem})")
        if dist.is_initialized():
            answer = [choice, problems]
            dist.broadcast_object_list(answer, src=0)
            choice, problems = answer
        return choice, problems

    def save(self, engine, global_step: int, client_state: dict) -> str:
        """Collective: every rank calls it with the same step."""
        name = checkpoint_name(global_step)
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".tmp-{name}")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        with self._write_failures(tmp, final):
            engine.save_checkpoint(tmp, tag=TAG, client_state=client_state, save_latest=False)
            os.makedirs(os.path.join(tmp, TAG), exist_ok=True)
            torch.save(rng_state(), rng_file(tmp, self.rank))
        if dist.is_initialized():
            dist.barrier()
        if self.rank == 0:
            with self._write_failures(tmp, final):
                record_files(tmp)
                fsync_tree(tmp)
                replace_folder(tmp, final)  # the same step saved again (preempted right after a save) too
                atomic_write_bytes(os.path.join(self.directory, LATEST_FILE), (name + "\n").encode())
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        self.last_save_time = time.monotonic()
        return final

    @contextlib.contextmanager
    def _write_failures(self, tmp: str, final: str):
        """A write that fails (full disk, quota, torch.save's RuntimeError for the same) becomes one
        `CheckpointError`; the partial save is removed and `latest` still names the previous checkpoint."""
        try:
            yield
        except (OSError, RuntimeError, UserError) as error:
            if lost_a_peer(error):
                raise  # not a write: reported as a lost peer
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(
                f"{final}: could not write this checkpoint ({one_line(error)}); the previous complete "
                f"checkpoint is kept as {os.path.join(self.directory, LATEST_FILE)} names it: free space in "
                f"{self.directory} and rerun the same command to resume") from None

    def load(self, engine, path: str) -> dict:
        _, client_state = engine.load_checkpoint(path, tag=TAG)
        if os.path.isfile(rng_file(path, self.rank)):  # a rank the saving run did not have keeps its seed
            set_rng_state(torch.load(rng_file(path, self.rank), weights_only=False))
        return client_state


def record_files(folder: str) -> None:
    """`files.json`: every file of the checkpoint with its size and sha256, so a damaged one is found."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    atomic_write_bytes(os.path.join(folder, FILES_RECORD), json.dumps(files, indent=1, sort_keys=True).encode())


def damage(path: str) -> str | None:
    """What is wrong with a checkpoint's files, or None. A checkpoint saved before files were recorded is
    taken as it is."""
    record_path = os.path.join(path, FILES_RECORD)
    if not os.path.isfile(record_path):
        return None
    try:
        with open(record_path, encoding="utf-8") as handle:
            files = json.load(handle)
    except (OSError, ValueError) as error:
        return f"{FILES_RECORD} unreadable: {one_line(error)}"
    for name, expected in sorted(files.items()):
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            return f"{name} is missing"
        size = os.path.getsize(file_path)
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, {expected['bytes']} were written"
        if file_sha256(file_path) != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def is_checkpoint(path: str) -> bool:
    """A checkpoint dir (with `latest`) or one `step-N/` folder of one."""
    return os.path.isfile(os.path.join(path, LATEST_FILE)) or os.path.isdir(os.path.join(path, TAG))


def read_trained_model(path: str) -> tuple[dict, dict, str | None, str | None]:
    """The weights, model config, vocabulary folder and vocabulary sha256 of a checkpoint (None for a checkpoint
    of an earlier version), without DeepSpeed or a process group: `path` is a checkpoint dir (its `latest` is read)
    or one `step-N/` folder."""
    named = read_latest(path)
    if named is not None:
        path = os.path.join(path, named)
    states_path = os.path.join(path, TAG, MODEL_STATES_FILE)
    if not os.path.isfile(states_path):
        raise CheckpointError(f"--checkpoint {path}: no complete checkpoint there ({TAG}/{MODEL_STATES_FILE})")
    problem = damage(path)  # the files as they were saved, or an export of a damaged model would go unnoticed
    if problem:
        raise CheckpointError(f"--checkpoint {path}: damaged ({problem}); export another step-N/ of it")
    states = torch.load(states_path, map_location="cpu", weights_only=False)
    return states["module"], states[MODEL_CONFIG_KEY], states.get(VOCAB_DIR_KEY), states.get(VOCAB_SHA256_KEY)
