"""Files from elsewhere run no code, and a resumed run is the run it claims to be.

A pickle whose loading would create a file is planted in every file the trainer reads from a checkpoint or a
model folder, under `export`, `init_from` and a resume. Each plant also rewrites the checkpoint's `files.json`,
as someone handing over a doctored checkpoint would, so the payload reaches the loader instead of being
caught as damage. A resume with a changed setting is refused or goes on as `pretrain.config`'s table says
(every key of the table is checked in tests/unit/test_config.py)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from pretrain.checkpoint import FILES_RECORD, MODEL_STATES_FILE, TAG, record_files, rng_file
from tests.integration.test_trainer import train_command


class Payload:
    """Unpickling it creates `marker`: what any pickle from elsewhere can do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def saved_run(shard_root, tmp_path_factory):
    """A run stopped after 3 of its 12 steps: its `checkpoints/` hold step 3."""
    workdir = tmp_path_factory.mktemp("saved_run")
    result = subprocess.run([*train_command(shard_root), "--set", "max_steps_this_run=3"], cwd=workdir,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 75, result.stderr[-3000:]
    return workdir


def plant(step_folder, name, marker):
    """Put the payload into one file of a `step-N/` folder, keeping the file's real content beside it."""
    path = os.path.join(step_folder, TAG, name)
    if name == MODEL_STATES_FILE:
        states = torch.load(path, map_location="cpu", weights_only=True)
        states["client_extra"] = Payload(str(marker))  # a working checkpoint with one more key
        torch.save(states, path)
    else:
        torch.save({"torch": torch.get_rng_state(), "extra": Payload(str(marker))}, path)
    os.remove(os.path.join(step_folder, FILES_RECORD))
    record_files(step_folder)


def one_line(result):
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[-1]


def export(checkpoint, out, cwd):
    return subprocess.run([sys.executable, "-m", "pretrain", "export", "--checkpoint", str(checkpoint),
                           "--out", str(out)], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", [MODEL_STATES_FILE, os.path.basename(rng_file("", 0))])
def test_a_payload_in_a_checkpoint_runs_nothing_on_resume(saved_run, shard_root, tmp_path, name):
    shutil.copytree(saved_run / "checkpoints", tmp_path / "checkpoints")
    marker = tmp_path / "payload-ran"
    plant(tmp_path / "checkpoints" / "step-00000003", name, marker)
    result = subprocess.run(train_command(shard_root), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_line(result)
    assert line.startswith(f"pretrain: error: checkpoints/step-00000003/{TAG}/{name}: ")
    assert ("refused: it holds os.makedirs" if name == MODEL_STATES_FILE else "not a readable generator state") in line
    assert not marker.exists()


def test_a_payload_in_a_checkpoint_runs_nothing_under_export_and_init_from(saved_run, shard_root, tmp_path):
    shutil.copytree(saved_run / "checkpoints", tmp_path / "checkpoints")
    marker = tmp_path / "payload-ran"
    plant(tmp_path / "checkpoints" / "step-00000003", MODEL_STATES_FILE, marker)
    exported = export("checkpoints", "export", tmp_path)
    assert exported.returncode == 2 and "refused: it holds os.makedirs" in one_line(exported)
    assert not (tmp_path / "export").exists()
    started = subprocess.run([*train_command(shard_root, 'init_from="checkpoints"', 'checkpoint.dir="second"')],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert started.returncode == 2 and "refused: it holds os.makedirs" in one_line(started), started.stderr[-3000:]
    assert not marker.exists()


def test_a_released_looking_folder_with_a_pickled_state_runs_nothing(saved_run, shard_root, tmp_path):
    """config.json, model.safetensors and a tokenizer, as released weights come, plus a `state/` folder:
    the project reads it as the checkpoint it claims to be, through the tensors-only loader."""
    exported = export(saved_run / "checkpoints", tmp_path / "released", tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    released = tmp_path / "released"
    os.makedirs(released / TAG)
    torch.save({"module": Payload(str(tmp_path / "payload-ran"))}, released / TAG / MODEL_STATES_FILE)
    for command in (lambda: export(released, tmp_path / "again", tmp_path),
                    lambda: subprocess.run(train_command(shard_root, f'init_from="{released}"'), cwd=tmp_path,
                                           capture_output=True, text=True, timeout=300)):
        result = command()
        assert result.returncode == 2 and "refused: it holds os.makedirs" in one_line(result), result.stderr[-3000:]
    assert not (tmp_path / "payload-ran").exists()


def test_a_resume_refuses_a_change_of_the_run_and_says_how_to_start_a_new_one(saved_run, shard_root, tmp_path):
    shutil.copytree(saved_run / "checkpoints", tmp_path / "checkpoints")
    refused = subprocess.run(train_command(shard_root, "phases.0.global_batch=32"), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = one_line(refused)
    assert line.startswith("pretrain: error: checkpoints/step-00000003 was saved by a run with other settings "
                           "(phases.0.global_batch 16 -> 32)")
    assert 'init_from = "checkpoints/step-00000003" and another checkpoint.dir' in line
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]  # nothing was written: no logs, no new checkpoint
    assert sorted(os.listdir(tmp_path / "checkpoints")) == sorted(os.listdir(saved_run / "checkpoints"))
    # what the line says to do works
    fresh = subprocess.run(train_command(shard_root, "phases.0.global_batch=32", "max_steps_this_run=1",
                                         'init_from="checkpoints/step-00000003"', 'checkpoint.dir="fresh"'),
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 75 and (tmp_path / "fresh" / "step-00000001").is_dir(), fresh.stderr[-3000:]


def test_a_resume_takes_a_change_of_how_the_run_is_carried_out_and_names_it(saved_run, shard_root, tmp_path):
    shutil.copytree(saved_run / "checkpoints", tmp_path / "checkpoints")
    resumed = subprocess.run(train_command(shard_root, "phases.0.micro_batch=2", "checkpoint.keep=3",
                                           "max_steps_this_run=1"),
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 75, resumed.stderr[-3000:]
    assert "resumed from checkpoints/step-00000003 at global step 3 (phase 0, step 3); changed: checkpoint.keep " \
           "2 -> 3, max_steps_this_run 3 -> 1, phases.0.micro_batch 4 -> 2" in resumed.stderr
