"""Checkpoints that become visible only when complete, and the last K of them.

Layout under `checkpoint.dir`:

    step-00001200/state/...   DeepSpeed's files (model, LAMB state) + our client state, complete
    latest                    the name of the newest complete checkpoint (written atomically, last)
    .tmp-step-00001300/       a save in progress: never read, removed at the next start

Every rank writes its DeepSpeed files into the temporary folder; after a barrier rank 0 renames the folder
to its final name (an atomic rename on a shared filesystem), then rewrites `latest`, then deletes the
oldest checkpoints beyond `keep`. A crash at any point leaves the previous checkpoint complete and chosen.
"""

from __future__ import annotations

import os
import shutil

import torch.distributed as dist

from data_prep.atomic import atomic_write_bytes, fsync_dir

LATEST_FILE = "latest"
TAG = "state"
PREFIX = "step-"


def checkpoint_name(global_step: int) -> str:
    return f"{PREFIX}{global_step:08d}"


class Checkpointer:
    def __init__(self, directory: str, keep: int, rank: int) -> None:
        self.directory = directory
        self.keep = keep
        self.rank = rank
        if rank == 0:
            os.makedirs(directory, exist_ok=True)
            for name in os.listdir(directory):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()

    def complete(self) -> list[str]:
        """Names of complete checkpoints, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(n for n in os.listdir(self.directory)
                      if n.startswith(PREFIX) and os.path.isdir(os.path.join(self.directory, n, TAG)))

    def latest(self) -> str | None:
        """Path of the newest complete checkpoint: the one `latest` names, else the newest on disk."""
        pointer = os.path.join(self.directory, LATEST_FILE)
        if os.path.isfile(pointer):
            with open(pointer, encoding="utf-8") as handle:
                name = handle.read().strip()
            if os.path.isdir(os.path.join(self.directory, name, TAG)):
                return os.path.join(self.directory, name)
        names = self.complete()
        return os.path.join(self.directory, names[-1]) if names else None

    def save(self, engine, global_step: int, client_state: dict) -> str:
        """Collective: every rank calls it with the same step."""
        name = checkpoint_name(global_step)
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".tmp-{name}")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        engine.save_checkpoint(tmp, tag=TAG, client_state=client_state, save_latest=False)
        if dist.is_initialized():
            dist.barrier()
        if self.rank == 0:
            for root, _, files in os.walk(tmp):
                for file_name in files:
                    fd = os.open(os.path.join(root, file_name), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            if os.path.exists(final):  # the same step saved again (e.g. preempted right after a save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.directory)
            atomic_write_bytes(os.path.join(self.directory, LATEST_FILE), (name + "\n").encode())
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()
        return final

    @staticmethod
    def load(engine, path: str) -> dict:
        _, client_state = engine.load_checkpoint(path, tag=TAG)
        return client_state
