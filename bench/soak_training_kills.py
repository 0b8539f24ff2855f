"""Random-kill soak of the trainer: a run SIGKILLed N times and rerun each time ends bit-identical to one run.

    nice -n 10 python bench/soak_training_kills.py [--seed 0] [--kills 10] [--save-kills 4] [--steps 12 8]
                                                   [--work bench/out/soak_training] [--shards DIR]

Makes the shard sets of tests/assets/enwiki_sample as tests/conftest.py does (unless --shards names them),
then runs configs/tiny.toml lengthened to --steps (phase 1, phase 2; checkpoint every 3 steps) once without
interruption (the reference), and once more in another folder, SIGKILLing the whole process group at
--kills random moments and rerunning the same command after each kill until it completes. The moment of
each kill is drawn (seeded) relative to the attempt's own progress, so that a machine that speeds up or
slows down still gets all its kills in before the run completes: for --save-kills of them, 0-30 ms after
the 1st or 2nd `checkpoints/.tmp-step-*` folder of that attempt appears (polled every 5 ms); for a third
of the others, a delay after the start shorter than the reference's time to its first step line (imports,
engine, loading the checkpoint); for the rest, a delay shorter than the reference's time per step after
the attempt's 1st, 2nd or 3rd step line on stderr. A kill counts only if the process was alive and died of
SIGKILL; it was "during a save" when a `.tmp-step-*` folder made by that attempt is still there after it.
Printed: one line per kill (the moment, `latest` at the kill, the step the rerun resumed from, parsed from
its stderr), then whether every step's TensorBoard train/loss equals the reference's, and last `kills: N
(k during saves), final parameters bit-identical: yes|no` (the 'module' tensors of the final checkpoint,
torch.equal). Exit 1 unless both are identical, or when the run completed before all its kills.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

from soak_common import group_alive, reference_run  # bench/ is on sys.path when a bench runs as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "assets", "enwiki_sample")
CONFIG = os.path.join(ROOT, "configs", "tiny.toml")
STEP_LINE = re.compile(r"(phase\d step \d+/\d+)")


def make_shards(work: str) -> str:
    vocab, shards = os.path.join(work, "vocab"), os.path.join(work, "shards")
    shutil.rmtree(shards, ignore_errors=True)
    prep = [sys.executable, "-m", "data_prep"]
    subprocess.run([*prep, "vocab", "--source", SAMPLE, "--out", vocab, "--vocab-size", "6000"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([*prep, "shards", "--source", SAMPLE, "--vocab", vocab, "--out", shards, "--num-proc", "1",
                    "--shard-text-mb", "0.2", "--quiet"], cwd=ROOT, check=True)
    return shards


def train_command(shards: str, steps: list[int]) -> list[str]:
    sets = [f'phases.{i}.shards="{os.path.join(shards, name)}"' for i, name in enumerate(("seq128", "seq512"))]
    sets += [f"phases.0.steps={steps[0]}", f"phases.1.steps={steps[1]}"]
    return [sys.executable, "-m", "pretrain", "train", "--config", CONFIG, *[a for s in sets for a in ("--set", s)]]


def temporaries(workdir: str) -> set[str]:
    return set(glob.glob(".tmp-step-*", root_dir=os.path.join(workdir, "checkpoints")))


def latest(workdir: str) -> str:
    path = os.path.join(workdir, "checkpoints", "latest")
    return open(path).read().strip() if os.path.exists(path) else "none"


def attempt(command, workdir, number, kill=None):
    """Runs the command once; with `kill` = ("start", seconds), ("step", m, seconds) or ("save", k, seconds)
    SIGKILLs its process group that long after its start, its m-th step line, or its k-th `.tmp-step-*`
    folder. Returns (killed, description, temporaries of this attempt left after the kill, stderr)."""
    log = os.path.join(workdir, f"attempt-{number:02d}.stderr")
    with open(log, "w") as err:
        process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)
    start, leftovers, new, deadline, moment = time.monotonic(), temporaries(workdir), [], None, None
    while kill and process.poll() is None:
        now = temporaries(workdir)
        leftovers &= now  # a previous kill's folder, until the trainer removes it at its start
        new += sorted(now - leftovers - set(new))
        if deadline is None:
            if kill[0] == "start":
                deadline, moment = start + kill[1], f"{kill[1]:.2f} s after the start"
            elif kill[0] == "step" and len(lines := STEP_LINE.findall(open(log).read())) >= kill[1]:
                deadline = time.monotonic() + kill[2]
                moment = f"{kill[2]:.2f} s after its step line {kill[1]} ({lines[kill[1] - 1]})"
            elif kill[0] == "save" and len(new) >= kill[1]:
                deadline = time.monotonic() + kill[2]
                moment = f"{kill[2] * 1000:.0f} ms after {new[kill[1] - 1]} appeared"
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    if deadline is not None and process.poll() is None:  # alive: a kill after the run completed would not count
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    while group_alive(process.pid):
        time.sleep(0.01)
    latest_at_kill = latest(workdir)
    stderr = open(log).read()
    if process.returncode == -signal.SIGKILL:
        left = sorted((temporaries(workdir) - leftovers) & set(new))
        return True, f"{moment} (latest: {latest_at_kill})", left, stderr
    if process.returncode != 0:
        sys.exit(f"attempt {number} failed with exit status {process.returncode}:\n{stderr[-3000:]}")
    return False, "completed" + (f" before its planned kill {kill}" if kill else ""), [], stderr


def resumed_from(stderr: str) -> str:
    match = re.search(r"resumed from checkpoints/step-(\d+)", stderr)
    if match:
        return f"resumed from step {int(match.group(1))}"
    return "started from scratch" if "phase1 step 1/" in stderr else "killed before it had resumed"


def final_parameters(workdir: str) -> dict:
    import torch

    path = os.path.join(workdir, "checkpoints", latest(workdir), "state", "mp_rank_00_model_states.pt")
    return torch.load(path, map_location="cpu", weights_only=True)["module"]


def losses(workdir: str) -> dict:
    """{step: [train/loss values]} over every event file of the run (restarts append, redone steps repeat)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for path in sorted(glob.glob(os.path.join(workdir, "runs", "events.out.tfevents.*"))):
        accumulator = EventAccumulator(path, size_guidance={"scalars": 0})
        accumulator.Reload()
        if "train/loss" in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars("train/loss"):
                values.setdefault(event.step, []).append(event.value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--save-kills", type=int, default=4, help="how many of the kills wait for a save")
    parser.add_argument("--steps", type=int, nargs=2, default=[12, 8], help="steps of phase 1 and phase 2")
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "out", "soak_training"))
    parser.add_argument("--shards", help="existing shard sets (seq128/, seq512/) instead of making them")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = os.path.abspath(args.work)
    reference, soak = os.path.join(work, "reference"), os.path.join(work, "soak")
    for folder in (reference, soak):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    command = train_command(os.path.abspath(args.shards) if args.shards else make_shards(work), args.steps)

    log = os.path.join(reference, "stderr")
    status, duration, first_step = reference_run(command, reference, lambda: bool(STEP_LINE.search(open(log).read())),
                                                 stderr_path=log, poll_seconds=0.02)
    if status != 0 or first_step is None:
        sys.exit(f"the reference run failed (exit {status}):\n{open(log).read()[-3000:]}")
    step_time = (duration - first_step) / (sum(args.steps) - 1)
    print(f"reference: {sum(args.steps)} steps in {duration:.1f} s, first step line after {first_step:.1f} s, "
          f"then {step_time:.1f} s per step (saves and evaluations included)", flush=True)

    saving = set(rng.sample(range(args.kills), min(args.save_kills, args.kills)))
    kills, during_saves, number, pending = 0, 0, 0, None
    while True:
        plan = None
        if kills < args.kills:
            if kills in saving:
                plan = ("save", rng.choice((1, 2)), rng.uniform(0, 0.03))
            elif rng.random() < 1 / 3:  # while it starts: imports, engine, loading the checkpoint
                plan = ("start", rng.uniform(0, first_step))
            else:
                plan = ("step", rng.choice((1, 2, 3)), rng.uniform(0, step_time))
        killed, description, left, stderr = attempt(command, soak, number, plan)
        number += 1
        if pending:
            print(f"{pending} -> rerun {resumed_from(stderr)}", flush=True)
        if not killed:
            print(f"attempt {number}: {description}", flush=True)
            break
        kills += 1
        during_saves += bool(left)
        saved = f"; during the save of step {int(left[0][-8:])}" if left else ""
        pending = f"kill {kills}: {description}{saved}"

    import torch

    expected, got = final_parameters(reference), final_parameters(soak)
    identical = expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    reference_losses, soak_losses = losses(reference), losses(soak)
    differing = [s for s, values in soak_losses.items() if any(v != reference_losses.get(s, [None])[0] for v in values)]
    missing = sorted(set(reference_losses) - set(soak_losses))
    print(f"train/loss: {sum(map(len, soak_losses.values()))} values over {number} attempts for "
          f"{len(soak_losses)} steps; differing from the reference at steps {differing or 'none'}; "
          f"steps missing: {missing or 'none'}")
    print(f"final checkpoint: {latest(soak)} (reference {latest(reference)}), {len(expected)} tensors")
    print(f"kills: {kills} ({during_saves} during saves), final parameters bit-identical: "
          f"{'yes' if identical else 'no'}")
    if kills < args.kills:
        sys.exit(f"the run completed after {kills} of {args.kills} kills: lengthen it with --steps")
    if not identical or differing:
        sys.exit(1)


if __name__ == "__main__":
    main()
