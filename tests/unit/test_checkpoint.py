"""The random generators a checkpoint stores per rank come back exactly; `latest` names only a step folder beside it."""

import os
import random

import numpy as np
import pytest
import torch

from pretrain.checkpoint import (
    Checkpointer,
    CheckpointError,
    read_latest,
    read_trained_model,
    rng_file,
    rng_state,
    set_rng_state,
)
from pretrain.config import CheckpointConfig


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    draws()  # move away from the seeded start
    path = rng_file(str(tmp_path), 3)
    (tmp_path / "state").mkdir()
    torch.save(rng_state(), path)
    expected = draws()
    assert draws() != expected  # the generators moved on
    set_rng_state(torch.load(path, weights_only=False))
    assert draws() == expected
    assert path.endswith("state/rng-rank00003.pt")


class Payload:
    """Unpickling it creates a file: what a pickle from elsewhere can do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("named", ["../elsewhere", "/tmp/elsewhere", "step-1", "step-00000003/../../elsewhere"])
def test_latest_naming_anything_but_a_step_folder_beside_it_is_refused_and_nothing_is_loaded(tmp_path, named):
    elsewhere = tmp_path / "elsewhere" / "state"
    elsewhere.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    torch.save({"module": Payload(str(marker))}, elsewhere / "mp_rank_00_model_states.pt")
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step-00000003" / "state").mkdir(parents=True)
    (checkpoints / "latest").write_text(named + "\n")
    with pytest.raises(CheckpointError, match="not a step-NNNNNNNN folder beside it"):
        read_latest(str(checkpoints))
    with pytest.raises(CheckpointError, match="not a step-NNNNNNNN folder beside it"):
        read_trained_model(str(checkpoints))  # export and init_from
    # a resume says so and falls back to the complete checkpoints beside it
    checkpointer = Checkpointer(CheckpointConfig(dir=str(checkpoints)), rank=0)
    assert checkpointer.candidates() == [os.path.join(str(checkpoints), "step-00000003")]
    assert not marker.exists()

