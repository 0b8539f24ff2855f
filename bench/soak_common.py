"""What both random-kill soaks (soak_training_kills.py, soak_data_prep_kills.py) need: the timed reference run,
and whether a killed process group is really gone before the rerun starts."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Callable


def reference_run(command: list[str], cwd: str, first_sign: Callable[[], bool], stderr_path: str | None = None,
                  poll_seconds: float = 0.005) -> tuple[int, float, float | None]:
    """Runs `command` once to its end (a soak's reference, never killed), polling `first_sign()` (the first unit
    recorded, the first step line) meanwhile. Returns (exit status, seconds it ran, seconds until `first_sign`
    first held, None if it never did): the pace the soak draws its kill moments from."""
    start, first = time.monotonic(), None
    stderr = open(stderr_path, "w") if stderr_path else None
    try:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        while process.poll() is None:
            if first is None and first_sign():
                first = time.monotonic() - start
            time.sleep(poll_seconds)
    finally:
        if stderr:
            stderr.close()
    return process.returncode, time.monotonic() - start, first


def group_alive(pgid: int) -> bool:
    """Any process of the group not yet dead (zombies count as dead: this container's init may not reap)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False
