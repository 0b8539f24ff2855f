"""The random generators a checkpoint stores per rank come back exactly."""

import random

import numpy as np
import torch

from pretrain.checkpoint import rng_file, rng_state, set_rng_state


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
