"""Trainer overhead: steps/s under the trainer (DeepSpeed engine, loader, logging) against the bare step.

    python bench/bench_trainer.py [--steps 6] [--models squeezebert-tiny squeezebert-base]

For each model: the same global batch, micro-batch and accumulation, on shards of the real corpus.
The bare step is forward + backward per micro-batch and a torch-optimizer LAMB step, on micro-batches built
beforehand (no engine, no loader, no logging). The trainer's step time comes from the wall times of its
TensorBoard `train/loss` events (first step excluded: it includes the loader's start). Bare runs before and
after the trainer bracket it; their mean is the reference. The last line gives the ratios.
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

from pretrain.config import OptimizerConfig, load_config  # noqa: E402
from pretrain.data import Batcher, MaskingConfig, ShardSet, rank_slice  # noqa: E402
from pretrain.heads import SqueezeBertForPretraining  # noqa: E402
from pretrain.model import ModelConfig  # noqa: E402
from pretrain.optim import build_lamb  # noqa: E402
from pretrain.trainer import Trainer  # noqa: E402

DEFAULT_CORPUS = os.path.join(ROOT, "..", "shared", "corpora", "enwiki_wikiextractor")
SHAPES = {"squeezebert-tiny": (256, 64), "squeezebert-base": (32, 8)}  # global batch, micro-batch


def bare_step_time(model_name: str, batcher: Batcher, global_batch: int, micro_batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = SqueezeBertForPretraining(ModelConfig.preset(model_name)).train()
    optimizer = build_lamb(model, OptimizerConfig(), lr=1e-3)
    accumulation = global_batch // micro_batch
    batches = [[batcher(rank_slice(step, micro, global_batch, micro_batch, 0, 1)) for micro in range(accumulation)]
               for step in range(steps)]
    times = []
    for micro_batches in batches:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for batch in micro_batches:
            (model(**batch).loss / accumulation).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def trainer_step_time(model_name: str, shards: str, global_batch: int, micro_batch: int, steps: int, work: str) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = os.path.join(work, f"run_{model_name}")
    config = load_config(None, [
        f'model="{model_name}"', f'phases=[{{name="p", shards="{shards}", steps={steps}, global_batch={global_batch}, '
        f'micro_batch={micro_batch}}}]', f'checkpoint.dir="{run_dir}/ckpt"', "checkpoint.every_steps=0",
        "checkpoint.every_minutes=0", f'logging.dir="{run_dir}/tb"', "logging.eval_every_steps=0", 'precision="fp32"',
    ])
    Trainer(config).fit()
    events = []
    for name in os.listdir(f"{run_dir}/tb"):
        accumulator = EventAccumulator(os.path.join(run_dir, "tb", name), size_guidance={"scalars": 0})
        accumulator.Reload()
        events += accumulator.Scalars("train/loss")
    walls = [e.wall_time for e in sorted(events, key=lambda e: e.step)]
    return statistics.median(np.diff(walls)[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = tempfile.mkdtemp(prefix="bench_trainer_")
    try:
        run = lambda *a: subprocess.run([sys.executable, "-m", "data_prep", *a], cwd=ROOT, check=True,  # noqa: E731
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run("vocab", "--source", args.corpus, "--out", os.path.join(work, "vocab"), "--vocab-size", "8192")
        run("shards", "--source", args.corpus, "--vocab", os.path.join(work, "vocab"), "--out",
            os.path.join(work, "shards"), "--seq-len", "128", "--quiet")
        shards = os.path.join(work, "shards", "seq128")
        batcher = Batcher(ShardSet(shards), seed=0, masking=MaskingConfig(max_predictions=20))
        ratios = []
        for model_name in args.models:
            global_batch, micro_batch = SHAPES[model_name]
            before = bare_step_time(model_name, batcher, global_batch, micro_batch, args.steps)
            trained = trainer_step_time(model_name, shards, global_batch, micro_batch, args.steps + 1, work)
            after = bare_step_time(model_name, batcher, global_batch, micro_batch, args.steps)
            bare = (before + after) / 2
            ratios.append(f"{model_name} {bare / trained:.2f}")
            print(f"{model_name}: global batch {global_batch}, micro-batch {micro_batch}: bare step {before:.3f} s / "
                  f"{after:.3f} s, trainer step {trained:.3f} s -> trainer at {bare / trained:.0%} of bare speed")
        print("trainer throughput / bare step throughput: " + ", ".join(ratios))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
