"""`formats.errors`: flags argparse rejects end like every other bad input, in both command lines."""

import pytest

from data_prep.__main__ import build_parser as data_prep_parser
from pretrain.__main__ import build_parser as pretrain_parser


def parse_error(parser, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage:" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_flag_errors_are_one_line_naming_the_flag_and_where_help_is(capsys):
    assert parse_error(pretrain_parser(), ["train"], capsys) == (
        "pretrain: error: the following arguments are required: --config (see python -m pretrain train --help)")
    assert parse_error(data_prep_parser(), ["shards", "--num-proc", "abc"], capsys) == (
        "data_prep: error: argument --num-proc: invalid int value: 'abc' (see python -m data_prep shards --help)")
    line = parse_error(pretrain_parser(), ["--local_rank", "x", "train", "--config", "c.toml"], capsys)
    assert line.startswith("pretrain: error: argument --local_rank/--local-rank: invalid int value: 'x'")
    assert parse_error(data_prep_parser(), [], capsys).startswith("data_prep: error: the following arguments")


def test_help_is_still_the_full_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain_parser().parse_args(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m pretrain train") and "--config CONFIG" in out and "--set" in out
