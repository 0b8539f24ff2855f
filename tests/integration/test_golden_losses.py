"""Golden losses: the tiny run's first steps, pinned as torchtitan pins its loss curves.

The first losses follow from the initial weights, the sample order, the masks, the dropout seeds (the trainer's
`(seed, step, place in the global batch)`) and the model's arithmetic. A change to any of them that the
statistical and resume tests cannot see (a renumbered random stream, another dropout seed) moves these numbers.
If the change is deliberate (e.g. the model's dropout arithmetic), rewrite the file and commit it:

    REGENERATE_GOLDEN=1 PYTHONPATH=. python -m pytest tests/integration/test_golden_losses.py

The run is the tiny config on the golden shards (the test corpus tokenized with the committed vocabulary), not
the suite's shared run: the suite's vocabulary is trained afresh each session and differs from one to the next."""

import subprocess

import pytest

from tests.golden import check_golden
from tests.integration.test_trainer import scalars, train_command

STEPS = 4  # of the schedule's 12: max_steps_this_run keeps the schedule (warmup, decay) of the whole run
COMMAND = "REGENERATE_GOLDEN=1 PYTHONPATH=. python -m pytest tests/integration/test_golden_losses.py"
# The same arithmetic gives the same bits on one machine; another CPU's kernels (AVX-512 or not, another BLAS)
# may sum in another order. A changed mask, order or dropout seed moves the loss by far more (~1e-3 and up).
RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def golden_run(golden_shard_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("golden_run")
    result = subprocess.run(train_command(golden_shard_root, f"max_steps_this_run={STEPS}"), cwd=workdir,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 75, result.stderr[-3000:]  # the step budget spent, checkpoint saved
    return str(workdir)


def test_the_tiny_runs_first_losses_are_pinned(golden_run):
    values = {tag: [scalars(golden_run, tag)[step][0] for step in range(1, STEPS + 1)]
              for tag in ("train/loss", "train/mlm_loss", "train/sop_loss")}
    check_golden("tiny_run_losses", values, "The tiny run's first losses changed: its initial weights, sample "
                 "order, masks, dropout seeds or the model's arithmetic differ from the pinned run's, so a run "
                 "resumed across this change continues differently.", COMMAND, tolerance=RELATIVE_TOLERANCE)
