"""Run config: file + overrides, validation with named keys, derived values."""

import pytest

from pretrain.config import RunConfigError, deepspeed_config, gradient_accumulation, load_config

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
    derived = deepspeed_config(config.phases[0], world_size=2, optimizer=config.optimizer, bf16=False)
    assert derived["gradient_accumulation_steps"] == 4 and derived["train_batch_size"] == 64
    assert derived["zero_optimization"]["stage"] == 0
    assert gradient_accumulation(config.phases[1], 4) == 4


@pytest.mark.parametrize("override, fragment", [
    ("optimizer.zero_stage=2", "optimizer.zero_stage = 2: LAMB needs ZeRO stage 0"),
    ("phases.0.steps=0", "phases.0.steps = 0"),
    ("phases.0.warmup_fraction=1.5", "phases.0.warmup_fraction"),
    ("phases.0.colour=1", "unknown keys ['colour']"),
    ("precision=fp16", "precision = 'fp16'"),
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
