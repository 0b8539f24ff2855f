"""The client state: what the trainer keeps in a checkpoint beside DeepSpeed's files, under a schema version.

`ClientState` names every field. `to_saved` is the one writer (it stamps `SCHEMA_VERSION`); `read_client_state`
is the one reader: it takes a checkpoint of any version this code knows, upgrades an older one one named step at a
time, then requires every field, so no reader of a checkpoint needs a fallback of its own. A schema newer than this
code knows is refused in one line (newer code wrote it: a resume would misread it). Version 0 is every checkpoint
written before the version was recorded; the oldest layout it accepts is kept in `tests/assets/checkpoint_schema0/`.
The resolved config inside is compared by `config.resume_changes`, whose defaults stand in for newer settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from formats.errors import UserError

SCHEMA_VERSION = 1
SCHEMA_KEY = "schema_version"


class CheckpointSchemaError(UserError):
    """A checkpoint's client state that this code cannot read: a newer schema, or a field missing or malformed."""


@dataclass
class ClientState:
    trainer: dict  # `TrainerState.state_dict()`: the step counters
    config: dict  # the resolved run config
    model_config: dict | None  # the model's `ModelConfig.to_dict()`; None: not recorded (version 0 only)
    vocab_dir: str | None  # the vocabulary folder beside the shards; None: not recorded
    vocab_sha256: str | None  # sha256 of the tokenizer.json the shards were made with; None: not recorded
    shards: list  # each phase's shard-set fingerprint
    world_size: int
    loss_scale: dict | None  # `DynamicLossScale.state_dict()`; None: the run was not fp16
    logging_runs: dict  # backend name -> run id: a resumed run continues the same W&B / MLflow runs

    def to_saved(self) -> dict:
        """The dict handed to DeepSpeed as its client state, stamped with this code's schema version."""
        return {SCHEMA_KEY: SCHEMA_VERSION, **dataclasses.asdict(self)}


# Version 0 spans several unversioned layouts, so each step fills its field only where that layout lacks it.

def skip_counters_start_at_zero(saved: dict) -> None:
    """Saved before non-finite steps were counted: none had been skipped."""
    if isinstance(saved.get("trainer"), dict):  # without one, the check of every field reports it
        saved["trainer"] = {"skipped_steps": 0, "consecutive_skips": 0, **saved["trainer"]}


def no_loss_scale_recorded(saved: dict) -> None:
    """Saved before fp16's dynamic loss scale was kept: an fp16 run starts again from its initial scale."""
    saved.setdefault("loss_scale", None)


def no_logging_runs_recorded(saved: dict) -> None:
    """Saved before W&B / MLflow: `checkpoint.dir/logging_runs.json` (or a new run) names the runs."""
    saved.setdefault("logging_runs", {})


def no_vocabulary_recorded(saved: dict) -> None:
    """Saved before the vocabulary's folder and sha256 were kept: the checks fall back to the shards' manifests."""
    saved.setdefault("vocab_dir", None)
    saved.setdefault("vocab_sha256", None)


def no_model_config_recorded(saved: dict) -> None:
    """Saved by the first trainer: a resume rebuilds the model from the config; an export cannot."""
    saved.setdefault("model_config", None)


# UPGRADES[v]: the steps that turn version v into version v + 1, in order.
UPGRADES = {
    0: (skip_counters_start_at_zero, no_loss_scale_recorded, no_logging_runs_recorded, no_vocabulary_recorded,
        no_model_config_recorded),
}
assert sorted(UPGRADES) == list(range(SCHEMA_VERSION)), "every version below SCHEMA_VERSION needs its upgrade"

FIELD_TYPES = {"trainer": dict, "config": dict, "model_config": (dict, type(None)), "vocab_dir": (str, type(None)),
               "vocab_sha256": (str, type(None)), "shards": list, "world_size": int,
               "loss_scale": (dict, type(None)), "logging_runs": dict}
assert set(FIELD_TYPES) == {field.name for field in dataclasses.fields(ClientState)}


def read_client_state(saved: dict, where: str) -> ClientState:
    """The client state of a checkpoint file's dict (`where` names the file), upgraded to this code's version.
    Keys that are not the client state's (DeepSpeed's own) are ignored."""
    version = saved.get(SCHEMA_KEY, 0)
    if not isinstance(version, int) or version < 0:
        raise CheckpointSchemaError(f"{where}: {SCHEMA_KEY} {version!r} is not a version number; the file was not "
                                    "written by this trainer: remove this checkpoint or get it again")
    if version > SCHEMA_VERSION:
        raise CheckpointSchemaError(f"{where}: checkpoint schema {version}, this code reads up to {SCHEMA_VERSION}; it "
                                    "was saved by a newer version of the trainer: resume or export it with that one")
    fields = {key: saved[key] for key in (*FIELD_TYPES, SCHEMA_KEY) if key in saved}
    for from_version in range(version, SCHEMA_VERSION):
        for step in UPGRADES[from_version]:
            step(fields)
    fields.pop(SCHEMA_KEY, None)
    missing = sorted(set(FIELD_TYPES) - set(fields))
    if missing:
        raise CheckpointSchemaError(f"{where}: the client state of schema {version} lacks {missing}; the file is "
                                    "damaged or was not written by this trainer: remove this checkpoint")
    for key, types in FIELD_TYPES.items():
        if not isinstance(fields[key], types):
            raise CheckpointSchemaError(f"{where}: client state field {key!r} is a {type(fields[key]).__name__}; "
                                        "the file is damaged: remove this checkpoint (the previous one is then used)")
    return ClientState(**fields)
