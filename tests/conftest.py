"""Shared fixtures: real Wikipedia text (tests/assets/enwiki_sample) and a vocabulary trained on it."""

import glob
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "tests", "assets")
SAMPLE = os.path.join(ASSETS, "enwiki_sample")  # 21 real articles, 580 kB; see its SOURCES.md


def run_cli(*args, check=True, env=None, **kwargs):
    """Runs `python -m data_prep ...` as a real process; returns the CompletedProcess."""
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"data_prep {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: without one they are skipped, and `-rs` says why."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False here")
        for item in gpu_tests:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_corpus():
    """Two real WikiExtractor files (21 articles, 580 kB), committed with the tests."""
    return SAMPLE


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("vocab")
    run_cli("vocab", "--source", small_corpus, "--out", out, "--vocab-size", "6000")
    return str(out)


def make_shards(out, corpus, vocab, *extra) -> str:
    """Shard sets of `corpus` made into `out` by the real CLI (one process, small shards)."""
    run_cli("shards", "--source", corpus, "--vocab", vocab, "--out", out, "--num-proc", "1", "--shard-text-mb", "0.2",
            "--quiet", *extra)
    return str(out)


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory, small_corpus, vocab_dir):
    """Shard sets (seq128, seq512) of the small corpus, made by the real CLI."""
    return make_shards(tmp_path_factory.mktemp("shards"), small_corpus, vocab_dir)


GOLDEN_VOCAB = os.path.join(ASSETS, "golden", "vocab.txt")  # fixed: `data_prep vocab` differs run to run


@pytest.fixture(scope="session")
def golden_shard_root(tmp_path_factory, small_corpus):
    """Shard sets of the small corpus tokenized with the committed vocabulary tests/assets/golden/vocab.txt
    (the first 2000 pieces of one trained on it), so what the golden tests pin is the same in every session:
    the WordPiece trainer (Rust hash maps) breaks ties differently from one run to the next."""
    out = tmp_path_factory.mktemp("golden_shards")
    run_cli("vocab", "--import-vocab", GOLDEN_VOCAB, "--out", out / "vocab")
    return make_shards(out, small_corpus, out / "vocab")


@pytest.fixture(scope="session")
def heldout_shard_root(tmp_path_factory, small_corpus, vocab_dir):
    """The small corpus with 20% of its documents held out: seq128/, seq512/ and their seqN-heldout/ twins."""
    return make_shards(tmp_path_factory.mktemp("heldout_shards"), small_corpus, vocab_dir, "--holdout-fraction", "0.2")


@pytest.fixture(scope="session", autouse=True)
def remove_deepspeed_shared_memory():
    """DeepSpeed's CPU all-reduce (ops/csrc/cpu/comm/shm.cpp) leaves a 66 MB buffer per rank in /dev/shm and
    never unlinks it; a suite of multi-rank runs would leave gigabytes of RAM behind. CPU test runs only: on
    GPUs the collectives are NCCL's."""
    started = time.time()
    yield
    for path in glob.glob("/dev/shm/deepspeed_allreduce_buffer_*"):
        try:
            if os.path.getmtime(path) >= started:
                os.remove(path)
        except OSError:
            pass
