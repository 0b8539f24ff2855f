"""Fixtures shared by the integration modules (each costs a full training run, so it is made once)."""

import pytest

from tests.integration.test_trainer import LAUNCHERS, run, train_command, with_port


@pytest.fixture(scope="session")
def launcher_references(shard_root, tmp_path_factory):
    """An uninterrupted run under each launcher, made on first use. The launchers differ in more than the
    ranks (torchrun sets OMP_NUM_THREADS=1, which changes the CPU kernels' summation order), so each resume
    is compared bit for bit with a run under its own launcher."""
    runs = {}

    def reference_for(launcher):
        if launcher not in runs:
            workdir = tmp_path_factory.mktemp(f"reference_{launcher}")
            run(train_command(shard_root, launcher=with_port(LAUNCHERS[launcher])), workdir)
            runs[launcher] = str(workdir)
        return runs[launcher]
    return reference_for
