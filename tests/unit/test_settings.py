"""formats.settings: what pretrain.config and finetune.config both read settings with, raising each caller's
own error class."""

import pytest

from formats.errors import UserError
from formats.settings import parse_value, read_toml, split_assignment, typed


class StageError(UserError):
    """A caller's own error class: the shared reader raises it, not one of its own."""


def test_a_set_value_is_read_as_toml_reads_it_and_bare_text_stays_a_string():
    assert parse_value("3") == 3 and parse_value("2.5e-3") == 2.5e-3 and parse_value("true") is True
    assert parse_value('"quoted"') == "quoted" and parse_value("[1, 2]") == [1, 2]
    assert parse_value("bare text") == "bare text"


def test_an_assignment_without_equals_is_one_line_of_the_callers_class_with_its_example():
    assert split_assignment(" a.b = 1", "a=1", StageError) == (" a.b ", " 1")
    with pytest.raises(StageError, match=r"^--set 'nonsense': expected key=value, e.g. seed=1$"):
        split_assignment("nonsense", "seed=1", StageError)


def test_a_missing_or_broken_file_is_one_line_of_the_callers_class_naming_it(tmp_path):
    with pytest.raises(StageError, match=r"^--config .*missing.toml: no such file$"):
        read_toml(str(tmp_path / "missing.toml"), StageError)
    (tmp_path / "bad.toml").write_text("model = [")
    with pytest.raises(StageError, match=r"^--config .*bad.toml: not valid TOML \(.*\)$"):
        read_toml(str(tmp_path / "bad.toml"), StageError)
    (tmp_path / "good.toml").write_text("[masking]\nprobability = 0.3\n")
    assert read_toml(str(tmp_path / "good.toml"), StageError) == {"masking": {"probability": 0.3}}


def test_typed_converts_integers_to_floats_and_refuses_booleans_as_integers():
    assert typed(1, float, "lr", StageError) == 1.0 and isinstance(typed(1, float, "lr", StageError), float)
    with pytest.raises(StageError, match=r"^seed = True: expected an integer$"):
        typed(True, int, "seed", StageError)


def test_a_list_is_checked_item_by_item_naming_the_item():
    assert typed(["a", "b"], list[str], "backends", StageError) == ["a", "b"]
    with pytest.raises(StageError, match=r"^backends\.1 = 2: expected a string$"):
        typed(["a", 2], list[str], "backends", StageError)
    with pytest.raises(StageError, match=r"^backends = 'a': expected a list of strings$"):
        typed("a", list[str], "backends", StageError)


def test_a_non_finite_number_names_the_flag_it_came_from_or_else_the_key_inside_tables():
    with pytest.raises(StageError, match=r"^--learning-rate nan: must be a finite number"):
        typed(float("nan"), float, "learning_rate", StageError, flag="--learning-rate")
    with pytest.raises(StageError, match=r"^--config x: learning_rate = inf: must be a finite number"):
        typed(float("inf"), float, "--config x: learning_rate", StageError)
    with pytest.raises(StageError, match=r"^model_overrides\.dropout = nan: must be a finite number"):
        typed({"dropout": float("nan")}, dict, "model_overrides", StageError)
