"""Checkpoints that become visible only when complete, and the last K of them.

Layout under `checkpoint.dir`:

    step-00001200/state/...   DeepSpeed's files (model, LAMB state) + our client state, complete
    latest                    the name of the newest complete checkpoint (written atomically, last)
    .tmp-step-00001300/       a save in progress: never read, removed at the next start
    .lock                     held by rank 0 for the whole run (`formats.locks`): one run per folder

Every rank writes its DeepSpeed files into the temporary folder; after a barrier rank 0 renames the folder
to its final name (an atomic rename on a shared filesystem), then rewrites `latest`, then deletes the
oldest checkpoints beyond `keep`. A crash at any point leaves the previous checkpoint complete and chosen.

Each rank also stores its random generators (torch, CUDA, numpy, Python) in `state/rng-rankNNNNN.safetensors`
and gets them back on resume. The trainer itself needs none of them (masks are a function of the sample index
and dropout is reseeded every step, so that a different world size sees the same randomness); they are
kept so that any code drawing from the global generators resumes where it stopped too.

Nothing read from a checkpoint runs code: DeepSpeed's files are read by its own checkpoint engine with
`torch.load(weights_only=True)` (tensors, containers and numbers; anything else is refused in one line), the
generators are safetensors with JSON metadata, the records are JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import re
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from formats.errors import UserError, one_line, refused_pickle
from formats.files import DISK_FULL_ERRNOS, atomic_write_bytes, file_sha256, fsync_tree, replace_folder
from formats.locks import lock_folder

from .checkpoint_schema import ClientState, read_client_state
from .config import CheckpointConfig
from .distributed import lost_a_peer

LATEST_FILE = "latest"
TAG = "state"
PREFIX = "step-"
FILES_RECORD = "files.json"  # every file of the checkpoint with its size and sha256, written last
MODEL_STATES_FILE = "mp_rank_00_model_states.pt"  # DeepSpeed's name for the weights (and, ZeRO 0, LAMB's state)


class CheckpointError(UserError):
    """A checkpoint that could not be written (a full disk, a quota); the previous one stays `latest`."""


class CheckpointDirBusy(UserError):
    """Another run holds `checkpoint.dir`'s lock: two runs would write the same `step-N/` folders."""


def checkpoint_name(global_step: int) -> str:
    return f"{PREFIX}{global_step:08d}"


def read_latest(directory: str) -> str | None:
    """The path of the checkpoint `latest` names (None without a `latest`): the one reading of it. The name must be
    a `step-N` folder beside it, since it is joined to `directory` (a `latest` copied from elsewhere must not lead
    out of it: `../elsewhere`, an absolute path), and that folder a complete checkpoint; otherwise a
    `CheckpointError`, which a resume reports before taking the newest complete one and an export stops on."""
    pointer = os.path.join(directory, LATEST_FILE)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8", errors="replace") as handle:
        name = handle.read().strip()
    if not re.fullmatch(re.escape(PREFIX) + r"[0-9]{8}", name):
        raise CheckpointError(f"{pointer} names {name[:80]!r}, not a step-NNNNNNNN folder beside it; a trainer "
                              "writes only those: restore the file or remove it (the newest complete checkpoint "
                              "is then used)")
    path = os.path.join(directory, name)
    if not os.path.isdir(os.path.join(path, TAG)):
        raise CheckpointError(f"{pointer} names {name}, which is not a complete checkpoint")
    return path


def lock_run_folder(directory: str) -> None:
    """Rank 0 takes `checkpoint.dir`'s lock for the whole run; refused while another run holds it. On a
    filesystem without locks the run goes on after a warning: keeping it to one run is then the user's job."""
    try:
        os.makedirs(directory, exist_ok=True)
        lock = lock_folder(directory)
    except OSError as error:
        raise CheckpointError(f"checkpoint.dir {directory}: cannot write there ({error.strerror or error}); "
                              "choose another checkpoint.dir") from None
    if lock.holder:
        raise CheckpointDirBusy(f"checkpoint.dir {directory}: another run is training there ({lock.holder}); "
                                "wait for it to end or choose another checkpoint.dir")
    if lock.unsupported:
        print(f"pretrain: warning: checkpoint.dir {directory}: its filesystem cannot lock the folder "
              f"({lock.unsupported}); going on without the lock: make sure no other run uses this checkpoint.dir",
              file=sys.stderr, flush=True)


def load_tensors(path: str, map_location=None, remedy: str = "") -> object:
    """`torch.load` of a file that may come from elsewhere: tensors, containers and numbers only
    (`weights_only=True`), so unpickling it cannot run code. Anything else, or a damaged file, is one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        called = refused_pickle(error)
        if called:
            raise CheckpointError(
                f"{path}: refused: it holds {called}, not only tensors and numbers, and unpickling it could run "
                f"code; the project never writes such a file{remedy}") from None
        raise CheckpointError(f"{path}: not a readable torch file ({one_line(error)[:200]}){remedy}") from None


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine with two changes. It reads with `load_tensors` (DeepSpeed's own
    unpickles with `weights_only=False`); the files it writes (weights, LAMB state, counters, the trainer's
    client state) hold nothing else, and ZeRO's optimizer files, which pickle a loss-scaler object, are never
    written (ZeRO 0). It writes through Python's file API, so a full disk is an `OSError` with its errno
    (torch's own writer reports "unexpected pos"); the file is serialized in memory first, its size once."""

    def load(self, path: str, map_location=None):
        return load_tensors(path, map_location, remedy="; remove this checkpoint (the previous one is then used) "
                            "or get it again from where it was made")

    def save(self, state_dict, path: str):
        buffer = io.BytesIO()
        torch.save(state_dict, buffer, _use_new_zipfile_serialization=self.zipfile_serialization)
        with open(path, "wb") as handle:
            handle.write(buffer.getbuffer())


def use_safe_checkpoint_engine(engine) -> None:
    """Give a DeepSpeed engine the `SafeCheckpointEngine` in place of its torch engine (DeepSpeed has no
    setting for it); another engine (Nebula, decoupled) is refused."""
    current = getattr(engine, "checkpoint_engine", None)
    if type(current) is TorchCheckpointEngine:
        safe = SafeCheckpointEngine.__new__(SafeCheckpointEngine)
        safe.__dict__.update(current.__dict__)  # its name and serialization settings
        engine.checkpoint_engine = safe
    elif type(current) is not SafeCheckpointEngine:
        raise RuntimeError(f"DeepSpeed chose the checkpoint engine {type(current).__name__}; only its torch engine "
                           "is supported (its files are read without unpickling code)")


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's generators as tensors and JSON metadata (a safetensors file's two parts)."""
    numpy_name, numpy_key, numpy_pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy_key": torch.from_numpy(numpy_key.astype(np.int64)),
               "python_state": torch.tensor(python_state, dtype=torch.int64)}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{index}"] = state
    numbers = {"numpy_name": numpy_name, "numpy_pos": int(numpy_pos), "numpy_has_gauss": int(has_gauss),
               "numpy_cached_gaussian": float(cached_gaussian), "python_version": version,
               "python_gauss_next": gauss_next}
    return tensors, {"rng": json.dumps(numbers)}


def set_rng_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    numbers = json.loads(metadata["rng"])
    torch.set_rng_state(tensors["torch"])
    np.random.set_state((numbers["numpy_name"], tensors["numpy_key"].numpy().astype(np.uint32),
                         numbers["numpy_pos"], numbers["numpy_has_gauss"], numbers["numpy_cached_gaussian"]))
    random.setstate((numbers["python_version"], tuple(tensors["python_state"].tolist()),
                     numbers["python_gauss_next"]))
    cuda = [tensors[f"cuda_{index}"] for index in range(sum(k.startswith("cuda_") for k in tensors))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_rng_state(path: str) -> None:
    tensors, metadata = rng_state()
    with open(path, "wb") as handle:  # Python's file API: a full disk is an OSError with its errno
        handle.write(safetensors_bytes(tensors, metadata=metadata))


def load_rng_state(path: str) -> None:
    """Set this process's generators from `save_rng_state`'s file; a damaged one is one line."""
    try:
        with safe_open(path, framework="pt") as handle:
            set_rng_state({key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {})
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a readable generator state ({one_line(error)[:200]}); remove this "
                              "checkpoint (the previous one is then used)") from None


def rng_file(path: str, rank: int) -> str:
    return os.path.join(path, TAG, f"rng-rank{rank:05d}.safetensors")


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
        if rank == 0:  # raised before the barrier: the failure board ends the other ranks with the same line
            lock_run_folder(directory)
            for name in os.listdir(directory):  # after the lock: another run's save in progress is not ours
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

    def usable(self) -> tuple[str | None, list[str]]:
        """The newest checkpoint whose files match their record (sizes and sha256), the one `latest` names first,
        and a line for each one tried before it, or for a `latest` that could not be followed. Rank 0 reads the
        files and tells every rank (collective)."""
        choice, problems = None, []
        if self.rank == 0:
            try:
                named = read_latest(self.directory)
            except CheckpointError as error:  # the complete checkpoints beside it stand
                named = None
                problems.append(str(error))
            order = [os.path.join(self.directory, name) for name in self.complete()[::-1]]  # newest first
            if named is not None:  # complete (`read_latest` checked it), so among them: moved to the front
                order.remove(named)
                order.insert(0, named)
            for path in order:
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

    def save(self, engine, global_step: int, client_state: ClientState) -> str:
        """Collective: every rank calls it with the same step."""
        name = checkpoint_name(global_step)
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".tmp-{name}")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        use_safe_checkpoint_engine(engine)
        with self._write_failures(tmp, final):
            engine.save_checkpoint(tmp, tag=TAG, client_state=client_state.to_saved(), save_latest=False)
            os.makedirs(os.path.join(tmp, TAG), exist_ok=True)
            save_rng_state(rng_file(tmp, self.rank))
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
            full = isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS
            reason = f"disk full: {error.strerror}" if full else one_line(error)
            raise CheckpointError(
                f"{final}: could not write this checkpoint ({reason}); the previous complete "
                f"checkpoint is kept as {os.path.join(self.directory, LATEST_FILE)} names it: free space in "
                f"{self.directory} and rerun the same command to resume") from None

    def load(self, engine, path: str) -> ClientState:
        use_safe_checkpoint_engine(engine)
        _, client_state = engine.load_checkpoint(path, tag=TAG)
        if os.path.isfile(rng_file(path, self.rank)):  # a rank the saving run did not have keeps its seed
            load_rng_state(rng_file(path, self.rank))
        return read_client_state(client_state, os.path.join(path, TAG, MODEL_STATES_FILE))


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
    """The weights, model config, vocabulary folder and vocabulary sha256 of a checkpoint (None where its version
    did not record them), without DeepSpeed or a process group: `path` is a checkpoint dir (its `latest` is read)
    or one `step-N/` folder."""
    path = read_latest(path) or path
    states_path = os.path.join(path, TAG, MODEL_STATES_FILE)
    if not os.path.isfile(states_path):
        raise CheckpointError(f"--checkpoint {path}: no complete checkpoint there ({TAG}/{MODEL_STATES_FILE})")
    problem = damage(path)  # the files as they were saved, or an export of a damaged model would go unnoticed
    if problem:
        raise CheckpointError(f"--checkpoint {path}: damaged ({problem}); export another step-N/ of it")
    states = load_tensors(states_path, "cpu", remedy="; export another step-N/ of it, or get it again")
    client = read_client_state(states, states_path)
    if client.model_config is None:
        raise CheckpointError(f"--checkpoint {path}: saved by the first trainer, which did not record the model's "
                              "config; export a checkpoint of a later run")
    return states["module"], client.model_config, client.vocab_dir, client.vocab_sha256
