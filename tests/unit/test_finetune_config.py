"""Finetuning config: flags and TOML keys of the wrong kind are one line naming the flag or key, before any
file is written."""

import dataclasses
import typing

import pytest

from finetune.__main__ import main
from finetune.config import FinetuneConfig, flag_name

FLOAT_KEYS = [f.name for f in dataclasses.fields(FinetuneConfig) if typing.get_type_hints(FinetuneConfig)[f.name]
              is float]


def glue(tmp_path, *extra):
    # The model need not exist: the config is refused before anything reads it.
    return main(["glue", "--task", "rte", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"),
                 *extra])


@pytest.mark.parametrize("key, value", [
    ("learning_rate", "nan"), ("epochs", "nan"),  # the issue's: tracebacks after run_config.json was written
    *((key, value) for key in FLOAT_KEYS for value in ("nan", "inf", "-inf")),
])
def test_a_non_finite_flag_is_one_line_naming_it_and_nothing_is_written(tmp_path, capsys, key, value):
    assert glue(tmp_path, f"{flag_name(key)}={value}") == 2  # `=`: argparse reads a lone -inf as a flag
    err = capsys.readouterr().err
    assert err == f"finetune: error: {flag_name(key)} {value}: must be a finite number (nan and inf are not " \
                  "settings)\n"
    assert not (tmp_path / "out").exists()  # no run_config.json: the corrected command is not "other settings"


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_a_non_finite_number_in_the_toml_names_the_file_and_key(tmp_path, capsys, key):
    config = tmp_path / "glue.toml"
    config.write_text(f"{key} = nan\n")
    assert glue(tmp_path, "--config", str(config)) == 2
    assert f"finetune: error: --config {config}: {key} = nan: must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
