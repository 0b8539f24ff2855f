"""Reading settings, for every stage's config: a TOML file, a `--set key=value` value, a value checked against
its field's type. Each config module keeps its own keys, defaults and checks, and passes its own error class
(`error`), so a message is that stage's one line naming the file, key or flag. No torch here: a config is
validated before anything heavy is imported."""

from __future__ import annotations

import math
import sys
import typing

from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}


def read_toml(path: str, error: type[UserError]) -> dict:
    """The tables of the TOML file `path` (a `--config`), or a one-line `error`: missing, or not TOML."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise error(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as decode_error:
        raise error(f"--config {path}: not valid TOML ({decode_error})") from None


def split_assignment(assignment: str, example: str, error: type[UserError]) -> tuple[str, str]:
    """`key=value` as (key, value text), both as written; `example` shows the form in the error."""
    if "=" not in assignment:
        raise error(f"--set {assignment!r}: expected key=value, e.g. {example}")
    key, _, text = assignment.partition("=")
    return key, text


def parse_value(text: str):
    """A `--set` value as TOML would read it (numbers, booleans, quoted strings, lists); bare text is a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def typed(value, expected: type, key: str, error: type[UserError], flag: str = ""):
    """`value` as a field of type `expected` (int, float, str, bool, dict, or a list of one of them), else a
    one-line `error` naming `key` (`key = value`), or `flag` (`--flag value`) where the value came from that
    command-line flag. Checked by hand rather than with pydantic: five scalar types, lists of them and TOML's
    own parsing leave nothing for a schema library to add."""
    if typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        if isinstance(value, list):
            return [typed(item, item_type, f"{key}.{index}", error) for index, item in enumerate(value)]
        raise error(f"{key} = {value!r}: expected a list of {TYPE_NAMES[item_type].split(' ', 1)[1]}s")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # TOML writes 1 for 1.0
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        refuse_non_finite(value, key, error, flag)
        return value
    raise error(f"{key} = {value!r}: expected {TYPE_NAMES[expected]}")


def refuse_non_finite(value, key: str, error: type[UserError], flag: str = "") -> None:
    """TOML and argparse's float() read `nan` and `inf` as floats, and every range check of a config is a
    comparison, which NaN fails both ways: `replace_with_mask = nan` passed and trained with no [MASK] at all.
    No setting gives inf a meaning (none is "unlimited"; 0 switches the optional ones off), so neither is a
    setting. Tables (pretraining's `model_overrides`) are searched too: the model reads its fields unchecked."""
    if isinstance(value, float) and not math.isfinite(value):
        setting = f"{flag} {value}" if flag else f"{key} = {value}"
        raise error(f"{setting}: must be a finite number (nan and inf are not settings)")
    if isinstance(value, dict):
        for name, item in value.items():
            refuse_non_finite(item, f"{key}.{name}", error)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            refuse_non_finite(item, f"{key}.{index}", error)
