"""Trainer overhead: steps/s under the trainer (DeepSpeed engine, loader, logging) against the bare step.

    python bench/bench_trainer.py [--steps 8] [--rounds 6] [--models squeezebert-tiny squeezebert-base]

For each model: the same global batch, micro-batch and accumulation, on shards of the real corpus. The bare
step is forward + backward per micro-batch and a LAMB step (the trainer's), on micro-batches built
beforehand (no engine, no loader, no logging). This machine is shared and its speed drifts by 10-30%
between runs, so the figure is made of two ratios, each measured side by side:

1. engine: in one process, the trainer's step (`Trainer.train_step`: DeepSpeed engine, global-batch loss
   normalization, the all-reduces, gradient norm) and the bare step alternate on the same micro-batches,
   `--rounds` times each; the ratio of their medians.
2. loop: in a real `Trainer.fit` of `--steps` steps, the share of each step's wall time (between its
   TensorBoard `train/loss` events) spent in the step itself (`progress/compute_s`) rather than waiting on
   the loader or logging; the first step is excluded (the loader starts).

Trainer speed / bare speed = engine x loop. The last line prints it per model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pretrain.config import MaskingConfig, OptimizerConfig, load_config  # noqa: E402
from pretrain.data import Batcher, ShardSet, rank_slice  # noqa: E402
from pretrain.model import ModelConfig  # noqa: E402
from pretrain.optim import build_lamb  # noqa: E402
from pretrain.pretraining_model import SqueezeBertForPretraining  # noqa: E402
from pretrain.trainer import Trainer  # noqa: E402

DEFAULT_CORPUS = os.path.join(ROOT, "..", "shared", "corpora", "enwiki_wikiextractor")
SHAPES = {"squeezebert-tiny": (256, 64), "squeezebert-base": (32, 8)}  # global batch, micro-batch


def trainer_run(model_name: str, shards: str, global_batch: int, micro_batch: int, steps: int,
                run_dir: str) -> tuple[Trainer, float, float, float]:
    """A real `Trainer.fit`; the medians of its step wall time, compute time and data wait."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = load_config(None, [
        f'model="{model_name}"', f'phases=[{{name="p", shards="{shards}", steps={steps}, global_batch={global_batch}, '
        f'micro_batch={micro_batch}}}]', f'checkpoint.dir="{run_dir}/ckpt"', "checkpoint.every_steps=0",
        "checkpoint.every_minutes=0", f'logging.dir="{run_dir}/tb"', "logging.eval_every_steps=0", 'precision="fp32"',
    ])
    trainer = Trainer(config)
    trainer.fit()
    series = {"train/loss": [], "progress/compute_s": [], "progress/data_wait_s": []}
    for name in os.listdir(f"{run_dir}/tb"):
        accumulator = EventAccumulator(os.path.join(run_dir, "tb", name), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag, events in series.items():
            events += accumulator.Scalars(tag)
    walls = np.diff([e.wall_time for e in sorted(series["train/loss"], key=lambda e: e.step)])[1:]
    compute, wait = ([e.value for e in sorted(series[tag], key=lambda e: e.step)][1:]
                     for tag in ("progress/compute_s", "progress/data_wait_s"))
    return trainer, statistics.median(walls), statistics.median(compute), statistics.median(wait)


def engine_vs_bare(trainer: Trainer, model_name: str, batcher: Batcher, global_batch: int, micro_batch: int,
                   rounds: int) -> tuple[float, float]:
    """Medians of `Trainer.train_step` and of the bare step, alternating on the same micro-batches."""
    torch.manual_seed(0)
    model = SqueezeBertForPretraining(ModelConfig.preset(model_name)).train()
    optimizer = build_lamb(model, OptimizerConfig(), lr=1e-3)
    accumulation = global_batch // micro_batch
    micro_batches = [batcher(rank_slice(0, micro, global_batch, micro_batch, 0, 1)) for micro in range(accumulation)]
    phase = trainer.config.phases[0]
    trainer.configure_phase(phase)

    def bare() -> None:
        optimizer.zero_grad(set_to_none=True)
        for batch in micro_batches:
            (model(**batch).loss / accumulation).backward()
        optimizer.step()

    times = {"bare": [], "trainer": []}
    for _ in range(rounds + 1):  # the first pair warms up
        for name, step in (("bare", bare), ("trainer", lambda: trainer.train_step(micro_batches, phase, accumulation))):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["trainer"][1:]), statistics.median(times["bare"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=6, help="alternating trainer/bare step pairs per model")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = tempfile.mkdtemp(prefix="bench_trainer_")
    try:
        def run(*arguments):
            subprocess.run([sys.executable, "-m", "data_prep", *arguments], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        run("vocab", "--source", args.corpus, "--out", os.path.join(work, "vocab"), "--vocab-size", "8192")
        run("shards", "--source", args.corpus, "--vocab", os.path.join(work, "vocab"), "--out",
            os.path.join(work, "shards"), "--seq-len", "128", "--quiet")
        shards = os.path.join(work, "shards", "seq128")
        batcher = Batcher(ShardSet(shards), seed=0, masking=MaskingConfig(), max_predictions=20)
        summary = []
        for model_name in args.models:
            global_batch, micro_batch = SHAPES[model_name]
            trainer, wall, compute, wait = trainer_run(model_name, shards, global_batch, micro_batch,
                                                       args.steps + 1, os.path.join(work, f"run_{model_name}"))
            engine, bare = engine_vs_bare(trainer, model_name, batcher, global_batch, micro_batch, args.rounds)
            loop = compute / wall
            print(f"{model_name}: global batch {global_batch}, micro-batch {micro_batch}, length 128, fp32\n"
                  f"  fit: step {wall:.3f} s of which compute {compute:.3f} s, data wait {wait * 1e3:.1f} ms "
                  f"-> loop {loop:.1%}\n"
                  f"  alternating: trainer step {engine:.3f} s, bare step {bare:.3f} s -> engine {bare / engine:.1%}\n"
                  f"  trainer speed / bare speed = {bare / engine * loop:.1%}", flush=True)
            summary.append(f"{model_name} {bare / engine * loop:.2f}")
        print("trainer throughput / bare step throughput: " + ", ".join(summary))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
