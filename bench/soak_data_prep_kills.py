"""Random-kill soak of `data_prep shards`: runs SIGKILLed N times and rerun each time end byte-identical.

    nice -n 10 python bench/soak_data_prep_kills.py [--seed 0] [--kills 10] [--work bench/out/soak_data_prep]

Trains the vocabulary of tests/assets/enwiki_sample as tests/conftest.py does, then runs
`python -m data_prep shards --source tests/assets/enwiki_sample --vocab V --out OUT --num-proc 2
--shard-text-mb 0.04 --quiet` once without interruption (the reference), then again into another folder,
SIGKILLing its whole process group (main process and pool workers, as a machine failure would) after a
random delay and rerunning the same command until it completes. Each delay is uniform between 3/4 of the
time the reference took to record its first unit (start-up and the pool: kills before are less telling) and
the time this attempt should take at the reference's pace (that time plus the reference's time per unit for
each unit not yet recorded). A kill counts only if the process was alive and died of SIGKILL. When an
attempt completes before its planned kill, that kill does not count: the output is compared with the
reference, the width of the delays' range is scaled by 0.8 and the next kill starts on a fresh output folder
(a new round), until --kills kills have been made and the last round has completed. Printed: one line per
kill (round, delay, units recorded as finished at the kill, manifests present, what the rerun did), the
comparison of each round, and last `kills: N, shards byte-identical: yes|no` (every `*.arrow` and
`manifest.json` of every round against the reference, filecmp shallow=False, and no file more or less than
the reference has, such as a temporary file left by a kill). Exit 1 unless identical.
"""

from __future__ import annotations

import argparse
import filecmp
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from soak_common import group_alive, reference_run  # bench/ is on sys.path when a bench runs as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "assets", "enwiki_sample")


def shards_command(vocab: str, out: str) -> list[str]:
    return [sys.executable, "-m", "data_prep", "shards", "--source", SAMPLE, "--vocab", vocab, "--out", out,
            "--num-proc", "2", "--shard-text-mb", "0.04", "--quiet"]


def unit_records(out: str) -> dict[str, set[str]]:
    """The units recorded as finished, per length (`seqN/.progress/unit-*.json`, temporary files aside)."""
    return {seq: set(glob.glob("unit-*.json", root_dir=os.path.join(out, seq, ".progress")))
            for seq in ("seq128", "seq512")}


def all_files(out: str) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), out) for root, _, names in os.walk(out) for name in names}


def manifest_count(out: str) -> int:
    return sum(os.path.exists(os.path.join(out, seq, "manifest.json")) for seq in ("seq128", "seq512"))


def shard_files(out: str) -> list[str]:
    return sorted(os.path.relpath(p, out) for pattern in ("*/*.arrow", "*/manifest.json")
                  for p in glob.glob(os.path.join(out, pattern)))


def differences(reference: str, out: str) -> list[str]:
    files = shard_files(reference)
    if all_files(reference) != all_files(out):  # a temporary file left behind, a shard missing
        return [f"file lists differ: {sorted(all_files(reference) ^ all_files(out))}"]
    return [f for f in files if not filecmp.cmp(os.path.join(reference, f), os.path.join(out, f), shallow=False)]


def attempt(command: list[str], delay: float | None, log: str) -> tuple[bool, float]:
    """Runs the command; after `delay` s SIGKILLs its process group if it is still running. Returns
    (killed, seconds it ran)."""
    start = time.monotonic()
    with open(log, "w") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    while delay is not None and process.poll() is None and time.monotonic() - start < delay:
        time.sleep(0.005)
    if delay is not None and process.poll() is None:  # alive: a kill after the run completed would not count
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    elapsed = time.monotonic() - start
    while group_alive(process.pid):  # the workers too, before a rerun takes the output folder's lock
        time.sleep(0.01)
    if process.returncode not in (0, -signal.SIGKILL):
        sys.exit(f"{' '.join(command)} failed with exit status {process.returncode}:\n{open(log).read()[-3000:]}")
    return process.returncode == -signal.SIGKILL, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "out", "soak_data_prep"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    vocab, reference = os.path.join(work, "vocab"), os.path.join(work, "reference")
    subprocess.run([sys.executable, "-m", "data_prep", "vocab", "--source", SAMPLE, "--out", vocab,
                    "--vocab-size", "6000"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    status, duration, first_unit = reference_run(shards_command(vocab, reference), ROOT,
                                                 lambda: bool(unit_records(reference)["seq512"]))
    if status != 0 or first_unit is None:
        sys.exit(f"the reference run failed (exit {status}) or recorded no unit while running")
    units = len(shard_files(reference)) // 2 - 1
    print(f"reference: {units} units (shards per length) in {duration:.2f} s, first unit recorded after "
          f"{first_unit:.2f} s", flush=True)

    kills, rounds, attempts, bad, scale = 0, 0, 0, [], 1.0
    while kills < args.kills:
        rounds += 1
        out = os.path.join(work, f"round-{rounds}")
        command, pending = shards_command(vocab, out), None
        while True:
            planned = None
            if kills < args.kills:  # up to the time this attempt should take, by the reference's pace
                records, complete = unit_records(out), manifest_count(out) == 2
                left = 0 if complete else units - len(records["seq128"] & records["seq512"])
                low, high = 0.75 * first_unit, first_unit + (duration - first_unit) * left / units
                planned = low + scale * rng.uniform(0, high - low)
            attempts += 1
            log = os.path.join(work, f"attempt-{attempts:02d}.stderr")
            killed, elapsed = attempt(command, planned, log)
            if pending:
                nothing = " (nothing to do)" if "nothing to do" in open(log).read() else ""
                done = "killed" if killed else "completed" + nothing
                print(f"{pending} -> rerun {done} after {elapsed:.2f} s", flush=True)
            if not killed:
                break
            kills += 1
            records = unit_records(out)
            manifests, temporary = manifest_count(out), sum(f.endswith(".tmp") for f in all_files(out))
            pending = (f"kill {kills} (round {rounds}): after {planned:.2f} s, units finished at the kill: "
                       f"{len(records['seq128'] & records['seq512'])} of {units} (records seq128 "
                       f"{len(records['seq128'])}, seq512 {len(records['seq512'])}), manifests {manifests}/2, "
                       f"temporary files {temporary}")
        if planned is not None:  # retry with shorter delays, on a fresh output folder
            scale *= 0.8
            print(f"round {rounds}: completed in {elapsed:.2f} s before its planned kill after {planned:.2f} s "
                  f"(not counted; range of the delays now x{scale:.2f})", flush=True)
        differing = differences(reference, out)
        bad += [f"round {rounds}: {name}" for name in differing]
        print(f"round {rounds}: {len(shard_files(out))} shard files compared with the reference, "
              f"{'identical' if not differing else 'DIFFERING: ' + ', '.join(differing)}", flush=True)
    print(f"kills: {kills}, shards byte-identical: {'yes' if not bad else 'no'}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
