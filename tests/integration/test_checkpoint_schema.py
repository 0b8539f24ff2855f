"""A checkpoint of the oldest layout the trainer accepts (tests/assets/checkpoint_schema0, schema 0) resumes through
the CLI and is saved again in the current schema; its export says in one line what it lacks."""

import json
import os
import shutil
import subprocess
import sys

import torch

from pretrain.checkpoint_schema import SCHEMA_KEY, SCHEMA_VERSION, read_client_state
from tests.conftest import ASSETS

FIXTURE = os.path.join(ASSETS, "checkpoint_schema0")
SHARDS = os.path.join(FIXTURE, "shards", "seq128")


def model_states(checkpoints, step):
    path = os.path.join(checkpoints, f"step-{step:08d}", "state", "mp_rank_00_model_states.pt")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_schema_0_checkpoint_resumes_and_is_saved_again_in_the_current_schema(tmp_path):
    old = model_states(os.path.join(FIXTURE, "checkpoint_dir"), 3)
    assert SCHEMA_KEY not in old and set(old["trainer"]) == {"phase_index", "step_in_phase", "global_step",
                                                             "consumed_samples"}, "the fixture is not schema 0"
    shutil.copytree(os.path.join(FIXTURE, "checkpoint_dir"), tmp_path / "checkpoints")
    command = [sys.executable, "-m", "pretrain", "train", "--config", os.path.join(FIXTURE, "run.toml"),
               "--set", f'phases.0.shards="{SHARDS}"']
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from checkpoints/step-00000003 at global step 3 (phase 0, step 3)" in result.stderr
    assert "phase1 step 4/6" in result.stderr and "training complete" in result.stderr
    saved = model_states(str(tmp_path / "checkpoints"), 6)
    assert saved[SCHEMA_KEY] == SCHEMA_VERSION
    client = read_client_state(saved, "step-6")
    assert client.trainer == {"phase_index": 0, "step_in_phase": 6, "global_step": 6, "consumed_samples": 48,
                              "skipped_steps": 0, "consecutive_skips": 0}
    with open(os.path.join(SHARDS, "manifest.json")) as manifest:
        assert client.vocab_sha256 == json.load(manifest)["tokenizer"]["sha256"]
    assert client.model_config["hidden_size"] == 32 and client.shards == old["shards"]
    assert not torch.equal(saved["module"]["transformer.embeddings.word_embeddings.weight"],
                           old["module"]["transformer.embeddings.word_embeddings.weight"])  # it trained on


def test_exporting_a_checkpoint_without_its_model_config_is_one_line(tmp_path):
    """The first trainer did not record the model's config: an export of its checkpoint cannot rebuild the model."""
    result = subprocess.run([sys.executable, "-m", "pretrain", "export", "--checkpoint",
                             os.path.join(FIXTURE, "checkpoint_dir"), "--out", str(tmp_path / "export")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pretrain: error: --checkpoint ") and "did not record the model's config" in last, last
    assert not (tmp_path / "export").exists()
