"""Fixtures shared by the integration modules (each costs a full training run, so it is made once)."""

import pytest

from tests.integration.test_trainer import LAUNCHERS, run, train_command, with_port


@pytest.fixture(scope="session")
def launcher_references(shard_root, tmp_path_factory):
    """An uninterrupted run of the tiny config under each launcher, made on first use and shared by every module
    of the session (nothing may write into it: copy its folders first). The launchers differ in more than the
    ranks (torchrun sets OMP_NUM_THREADS=1, which changes the CPU kernels' summation order), so each resume is
    compared bit for bit with a run under its own launcher."""
    runs = {}

    def reference_for(launcher):
        if launcher not in runs:
            workdir = tmp_path_factory.mktemp(f"reference_{launcher}")
            run(train_command(shard_root, launcher=with_port(LAUNCHERS[launcher])), workdir)
            runs[launcher] = str(workdir)
        return runs[launcher]
    return reference_for


@pytest.fixture(scope="session")
def uninterrupted_run(launcher_references):
    """The tiny config trained once, uninterrupted, in one plain process (dropout on): the run that resumes,
    launch forms and restarts on other numbers of ranks are compared with. Trained once per session."""
    return launcher_references("process")
