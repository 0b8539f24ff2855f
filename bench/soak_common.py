"""What both random-kill soaks (soak_training_kills.py, soak_data_prep_kills.py) need: whether a killed
process group is really gone before the rerun starts."""

from __future__ import annotations

import os


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
