"""The random generators a checkpoint stores per rank come back exactly; `latest` names only a step folder beside it;
nothing read from a checkpoint runs code."""

import os
import random

import numpy as np
import pytest
import torch

from pretrain.checkpoint import (
    Checkpointer,
    CheckpointError,
    load_rng_state,
    load_tensors,
    read_latest,
    read_trained_model,
    rng_file,
    save_rng_state,
)
from pretrain.config import CheckpointConfig


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    draws()  # move away from the seeded start
    np.random.randn()  # numpy's cached Gaussian is part of its state
    random.gauss(0, 1)  # and Python's
    path = rng_file(str(tmp_path), 3)
    (tmp_path / "state").mkdir()
    save_rng_state(path)
    expected = draws() + (np.random.randn(), random.gauss(0, 1))
    assert draws() != expected[:3]  # the generators moved on
    load_rng_state(path)
    assert draws() + (np.random.randn(), random.gauss(0, 1)) == expected
    assert path.endswith("state/rng-rank00003.safetensors")


def test_a_damaged_generator_file_is_one_line(tmp_path):
    path = tmp_path / "rng-rank00000.safetensors"
    save_rng_state(str(path))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="not a readable generator state"):
        load_rng_state(str(path))


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
    choice, problems = checkpointer.usable()
    assert choice == os.path.join(str(checkpoints), "step-00000003")
    assert len(problems) == 1 and "not a step-NNNNNNNN folder beside it" in problems[0]
    assert not marker.exists()


def test_latest_naming_an_incomplete_checkpoint_is_refused_by_export_and_passed_over_by_resume(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step-00000003" / "state").mkdir(parents=True)
    (checkpoints / "step-00000006").mkdir()  # no state/: not complete
    (checkpoints / "latest").write_text("step-00000006\n")
    with pytest.raises(CheckpointError, match="names step-00000006, which is not a complete checkpoint"):
        read_trained_model(str(checkpoints))
    choice, problems = Checkpointer(CheckpointConfig(dir=str(checkpoints)), rank=0).usable()
    assert choice == os.path.join(str(checkpoints), "step-00000003")
    assert problems == [f"{checkpoints / 'latest'} names step-00000006, which is not a complete checkpoint"]
    (checkpoints / "latest").write_text("step-00000003\n")
    assert read_latest(str(checkpoints)) == os.path.join(str(checkpoints), "step-00000003")



def test_a_torch_file_with_anything_but_tensors_and_numbers_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "global_steps": 3, "extra": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"refused: it holds io.open, not only tensors and numbers"):
        load_tensors(str(path))
    assert not marker.exists()
    torch.save({"module": {"w": torch.ones(2)}, "global_steps": 3, "betas": (0.9, 0.999), "name": "x"}, path)
    assert load_tensors(str(path))["global_steps"] == 3
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_tensors(str(path))
