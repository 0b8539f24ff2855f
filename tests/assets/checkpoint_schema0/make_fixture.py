"""Makes this folder's fixture: a checkpoint in the oldest layout the trainer still resumes (schema 0).

Run from the repository root: `python tests/assets/checkpoint_schema0/make_fixture.py`. It trains `run.toml` for 3
steps with the current code, then writes its checkpoint back in the first trainer's layout (see README.md).
"""

import os
import shutil
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "enwiki_sample", "wiki_00")
ARTICLES = 2  # of wiki_00: enough examples for 6 steps of 8, few enough to keep the shards small
# the first trainer's client state: the four step counters, the resolved config, the shards' fingerprints, the world
OLDEST_CLIENT_STATE = ("trainer", "config", "shards", "world_size")
OLDEST_COUNTERS = ("phase_index", "step_in_phase", "global_step", "consumed_samples")
CLIENT_STATE_NOW = ("schema_version", "model_config", "vocab_dir", "vocab_sha256", "loss_scale", "logging_runs")


def run(*command, cwd=None):
    subprocess.run([sys.executable, "-m", *command], cwd=cwd, check=True)


def oldest_layout(step_folder: str) -> None:
    """The checkpoint as the first trainer wrote it: its client state only, no files record, no generator files."""
    states_path = os.path.join(step_folder, "state", "mp_rank_00_model_states.pt")
    states = torch.load(states_path, map_location="cpu", weights_only=True)
    for key in CLIENT_STATE_NOW:
        del states[key]
    states["trainer"] = {key: states["trainer"][key] for key in OLDEST_COUNTERS}
    assert all(key in states for key in OLDEST_CLIENT_STATE)
    torch.save(states, states_path)
    os.remove(os.path.join(step_folder, "files.json"))
    for name in os.listdir(os.path.join(step_folder, "state")):
        if name.startswith("rng-rank"):
            os.remove(os.path.join(step_folder, "state", name))


def main() -> None:
    for name in ("shards", "checkpoint_dir"):  # not data/ or checkpoints/: .gitignore leaves those out
        shutil.rmtree(os.path.join(HERE, name), ignore_errors=True)
    with tempfile.TemporaryDirectory() as work:
        corpus = os.path.join(work, "corpus")
        os.makedirs(corpus)
        with open(CORPUS, encoding="utf-8") as source, open(os.path.join(corpus, "wiki_00"), "w") as target:
            articles = source.read().split("</doc>\n")[:ARTICLES]
            target.write("".join(article + "</doc>\n" for article in articles))
        run("data_prep", "vocab", "--source", corpus, "--out", os.path.join(work, "vocab"), "--vocab-size", "1000")
        data = os.path.join(HERE, "shards")
        run("data_prep", "shards", "--source", corpus, "--vocab", os.path.join(work, "vocab"), "--out", data,
            "--seq-len", "128", "--num-proc", "1", "--quiet")
        os.remove(os.path.join(data, ".lock"))  # the folder's lock, which names this machine's process
        training = os.path.join(work, "run")
        os.makedirs(training)
        command = ["pretrain", "train", "--config", os.path.join(HERE, "run.toml"),
                   "--set", f'phases.0.shards="{os.path.join(data, "seq128")}"', "--set", "max_steps_this_run=3"]
        result = subprocess.run([sys.executable, "-m", *command], cwd=training)
        assert result.returncode == 75, "the run should stop after 3 steps with its checkpoint saved"
        checkpoints = os.path.join(HERE, "checkpoint_dir")
        os.makedirs(checkpoints)
        shutil.copytree(os.path.join(training, "checkpoints", "step-00000003"),
                        os.path.join(checkpoints, "step-00000003"))
        shutil.copy(os.path.join(training, "checkpoints", "latest"), checkpoints)
        oldest_layout(os.path.join(checkpoints, "step-00000003"))


if __name__ == "__main__":
    main()
