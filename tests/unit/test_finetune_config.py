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


def test_a_misspelt_task_settings_table_in_a_chain_config_is_one_line(tmp_path):
    """`[task_settings.rtee]` (or a task the chain does not run) was ignored: its settings silently unused."""
    from finetune.__main__ import build_parser
    from finetune.chain import load_chain_config
    from finetune.config import FinetuneConfigError

    base = 'model = "m"\nout = "o"\nmnli_teacher = "t"\n[teachers]\nrte = "teachers/rte"\n'
    for table, problem in (("rtee", "unknown task"), ("cola", "not a task of this chain")):
        config = tmp_path / f"{table}.toml"
        config.write_text(base + f"[task_settings.{table}]\nepochs = 2\n")
        with pytest.raises(FinetuneConfigError) as raised:
            load_chain_config(build_parser().parse_args(["chain", "--config", str(config)]))
        assert str(raised.value) == (f"--config {config}: [task_settings.{table}]: {problem}; the chain's tasks are "
                                     "['mnli', 'rte']")
    config.write_text(base + "[task_settings.RTE]\nepochs = 2\n")  # the GLUE spelling of a chain task: accepted
    chain = load_chain_config(build_parser().parse_args(["chain", "--config", str(config)]))
    assert chain.task_settings == {"rte": {"epochs": 2}}


def test_help_says_that_task_presets_set_the_epochs_beneath_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["glue", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Each task's preset sets its own (CoLA, MRPC, STS-B, RTE: 10; the others: 3;" in text
    assert "--no-train" in text and "--max-train-samples" in text and "--overwrite-output" in text
