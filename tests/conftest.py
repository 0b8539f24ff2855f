"""Shared fixtures: the real Wikipedia corpus of ../shared/corpora and a vocabulary trained on part of it."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "..", "shared", "corpora", "enwiki_wikiextractor")
ASSETS = os.path.join(ROOT, "tests", "assets")


def run_cli(*args, check=True, env=None, **kwargs):
    """Runs `python -m data_prep ...` as a real process; returns the CompletedProcess."""
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"data_prep {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def corpus_dir():
    if not os.path.isdir(CORPUS):
        pytest.skip(f"{CORPUS} is missing")
    return CORPUS


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, corpus_dir):
    """Two real WikiExtractor files (~2 MB, 91 articles)."""
    folder = tmp_path_factory.mktemp("small_corpus")
    for name in ("wiki_00", "wiki_01"):
        with open(os.path.join(corpus_dir, name), "rb") as source, open(folder / name, "wb") as target:
            target.write(source.read())
    return str(folder)


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("vocab")
    run_cli("vocab", "--source", small_corpus, "--out", out, "--vocab-size", "8000")
    return str(out)


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory, small_corpus, vocab_dir):
    """Shard sets (seq128, seq512) of the small corpus, made by the real CLI."""
    out = tmp_path_factory.mktemp("shards")
    run_cli("shards", "--source", small_corpus, "--vocab", vocab_dir, "--out", out, "--num-proc", "1",
            "--shard-text-mb", "0.5", "--quiet")
    return str(out)
