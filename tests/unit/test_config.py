"""Run config: file + overrides, validation with named keys, derived values."""

import copy
import json
import os

import pytest

from pretrain.config import (
    RunConfigError,
    _dotted,
    deepspeed_config,
    gradient_accumulation,
    load_config,
    resume_changes,
)
from tests.conftest import ROOT

CONFIG = """
model = "squeezebert-tiny"
seed = 7

[[phases]]
name = "phase1"
shards = "data/shards/seq128"
steps = 100
global_batch = 64
micro_batch = 8

[[phases]]
name = "phase2"
shards = "data/shards/seq512"
steps = 10
global_batch = 64
micro_batch = 4
max_predictions = 80
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(CONFIG)
    return str(path)


def test_file_and_overrides(config_file):
    config = load_config(config_file, ["phases.1.steps=20", "optimizer.weight_decay=0.02", "precision=fp32"])
    assert config.seed == 7 and config.phases[1].steps == 20 and config.optimizer.weight_decay == 0.02
    assert config.precision == "fp32" and config.phases[0].warmup_steps == 28  # 28% of 100


def test_derived_deepspeed_config(config_file):
    config = load_config(config_file)
    derived = deepspeed_config(config.phases[0], world_size=2, optimizer=config.optimizer)
    assert derived["gradient_accumulation_steps"] == 4 and derived["train_batch_size"] == 64
    assert derived["zero_optimization"]["stage"] == 0
    # DeepSpeed stays fp32 and does not clip: autocast does the mixed precision, LAMB the global clipping
    assert not derived["bf16"]["enabled"] and not derived["fp16"]["enabled"] and derived["gradient_clipping"] == 0
    assert derived["timers"]["throughput"] == {"enabled": False, "synchronized": False}  # no device sync per step
    assert gradient_accumulation(config.phases[1], 4) == 4


@pytest.mark.parametrize("override, fragment", [
    ("optimizer.zero_stage=2", "optimizer.zero_stage = 2: LAMB needs ZeRO stage 0"),
    ("phases.0.steps=0", "phases.0.steps = 0"),
    ("phases.0.warmup_fraction=1.5", "phases.0.warmup_fraction"),
    ("phases.0.colour=1", "unknown keys ['colour']"),
    ("precision=fp8", "precision = 'fp8'"),
    ("optimizer.implementation=apex", "optimizer.implementation = 'apex'"),
    ("optimizer.max_consecutive_skips=0", "optimizer.max_consecutive_skips = 0"),
    ("masking.replace_with_random=-0.1", "masking.replace_with_mask and replace_with_random: each >= 0"),
    ("phases.5.steps=1", "no element 5"),
    ("nonsense", "expected key=value"),
])
def test_bad_configs_name_the_key(config_file, override, fragment):
    with pytest.raises(RunConfigError, match=None) as error:
        load_config(config_file, [override])
    assert fragment in str(error.value)


def test_batch_not_divisible_is_an_error(config_file):
    config = load_config(config_file)
    with pytest.raises(RunConfigError, match="global_batch 64 is not a multiple of micro_batch 8 x 3 ranks"):
        gradient_accumulation(config.phases[0], 3)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(RunConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.toml"))
    (tmp_path / "bad.toml").write_text("model = [")
    with pytest.raises(RunConfigError, match="not valid TOML"):
        load_config(str(tmp_path / "bad.toml"))


@pytest.mark.parametrize("override, fragment", [
    # the three examples
    ("phases.0.steps=1.5", "phases.0.steps = 1.5: expected an integer"),
    ('seed="x"', "seed = 'x': expected an integer"),
    ("phases.0.steps=abc", "phases.0.steps = 'abc': expected an integer"),
    # one per type
    ("seed=true", "seed = True: expected an integer"),  # a bool is not an integer
    ('phases.0.peak_lr="fast"', "phases.0.peak_lr = 'fast': expected a number"),
    ("model=3", "model = 3: expected a string"),
    ("phases.1.reset_optimizer=1", "phases.1.reset_optimizer = 1: expected true or false"),
    ("model_overrides=5", "model_overrides = 5: expected a table"),
    ("optimizer=5", "optimizer: expected a table"),
    ("phases=5", "phases: expected a list of [[phases]] tables"),
    ("logging.eval_samples=[1]", "logging.eval_samples = [1]: expected an integer"),
    ("seed.x=1", "--set seed.x: seed is not a table"),
    ('logging.backends="wandb"', "logging.backends = 'wandb': expected a list of strings"),
    ("logging.backends=[1]", "logging.backends.0 = 1: expected a string"),
])
def test_values_of_the_wrong_type_name_the_key(config_file, override, fragment):
    with pytest.raises(RunConfigError) as error:
        load_config(config_file, [override])
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_wrong_types_in_the_file_name_the_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.replace("seed = 7", 'seed = "x"'))
    with pytest.raises(RunConfigError, match="seed = 'x': expected an integer"):
        load_config(str(path))


@pytest.mark.parametrize("backends, fragment", [
    ('["tensorboard", "wandbb"]', "logging.backends = ['tensorboard', 'wandbb']: unknown ['wandbb']; choose from "
                                  "['tensorboard', 'wandb', 'mlflow']"),
    ('["mlflow", "mlflow"]', "a backend is named twice"),
])
def test_logging_backends_are_checked_by_name(config_file, backends, fragment):
    assert load_config(config_file).logging.backends == ["tensorboard"]  # the default needs nothing extra
    chosen = load_config(config_file, ['logging.backends=["tensorboard", "wandb", "mlflow"]'])
    assert chosen.logging.backends == ["tensorboard", "wandb", "mlflow"]
    with pytest.raises(RunConfigError) as error:
        load_config(config_file, [f"logging.backends={backends}"])
    assert fragment in str(error.value) and "\n" not in str(error.value)


def float_keys():
    """Every float setting of the run config, as `--set` names it."""
    import dataclasses
    import typing

    from pretrain.config import NESTED, PhaseConfig, RunConfig

    tables = [("", RunConfig), ("phases.0.", PhaseConfig), *((f"{name}.", cls) for name, cls in NESTED.items())]
    return [prefix + f.name for prefix, cls in tables for f in dataclasses.fields(cls)
            if typing.get_type_hints(cls)[f.name] is float]


@pytest.mark.parametrize("override, fragment", [
    # the cases: each passed its range check (NaN fails every comparison) or named another key
    ("masking.replace_with_mask=nan", "masking.replace_with_mask = nan"),  # trained with no [MASK] at all
    ("optimizer.eps=nan", "optimizer.eps = nan"),
    ("optimizer.weight_decay=nan", "optimizer.weight_decay = nan"),
    ("optimizer.gradient_clipping=nan", "optimizer.gradient_clipping = nan"),  # clipping was silently off
    ("checkpoint.every_minutes=nan", "checkpoint.every_minutes = nan"),
    ("phases.0.peak_lr=inf", "phases.0.peak_lr = inf"),  # trained with lr nan
    ("phases.0.peak_lr=nan", "phases.0.peak_lr = nan"),  # was refused as end_lr
    ("distributed_timeout_minutes=inf", "distributed_timeout_minutes = inf"),  # a traceback
    ("model_overrides.hidden_dropout_prob=nan", "model_overrides.hidden_dropout_prob = nan"),  # the model's own
    *((f"{key}={value}", f"{key} = {value}") for key in float_keys() for value in ("nan", "inf", "-inf")),
])
def test_every_float_setting_is_finite(config_file, override, fragment):
    with pytest.raises(RunConfigError) as error:
        load_config(config_file, [override])
    message = str(error.value)
    assert message.startswith(fragment + ": must be a finite number") and "\n" not in message, message


def test_a_non_finite_number_in_the_file_names_its_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.replace("max_predictions = 80", "max_predictions = 80\npeak_lr = nan"))
    with pytest.raises(RunConfigError, match=r"^phases\.1\.peak_lr = nan: must be a finite number"):
        load_config(str(path))


def test_integers_are_taken_for_numbers(config_file):
    config = load_config(config_file, ["phases.0.peak_lr=1", "optimizer.weight_decay=0"])
    assert config.phases[0].peak_lr == 1.0 and isinstance(config.phases[0].peak_lr, float)
    assert isinstance(config.optimizer.weight_decay, float)


def test_the_shipped_configs_load_and_state_the_papers_recipe():
    paper = load_config(os.path.join(ROOT, "configs", "squeezebert-paper.toml"))
    assert [(p.steps, p.global_batch, p.peak_lr, p.warmup_fraction) for p in paper.phases] == [
        (56000, 8192, 2.5e-3, 0.28), (6000, 8192, 2.5e-3, 0.28)]
    assert paper.objective == "mlm+sop" and paper.masking.probability == 0.15 and not paper.masking.whole_word
    # evaluated on the held-out documents (the paper held out 3%), not on the training shards
    assert [p.eval_shards for p in paper.phases] == [p.shards + "-heldout" for p in paper.phases]
    load_config(os.path.join(ROOT, "configs", "tiny.toml"))


# The resume table, decided key by key: True = a resume may change it (with a line naming the change), False = the
# run itself (refused, naming the key and both values). A new setting fails `test_the_resume_table_covers_every_
# setting` until it is decided here and in `pretrain.config.MAY_CHANGE_ON_RESUME`.
RESUME_TABLE = {
    "model": ("squeezebert-base", False), "init_from": ("elsewhere", False), "seed": (8, False),
    "objective": ("mlm", False), "precision": ("bf16", True), "determinism": ("strict", True),
    "max_steps_this_run": (5, True), "distributed_timeout_minutes": (30.0, True),
    "phases.0.name": ("first", False), "phases.0.shards": ("moved/seq128", True),
    "phases.0.eval_shards": ("data/shards/seq128-heldout", True), "phases.0.steps": (200, False),
    "phases.0.global_batch": (128, False), "phases.0.micro_batch": (16, True),
    "phases.0.max_predictions": (19, False), "phases.0.peak_lr": (5e-3, False),
    "phases.0.warmup_fraction": (0.1, False), "phases.0.end_lr": (1e-5, False),
    "phases.0.reset_optimizer": (True, False),
    "optimizer.implementation": ("torch-optimizer", False), "optimizer.weight_decay": (0.1, False),
    "optimizer.beta1": (0.8, False), "optimizer.beta2": (0.99, False), "optimizer.eps": (1e-8, False),
    "optimizer.gradient_clipping": (2.0, False), "optimizer.max_consecutive_skips": (3, True),
    "optimizer.initial_loss_scale": (1024.0, True), "optimizer.loss_scale_growth_interval": (100, True),
    "optimizer.zero_stage": (1, False),
    "masking.probability": (0.2, False), "masking.replace_with_mask": (0.7, False),
    "masking.replace_with_random": (0.2, False), "masking.whole_word": (True, False),
    "checkpoint.dir": ("/elsewhere/checkpoints", True), "checkpoint.every_steps": (50, True),
    "checkpoint.every_minutes": (45.0, True), "checkpoint.keep": (5, True),
    "logging.dir": ("other-runs", True), "logging.every_steps": (20, True), "logging.eval_every_steps": (7, True),
    "logging.eval_samples": (32, True), "logging.peak_flops_per_device": (1e12, True),
    "logging.backends": (["tensorboard", "mlflow"], True), "logging.project": ("p", True),
    "logging.run_name": ("r", True), "logging.mlflow_tracking_uri": ("https://user:token@host", True),
    "model_overrides.hidden_dropout_prob": (0.0, False), "model_overrides.gradient_checkpointing": (True, True),
    "model_overrides.compile": (True, True),
}


def set_dotted(values, key, value):
    *path, last = key.split(".")
    for part in path:
        values = values[int(part)] if part.isdigit() else values.setdefault(part, {})
    values[last] = value


def test_the_resume_table_covers_every_setting(config_file):
    settings = {key for key in _dotted(load_config(config_file).to_dict()) if not key.startswith("phases.1.")}
    decided = {key for key in RESUME_TABLE if not key.startswith("model_overrides.")}
    assert settings - {"model_overrides"} == decided


@pytest.mark.parametrize("key", sorted(RESUME_TABLE))
def test_a_resume_allows_or_refuses_each_change_as_the_table_says(config_file, key):
    saved = load_config(config_file).to_dict()
    current = copy.deepcopy(saved)
    value, may_change = RESUME_TABLE[key]
    set_dotted(current, key, value)
    allowed, refused = resume_changes(saved, current)
    assert len(allowed if may_change else refused) == 1 and not (refused if may_change else allowed)
    line = (allowed + refused)[0]
    assert line.startswith(key)
    if "uri" in key:
        assert "token" not in line  # the credentials never reach a message
    elif not key.startswith("model_overrides."):
        old = _dotted(saved)[key]
        assert line == f"{key} {json.dumps(old)} -> {json.dumps(value)}"


def test_a_resume_refuses_another_number_of_phases_and_takes_settings_newer_than_the_checkpoint(config_file):
    saved = load_config(config_file).to_dict()
    assert resume_changes(saved, {**saved, "phases": saved["phases"][:1]}) == ([], ["phases: 2 -> 1 phases"])
    older = copy.deepcopy(saved)
    del older["determinism"], older["phases"][0]["end_lr"]  # settings a checkpoint of an earlier version lacks
    assert resume_changes(older, saved) == ([], [])
    assert resume_changes(older, {**saved, "determinism": "strict"}) == (['determinism "default" -> "strict"'], [])
