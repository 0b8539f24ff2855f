"""The client state a checkpoint keeps: written with its schema version, read back field by field, older versions
upgraded by named steps, a newer one refused in one line."""

import pytest

from pretrain.checkpoint_schema import (
    SCHEMA_KEY,
    SCHEMA_VERSION,
    UPGRADES,
    CheckpointSchemaError,
    ClientState,
    read_client_state,
)


def current_state() -> ClientState:
    return ClientState(
        trainer={"phase_index": 1, "step_in_phase": 2, "global_step": 10, "consumed_samples": 16,
                 "skipped_steps": 3, "consecutive_skips": 1},
        config={"seed": 1234}, model_config={"hidden_size": 32}, vocab_dir="/data/vocab", vocab_sha256="ab" * 32,
        shards=["f0", "f1"], world_size=2, loss_scale={"scale": 1024.0, "good_steps": 5}, logging_runs={"wandb": "x"})


def test_a_saved_client_state_reads_back_field_for_field_among_deepspeeds_keys():
    saved = current_state().to_saved()
    assert saved[SCHEMA_KEY] == SCHEMA_VERSION
    deepspeed_keys = {"module": {}, "optimizer": {}, "global_steps": 10}  # the same file's other keys
    assert read_client_state({**deepspeed_keys, **saved}, "x.pt") == current_state()


def test_the_oldest_layout_is_upgraded_by_its_named_steps():
    """The first trainer's client state: counters without the skips, config, shards, world size; no version."""
    oldest = {"trainer": {"phase_index": 0, "step_in_phase": 3, "global_step": 3, "consumed_samples": 48},
              "config": {"seed": 1}, "shards": ["f0"], "world_size": 1}
    state = read_client_state(oldest, "x.pt")
    assert state.trainer == {**oldest["trainer"], "skipped_steps": 0, "consecutive_skips": 0}
    assert (state.loss_scale, state.logging_runs, state.vocab_dir, state.vocab_sha256, state.model_config) == \
        (None, {}, None, None, None)
    assert [step.__name__ for step in UPGRADES[0]] == [
        "skip_counters_start_at_zero", "no_loss_scale_recorded", "no_logging_runs_recorded", "no_vocabulary_recorded",
        "no_model_config_recorded"]


def test_an_unversioned_layout_keeps_what_it_recorded():
    """Version 0 spans several layouts: a step fills a field only where that layout lacked it."""
    later = current_state().to_saved()
    del later[SCHEMA_KEY], later["vocab_sha256"]
    state = read_client_state(later, "x.pt")
    assert state.trainer["skipped_steps"] == 3 and state.logging_runs == {"wandb": "x"}
    assert state.vocab_sha256 is None and state.loss_scale == {"scale": 1024.0, "good_steps": 5}


def test_a_newer_schema_is_refused_in_one_line_naming_the_file():
    saved = {**current_state().to_saved(), SCHEMA_KEY: SCHEMA_VERSION + 1}
    with pytest.raises(CheckpointSchemaError, match=rf"^ckpt/state/x.pt: checkpoint schema {SCHEMA_VERSION + 1}, "
                                                    rf"this code reads up to {SCHEMA_VERSION}; .* newer version"):
        read_client_state(saved, "ckpt/state/x.pt")


@pytest.mark.parametrize("change, message", [
    (lambda saved: saved.pop("world_size"), r"lacks \['world_size'\]"),  # not an upgrade's field at this version
    (lambda saved: saved.update(shards="f0"), r"field 'shards' is a str"),
    (lambda saved: saved.update({SCHEMA_KEY: "1"}), r"schema_version '1' is not a version number"),
    (lambda saved: [saved.pop(SCHEMA_KEY), saved.pop("trainer")], r"client state of schema 0 lacks \['trainer'\]"),
])
def test_a_current_client_state_missing_or_malformed_is_one_line(change, message):
    saved = current_state().to_saved()
    change(saved)
    with pytest.raises(CheckpointSchemaError, match=message) as error:
        read_client_state(saved, "x.pt")
    assert "\n" not in str(error.value) and str(error.value).startswith("x.pt: ")
