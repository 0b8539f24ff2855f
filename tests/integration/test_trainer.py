"""The trainer in real processes: exact resume after SIGKILL, preemption, crashed saves, two ranks under
the `deepspeed` launcher, the schedule read back from TensorBoard, and bad configs."""

import glob
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pretrain.config import load_config
from pretrain.optim import learning_rate
from tests.conftest import ROOT

CONFIG = os.path.join(ROOT, "configs", "tiny.toml")


def train_command(shard_root, *overrides, launcher=(sys.executable, "-m")):
    sets = [f'phases.0.shards="{os.path.join(shard_root, "seq128")}"',
            f'phases.1.shards="{os.path.join(shard_root, "seq512")}"', *overrides]
    return [*launcher, "pretrain", "train", "--config", CONFIG, *[a for s in sets for a in ("--set", s)]]


def run(command, cwd, timeout=300):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, "the run ended before the moment to interrupt it"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def final_parameters(workdir):
    path = os.path.join(workdir, "checkpoints", "step-00000012", "state", "mp_rank_00_model_states.pt")
    return torch.load(path, map_location="cpu", weights_only=True)["module"]


def all_scalars(workdir):
    """{tag: {step: [values, one per invocation that logged it, in order]}} over all event files of the run
    (restarts append; event files sort by start time)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for path in sorted(glob.glob(os.path.join(workdir, "runs", "events.out.tfevents.*"))):
        accumulator = EventAccumulator(path, size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                values.setdefault(tag, {}).setdefault(event.step, []).append(event.value)
    return values


def scalars(workdir, tag):
    """{step: [values...]} of a TensorBoard tag over all event files of the run (restarts append)."""
    return all_scalars(workdir).get(tag, {})


@pytest.fixture
def reference(uninterrupted_run):
    """The session's one uninterrupted tiny run (tests/integration/conftest.py): read it, or copy it first."""
    return uninterrupted_run


def assert_same_run(reference, workdir):
    expected, got = final_parameters(reference), final_parameters(workdir)
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    reference_losses = scalars(reference, "train/loss")
    resumed_losses = scalars(workdir, "train/loss")
    assert sorted(reference_losses) == sorted(resumed_losses) == list(range(1, 13))
    for step, values in resumed_losses.items():
        assert all(value == reference_losses[step][0] for value in values), step


def test_exact_resume_after_sigkill(reference, shard_root, tmp_path):
    command = train_command(shard_root)
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(tmp_path / "checkpoints" / "latest", process)
    time.sleep(random.uniform(0.0, 1.0))
    assert process.poll() is None, "the run ended before the moment to kill it: this would compare a run with itself"
    process.kill()  # SIGKILL: no handler runs
    process.wait()
    result = run(command, tmp_path)
    assert "resumed from checkpoints/step-" in result.stderr
    assert_same_run(reference, str(tmp_path))


def test_strict_determinism_sets_torchs_switches_and_changes_nothing_on_a_cpu(reference, shard_root, tmp_path):
    """On a CPU every kernel is deterministic already: the strict run is the default run, bit for bit. What it
    changes on a GPU (cuBLAS's workspace, SDPA's kernel) is set in the process, as checked here."""
    command = train_command(shard_root, 'determinism="strict"', launcher=(sys.executable,))
    probe = ("import os, sys, torch; from pretrain.__main__ import main; code = main(sys.argv[1:]); "
             "print(code, torch.are_deterministic_algorithms_enabled(), os.environ.get('CUBLAS_WORKSPACE_CONFIG'))")
    result = run([sys.executable, "-c", probe, *command[command.index("train"):]], tmp_path)
    assert result.stdout.splitlines()[-1] == "0 True :4096:8"
    assert_same_run(reference, str(tmp_path))


def test_sigterm_saves_and_exits_with_the_requeue_code(reference, shard_root, tmp_path):
    command = train_command(shard_root)
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "checkpoints" / "latest", process)
    saved = int((tmp_path / "checkpoints" / "latest").read_text().strip().split("-")[1])
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    # The signal is sent once the first save (step 3 of 12) is on disk: a run that ends with 0 ignored it, and
    # one that finishes its steps first saves at step 12.
    assert process.returncode == 75, stderr[-2000:]
    stopped = int(re.search(r"preempted: saved at global step (\d+)", stderr).group(1))
    assert saved <= stopped < 12, stderr[-2000:]
    run(command, tmp_path)
    assert_same_run(reference, str(tmp_path))


def test_crash_while_saving_leaves_the_previous_checkpoint_in_use(reference, shard_root, tmp_path):
    shutil.copytree(os.path.join(reference, "checkpoints"), tmp_path / "checkpoints")
    shutil.copytree(os.path.join(reference, "runs"), tmp_path / "runs")
    # What a crash in the middle of saving step 12 leaves: a temporary folder, never renamed, and the
    # pointer still naming step 9.
    shutil.move(str(tmp_path / "checkpoints" / "step-00000012"), tmp_path / "checkpoints" / ".tmp-step-00000012")
    os.remove(tmp_path / "checkpoints" / ".tmp-step-00000012" / "state" / "mp_rank_00_model_states.pt")
    (tmp_path / "checkpoints" / "latest").write_text("step-00000009\n")
    result = run(train_command(shard_root), tmp_path)
    assert "resumed from checkpoints/step-00000009" in result.stderr
    assert not (tmp_path / "checkpoints" / ".tmp-step-00000012").exists()
    expected, got = final_parameters(reference), final_parameters(str(tmp_path))
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def assert_two_ranks_match(single, double):
    one, two = final_parameters(single), final_parameters(double)
    assert max((one[k].float() - two[k].float()).abs().max().item() for k in one) < 1e-5
    losses_one, losses_two = scalars(single, "train/loss"), scalars(double, "train/loss")
    assert all(abs(losses_one[s][0] - losses_two[s][0]) < 1e-4 for s in losses_one)
    # LAMB's trust ratio would hide a uniform error in the gradients' scale: compare every step's norm too
    norms_one, norms_two = scalars(single, "train/grad_norm"), scalars(double, "train/grad_norm")
    assert sorted(norms_one) == sorted(norms_two) == list(range(1, 13))
    assert all(abs(norms_one[s][0] - norms_two[s][0]) <= 1e-4 * norms_one[s][0] for s in norms_one)
    evaluations_one, evaluations_two = scalars(single, "eval/mlm_loss"), scalars(double, "eval/mlm_loss")
    assert sorted(evaluations_one) == sorted(evaluations_two) == [4, 8, 12]
    assert all(abs(evaluations_one[s][0] - evaluations_two[s][0]) < 1e-4 for s in evaluations_one)
    assert scalars(double, "progress/accumulation")[1] == [2.0]  # 16 / (4 x 2 ranks)
    state = os.path.join(double, "checkpoints", "step-00000012", "state")
    assert sorted(os.listdir(state)) == sorted(os.listdir(os.path.join(single, "checkpoints", "step-00000012",
                                                                       "state")) + ["rng-rank00001.safetensors"])


def test_two_ranks_under_the_deepspeed_launcher_match_one_process(reference, launcher_references):
    """With dropout on: a micro-batch's dropout depends on its place in the global batch, not on the rank. The
    two-rank run is the session's uninterrupted run under `deepspeed` (the SLURM tests' reference too)."""
    assert_two_ranks_match(reference, launcher_references("deepspeed"))


@pytest.mark.parametrize("launcher, world_size", [("process", 1), ("deepspeed", 2)])
def test_mfu_is_the_runs_flops_rate_over_the_peak_of_all_its_devices(launcher_references, launcher, world_size):
    """progress/mfu = progress/flops_per_s / (logging.peak_flops_per_device x world size), every step, read back
    from the run's own TensorBoard figures; with two ranks the world size is what tells a right formula."""
    workdir = launcher_references(launcher)
    peak = load_config(CONFIG, ['phases.0.shards="x"', 'phases.1.shards="y"']).logging.peak_flops_per_device
    rates, mfu = scalars(workdir, "progress/flops_per_s"), scalars(workdir, "progress/mfu")
    assert sorted(rates) == sorted(mfu) == list(range(1, 13))
    assert all(rates[step][0] > 0 for step in rates)
    for step in rates:
        assert mfu[step][0] == pytest.approx(rates[step][0] / (peak * world_size), rel=1e-6), step


def parameters_sha256(workdir):
    parameters = final_parameters(workdir)
    return hashlib.sha256(b"".join(key.encode() + parameters[key].numpy().tobytes()
                                   for key in sorted(parameters))).hexdigest()


@pytest.mark.parametrize("switched_on", ["from_the_start", "at_the_resume_after_phase_1"])
def test_activation_checkpointing_leaves_the_trained_parameters_bit_identical(reference, shard_root, tmp_path,
                                                                              switched_on):
    """README: the tiny two-phase run ends with the same parameters (sha256), dropout on, whether activation
    checkpointing is off (the shared run), on, or turned on at the resume after phase 1."""
    on = "model_overrides.gradient_checkpointing=true"
    if switched_on == "from_the_start":
        run(train_command(shard_root, on), tmp_path)
    else:
        phase_1 = subprocess.run(train_command(shard_root, "max_steps_this_run=8"), cwd=tmp_path, capture_output=True,
                                 text=True, timeout=300)
        assert phase_1.returncode == 75, phase_1.stderr[-3000:]
        resumed = run(train_command(shard_root, on), tmp_path)
        assert "resumed from checkpoints/step-00000008" in resumed.stderr, resumed.stderr[-3000:]
        assert "model_overrides.gradient_checkpointing (absent) -> true" in resumed.stderr, resumed.stderr[-3000:]
    assert parameters_sha256(str(tmp_path)) == parameters_sha256(reference)


def test_every_checkpoint_stores_the_resolved_config(reference, shard_root):
    """The resolved run config (file, then --set) travels in every checkpoint, so a checkpoint says how it was
    made."""
    expected = load_config(CONFIG, train_command(shard_root)[train_command(shard_root).index("--set") + 1::2])
    for step in (9, 12):
        path = os.path.join(reference, "checkpoints", f"step-{step:08d}", "state", "mp_rank_00_model_states.pt")
        stored = torch.load(path, map_location="cpu", weights_only=True)["config"]
        assert stored == expected.to_dict()


def test_schedule_read_back_from_tensorboard(reference):
    config = load_config(CONFIG, ['phases.0.shards="x"', 'phases.1.shards="y"'])
    rates = scalars(reference, "progress/lr")
    global_step = 0
    for phase in config.phases:
        for step in range(phase.steps):
            global_step += 1
            assert rates[global_step][0] == pytest.approx(learning_rate(phase, step), rel=1e-6)
    first = config.phases[0]
    assert max(rates[s][0] for s in range(1, first.steps + 1)) == pytest.approx(first.peak_lr)
    assert rates[first.warmup_steps][0] == pytest.approx(first.peak_lr)  # warmup ends at the peak
    accumulation = scalars(reference, "progress/accumulation")
    assert accumulation[1] == [4.0] and accumulation[12] == [4.0]  # 16 / 4 in phase 1, 8 / 2 in phase 2
    assert set(scalars(reference, "progress/phase")[12]) == {1.0}
    assert sorted(scalars(reference, "eval/mlm_loss")) == [4, 8, 12]  # the held-out evaluation
    # where each step's time went: the step itself, and the wait on the loader (not negative, not the step)
    compute, wait = scalars(reference, "progress/compute_s"), scalars(reference, "progress/data_wait_s")
    assert sorted(compute) == sorted(wait) == list(range(1, 13))
    assert all(c[0] > 0 and 0 <= w[0] for c, w in zip(compute.values(), wait.values()))


@pytest.mark.parametrize("override, fragment", [
    ('phases.0.shards="/nonexistent/seq128"', "phases.0.shards"),
    ("phases.0.micro_batch=3", "global_batch 16 is not a multiple of micro_batch 3"),
    ("optimizer.zero_stage=1", "LAMB needs ZeRO stage 0"),
    ("model_overrides.vocab_size=1000", "use shards made with the model's vocabulary"),
    ("phases.0.learning_rate=1", "unknown keys ['learning_rate']"),
    ('phases.0.eval_shards="{root}/seq128"', "phases.0.eval_shards: the training shards themselves"),
    ('phases.1.eval_shards="{root}/seq128-heldout"', "phases.1.eval_shards: {root}/seq128-heldout: no manifest.json"),
])
def test_bad_configs_fail_before_compute_with_one_line(shard_root, tmp_path, override, fragment):
    override, fragment = (text.replace("{root}", shard_root) for text in (override, fragment))
    result = subprocess.run(train_command(shard_root, override), cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pretrain: error:") and fragment in last, last
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_export_a_trainer_checkpoint_and_continue_pretraining_from_it(reference, shard_root, tmp_path):
    export = tmp_path / "export"
    result = subprocess.run([sys.executable, "-m", "pretrain", "export", "--checkpoint",
                             os.path.join(reference, "checkpoints"), "--out", str(export)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json"} <= set(os.listdir(export))
    from transformers import SqueezeBertForSequenceClassification

    classifier, info = SqueezeBertForSequenceClassification.from_pretrained(str(export), output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    trained = final_parameters(reference)
    for name, value in classifier.transformer.state_dict().items():
        assert torch.equal(value, trained[f"transformer.{name}"]), name
    # Continued pretraining from the export: a near-zero learning rate must leave its weights in place.
    workdir = tmp_path / "continued"
    workdir.mkdir()
    run(train_command(shard_root, f'init_from="{export}"', "phases.0.peak_lr=1e-12", "phases.1.peak_lr=1e-12"),
        workdir)
    continued = final_parameters(str(workdir))
    assert max((continued[k] - trained[k]).abs().max().item() for k in trained if k.startswith("transformer.")) < 1e-6


LAUNCHERS = {
    "process": (sys.executable, "-m"),
    # next to the interpreter that runs the tests, so an unactivated virtual environment works too
    "deepspeed": (os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", "2", "--module"),
    "torchrun": (os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2", "-m"),
}


def with_port(launcher):
    if "deepspeed" in launcher[0] or "torchrun" in launcher[0]:
        return (launcher[0], "--master_port", str(random.randint(20000, 40000)), *launcher[1:])
    return launcher


@pytest.mark.parametrize("launcher", ["process", "deepspeed", "torchrun"])
def test_sigterm_to_every_process_of_the_job_saves_and_resumes_exactly(launcher_references, shard_root, tmp_path,
                                                                        launcher):
    """As SLURM preempts or cancels a job step and as Kubernetes stops a pod: SIGTERM to every process,
    loader workers and launchers included."""
    command = train_command(shard_root, launcher=with_port(LAUNCHERS[launcher]))
    env = {**os.environ, "PRETRAIN_STATUS_FILE": str(tmp_path / "status")}
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=env, start_new_session=True)
    wait_for(tmp_path / "checkpoints" / "latest", process)
    time.sleep(random.uniform(0.0, 0.5))
    assert process.poll() is None, "the run ended before the moment to interrupt it"
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert "preempted: saved at global step" in stderr, stderr[-3000:]
    assert "is killed by signal" not in stderr and "Traceback (most recent call last):\n  File" not in \
        stderr.split("preempted: saved at global step")[0]
    state, step = (tmp_path / "status").read_text().split()
    assert state == "preempted" and 0 < int(step) < 12
    if launcher == "process":
        assert process.returncode == 75
    result = run(train_command(shard_root, launcher=with_port(LAUNCHERS[launcher])), tmp_path)
    assert f"resumed from checkpoints/step-{int(step):08d}" in result.stderr
    assert_same_run(launcher_references(launcher), str(tmp_path))  # "process": the shared uninterrupted run


def damaged_copy(reference, tmp_path, how):
    """The reference run's checkpoints (step 9 and step 12) with step 12's model file damaged."""
    shutil.copytree(os.path.join(reference, "checkpoints"), tmp_path / "checkpoints")
    shutil.copytree(os.path.join(reference, "runs"), tmp_path / "runs")
    target = tmp_path / "checkpoints" / "step-00000012" / "state" / "mp_rank_00_model_states.pt"
    data = bytearray(target.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # one flipped byte in the middle: the file still unpickles, with a wrong weight
        data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_damaged_checkpoint_is_found_and_the_previous_one_used(reference, shard_root, tmp_path, how):
    damaged_copy(reference, tmp_path, how)
    result = run(train_command(shard_root), tmp_path)
    assert "checkpoints/step-00000012 is damaged (state/mp_rank_00_model_states.pt" in result.stderr
    assert "resumed from checkpoints/step-00000009" in result.stderr
    expected, got = final_parameters(reference), final_parameters(str(tmp_path))
    assert all(torch.equal(expected[key], got[key]) for key in expected)  # steps 10-12 redone exactly


def test_latest_naming_a_missing_checkpoint_falls_back(reference, shard_root, tmp_path):
    shutil.copytree(os.path.join(reference, "checkpoints"), tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "latest").write_text("step-00000099\n")
    result = run(train_command(shard_root), tmp_path)
    assert "names step-00000099, which is not a complete checkpoint" in result.stderr
    assert "resumed from checkpoints/step-00000012" in result.stderr and "training complete" in result.stderr


def test_export_of_a_damaged_checkpoint_is_refused_in_one_line(reference, tmp_path):
    damaged_copy(reference, tmp_path, "flipped")  # still unpickles: only its recorded sha256 tells
    command = [sys.executable, "-m", "pretrain", "export", "--checkpoint", "checkpoints", "--out", "export"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "damaged (state/mp_rank_00_model_states.pt does not match its sha256)" in result.stderr
    assert not (tmp_path / "export").exists()
    good = subprocess.run([*command[:5], "checkpoints/step-00000009", "--out", "export"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr[-3000:]


def test_no_usable_checkpoint_is_one_line(reference, shard_root, tmp_path):
    damaged_copy(reference, tmp_path, "truncated")
    (tmp_path / "checkpoints" / "step-00000009" / "files.json").write_text("{not json")
    result = subprocess.run(train_command(shard_root), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pretrain: error: checkpoints: no usable checkpoint"), last


def test_time_based_saves_and_a_phase_that_resets_the_optimizer(reference, shard_root, tmp_path):
    """checkpoint.every_minutes saves between the step-based saves (every_steps out of reach here: only the
    clock and the phase ends save), and phases.1.reset_optimizer starts phase 2 with fresh LAMB moments: its
    step count at the end is phase 2's 4 steps, not the run's 12."""
    run(train_command(shard_root, "checkpoint.every_steps=1000", "checkpoint.every_minutes=0.0001",
                      "phases.1.reset_optimizer=true"), tmp_path)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [".lock", "latest", "step-00000011", "step-00000012"]

    def lamb_steps(workdir):
        path = os.path.join(workdir, "checkpoints", "step-00000012", "state", "mp_rank_00_model_states.pt")
        return {float(s["step"]) for s in torch.load(path, map_location="cpu", weights_only=True)["optimizer"][
            "state"].values()}

    assert lamb_steps(str(tmp_path)) == {4.0} and lamb_steps(reference) == {12.0}
    reset, kept = final_parameters(str(tmp_path)), final_parameters(reference)
    assert not all(torch.equal(reset[key], kept[key]) for key in kept)


MLM_ONLY = ('objective="mlm"', "masking.whole_word=true", "masking.probability=0.3")


def mlm_only_command(heldout_shard_root, *overrides, launcher=(sys.executable, "-m")):
    """MLM only, whole words at 30%, evaluated on the held-out documents of `data_prep --holdout-fraction`."""
    evaluation = [f'phases.{index}.eval_shards="{os.path.join(heldout_shard_root, name)}"'
                  for index, name in enumerate(("seq128-heldout", "seq512-heldout"))]
    return train_command(heldout_shard_root, *MLM_ONLY, *evaluation, *overrides, launcher=launcher)


@pytest.fixture(scope="module")
def mlm_only_reference(heldout_shard_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlm_only_run")
    run(mlm_only_command(heldout_shard_root), workdir)
    return str(workdir)


def test_mlm_only_trains_without_sop_and_resumes_exactly(mlm_only_reference, heldout_shard_root, tmp_path):
    """objective = "mlm" with whole-word masking at 30%: no SOP parameter in the checkpoint or the export, no
    SOP scalar in TensorBoard, and a run stopped after 5 steps resumes to the same bits."""
    whole = mlm_only_reference
    stopped = subprocess.run(mlm_only_command(heldout_shard_root, "max_steps_this_run=5"), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    resumed = run(mlm_only_command(heldout_shard_root), tmp_path)
    assert "resumed from checkpoints/step-00000005" in resumed.stderr
    assert re.search(r"saved checkpoints/step-00000012 in \d+\.\d s", resumed.stderr)  # each save logs its time
    expected, got = final_parameters(whole), final_parameters(str(tmp_path))
    assert not any("sop" in key for key in expected) and set(expected) == set(got)
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    tags = set(all_scalars(whole))
    assert "train/mlm_loss" in tags and "eval/mlm_loss" in tags and not any("sop" in tag for tag in tags)
    export = subprocess.run([sys.executable, "-m", "pretrain", "export", "--checkpoint", "checkpoints", "--out",
                             "export"], cwd=whole, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    from transformers import SqueezeBertForMaskedLM

    SqueezeBertForMaskedLM.from_pretrained(os.path.join(whole, "export"))  # the headless export loads as before


def test_mlm_only_two_ranks_match_one_process(mlm_only_reference, heldout_shard_root, tmp_path):
    run(mlm_only_command(heldout_shard_root, launcher=with_port(LAUNCHERS["deepspeed"])), tmp_path)
    assert_two_ranks_match(mlm_only_reference, str(tmp_path))


def test_the_trainer_evaluates_on_the_held_out_split(mlm_only_reference, heldout_shard_root):
    """eval/mlm_loss at the last step is the final model's loss on the first `eval_samples` examples of the
    phase's eval_shards (seq512-heldout), recomputed here; and training used the whole training set."""
    import torch.nn.functional as F

    from pretrain.data import Batcher, ShardSet
    from pretrain.model import ModelConfig
    from pretrain.pretraining_model import SqueezeBertForPretraining

    command = mlm_only_command(heldout_shard_root)
    config = load_config(CONFIG, command[command.index("--set") + 1::2])
    phase = config.phases[1]
    model = SqueezeBertForPretraining(ModelConfig.preset(config.model), sop=False)
    model.load_state_dict(final_parameters(mlm_only_reference))
    model.eval()
    batcher = Batcher(ShardSet(phase.shards), config.seed + 1, config.masking, phase.max_predictions,
                      document_order=True, eval_shards=ShardSet(phase.eval_shards),
                      eval_count=config.logging.eval_samples)
    assert batcher.num_train == len(batcher.shards) and batcher.eval_set.folder.endswith("seq512-heldout")
    assert 0 < batcher.eval_count <= config.logging.eval_samples
    total, masked = 0.0, 0
    with torch.no_grad():
        for start in range(0, batcher.eval_count, phase.micro_batch):
            batch = batcher(np.arange(start, min(start + phase.micro_batch, batcher.eval_count)), evaluation=True)
            output = model(**batch)
            total += F.cross_entropy(output.mlm_logits.float(), output.mlm_targets, reduction="sum").item()
            masked += batch["mlm_positions"].numel()
    logged = scalars(mlm_only_reference, "eval/mlm_loss")[12][0]
    assert logged == pytest.approx(total / masked, rel=1e-5)
