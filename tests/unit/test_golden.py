"""Golden values of the training data: the masks and the sample order of the tiny run at lengths 128 and 512,
with and without whole-word masking, and the counter-based random streams they are drawn from.

They are functions of (seed, epoch, sample index) alone, which the statistical tests check; these tests pin the
functions themselves. Renumbering a stream, reordering the permutation's seeds or changing how a budget is
rounded passes every statistical test and silently gives a run resumed after the upgrade other data than the
steps it already took. If such a change is deliberate, regenerate the pinned file and commit it:

    REGENERATE_GOLDEN=1 PYTHONPATH=. python -m pytest tests/unit/test_golden.py

The batchers are the run's own (`open_phase_data` on the tiny config), so the values are what a run sees; the
shards are the test corpus tokenized with a committed vocabulary (`golden_shard_root`), the same in every session."""

import hashlib
import os

import numpy as np
import pytest

from pretrain.config import load_config
from pretrain.data import uniform
from pretrain.model import ModelConfig
from pretrain.trainer import open_phase_data
from tests.conftest import ROOT
from tests.golden import check_golden

CONFIG = os.path.join(ROOT, "configs", "tiny.toml")
COMMAND = "REGENERATE_GOLDEN=1 PYTHONPATH=. python -m pytest tests/unit/test_golden.py"
SAMPLES_MASKED = 4  # the first global samples of each phase whose masks are pinned
SAMPLES_ORDERED = 32


def run_batchers(shard_root, whole_word):
    """The tiny run's batchers (phase 1 at length 128, phase 2 at 512), as the trainer opens them."""
    sets = [f'phases.0.shards="{os.path.join(shard_root, "seq128")}"',
            f'phases.1.shards="{os.path.join(shard_root, "seq512")}"', f"masking.whole_word={str(whole_word).lower()}"]
    config = load_config(CONFIG, sets)
    return open_phase_data(config, ModelConfig.preset(config.model))


def shard_set_identity(batcher):
    """What the shards are, so a failure can tell "the data changed" from "the masking changed"."""
    manifest = batcher.shards.manifest
    shards = hashlib.sha256("".join(entry["sha256"] for entry in manifest["shards"]).encode()).hexdigest()
    return {"examples": len(batcher.shards), "shards_sha256": shards[:16],
            "vocabulary_sha256": manifest["tokenizer"]["sha256"][:16]}


def masks_of(batcher, samples):
    """Per sample: the example it reads, the masked positions, the labels there and the ids put there."""
    batch = batcher(samples)
    labels, inputs = batch["mlm_labels"].numpy(), batch["input_ids"].numpy()
    _, examples = batcher.order.examples(samples)
    rows = []
    for row, example in enumerate(examples):
        positions = np.flatnonzero(labels[row] != -100)
        rows.append({"example": int(example), "positions": positions.tolist(),
                     "labels": labels[row, positions].tolist(), "inputs": inputs[row, positions].tolist()})
    return rows


@pytest.fixture(scope="module")
def batchers(golden_shard_root):
    return {whole_word: run_batchers(golden_shard_root, whole_word) for whole_word in (False, True)}


def test_the_random_streams_are_pinned():
    """The three streams of `uniform` (which tokens, which action, which replacement) at a few (epoch, sample,
    position) points: a pure function of its arguments, pinned apart from any data."""
    epochs, samples = np.array([0, 0, 1, 7]), np.array([0, 1, 0, 123456789])
    values = {f"stream{stream}": uniform(1234, stream, epochs, samples, 3).tolist() for stream in range(3)}
    check_golden("random_streams", values, "Every mask of every run is drawn from these streams: a run resumed "
                 "across this change masks other tokens from its next step on.", COMMAND)


def test_the_sample_order_of_both_phases_is_pinned(batchers):
    """The first examples of epoch 0, and the samples either side of the first epoch boundary, per phase."""
    values = {}
    for phase, batcher in zip(("seq128", "seq512"), batchers[False]):
        boundary = batcher.num_train
        values[phase] = {
            "shards": shard_set_identity(batcher), "num_train": batcher.num_train,
            "first": batcher.order.examples(np.arange(SAMPLES_ORDERED))[1].tolist(),
            "across_epoch_1": batcher.order.examples(np.arange(boundary - 4, boundary + 4))[1].tolist(),
        }
    check_golden("sample_order", values, "The order in which a run reads its examples changed (or, if `.shards` "
                 "differs, the shard set data_prep makes from the test corpus): a run resumed across this change "
                 "reads other examples than the steps it has not taken yet would have.", COMMAND)


@pytest.mark.parametrize("whole_word", [False, True], ids=["tokens", "whole_words"])
def test_the_first_masks_of_both_phases_are_pinned(batchers, whole_word):
    values = {phase: {"shards": shard_set_identity(batcher),
                      "samples": masks_of(batcher, np.arange(SAMPLES_MASKED))}
              for phase, batcher in zip(("seq128", "seq512"), batchers[whole_word])}
    check_golden(f"masks_{'whole_words' if whole_word else 'tokens'}", values,
                 "The masked positions or what is put there changed (or, if `.shards` differs, the shard set "
                 "itself): a run resumed across this change masks its next steps differently.", COMMAND)
