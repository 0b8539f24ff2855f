"""Activation checkpointing (`model_overrides = {gradient_checkpointing = true}`): peak memory and step time
of a training step of the full-size model, with the switch off and on, side by side.

    python bench/bench_activation_checkpointing.py [--shapes 512x2 512x4] [--steps 3] [--threads 2] [--glibc-default]

A step is forward + backward of `squeezebert-base` (fp32, dropout on, gradients set to None before it); no
optimizer step, since LAMB's time and state are the same either way. Peak memory: every (shape, switch)
pair runs one step in a fresh subprocess, so that no allocation of another configuration is in its figure;
on CUDA the growth of `torch.cuda.max_memory_allocated` over the step, on the CPU the process's max RSS
(`ru_maxrss`) after the step minus its resident size just before it. That growth is the step's activations
plus the gradients (~0.2 GB, off and on alike). On the CPU the children run with glibc's
`MALLOC_MMAP_THRESHOLD_=131072`, so that every large tensor is returned to the system when freed and the RSS
peak is the peak of live tensors (what a GPU's caching allocator also reports); by default glibc keeps freed
blocks in its heap and the RSS peak reads several hundred MiB higher (`--glibc-default` measures that).
With two batch sizes, the growth per extra sample is the activation memory a sample costs, which is what
sets the largest micro-batch that fits. Step time: at the first shape, one process alternates off and on
step by step (after a warm-up step of each), so machine noise hits both alike; the median wall and CPU
(process time, all threads) seconds of `--steps` steps of each are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_model_step import make_batch  # noqa: E402

from pretrain.model import ModelConfig  # noqa: E402
from pretrain.pretraining_model import SqueezeBertForPretraining  # noqa: E402

MIB = 1024 * 1024


def resident_mib() -> float:
    """This process's resident memory now (Linux); max RSS so far elsewhere, which can only overstate it."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except OSError:
        return max_rss_mib()


def max_rss_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB


def build(shape: str, device: torch.device):
    seq_len, batch_size = map(int, shape.split("x"))
    config = ModelConfig.preset("squeezebert-base")
    torch.manual_seed(0)
    model = SqueezeBertForPretraining(config).to(device).train()
    batch = [t.to(device) for t in make_batch(config, batch_size, seq_len)[:5]]

    def step(checkpointing: bool) -> float:
        model.config.gradient_checkpointing = checkpointing  # read at every forward
        model.zero_grad(set_to_none=True)
        loss = model(*batch).loss
        loss.backward()
        return loss.item()  # waits for the device

    return step


def memory_child(shape: str, checkpointing: bool, device: torch.device) -> None:
    step = build(shape, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / MIB
        torch.cuda.reset_peak_memory_stats()
        loss = step(checkpointing)
        growth = torch.cuda.max_memory_allocated() / MIB - before
    else:
        before = resident_mib()
        loss = step(checkpointing)
        growth = max_rss_mib() - before
    print(json.dumps({"growth_mib": growth, "loss": loss}))


def time_child(shape: str, steps: int, device: torch.device) -> None:
    step = build(shape, device)
    step(False), step(True)  # warm-up: allocator, kernels, gradient buffers
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(steps):
        for checkpointing in (False, True):
            start, start_cpu = time.perf_counter(), time.process_time()
            step(checkpointing)
            wall[checkpointing].append(time.perf_counter() - start)
            cpu[checkpointing].append(time.process_time() - start_cpu)
    print(json.dumps({f"{name}_{switch}": statistics.median(values[checkpointing])
                      for name, values in (("wall", wall), ("cpu", cpu))
                      for switch, checkpointing in (("off", False), ("on", True))}))


def run_child(args: argparse.Namespace, *child_args: str) -> dict:
    command = [sys.executable, __file__, *child_args, "--steps", str(args.steps), "--threads", str(args.threads),
               "--device", args.device]
    env = dict(os.environ)
    if child_args[1] == "memory" and args.device == "cpu" and not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # large blocks back to the system at free: RSS = live tensors
    output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["512x2", "512x4"], help="SEQxBATCH")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each, off and on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--glibc-default", action="store_true",
                        help="CPU: measure under glibc's default malloc, which keeps freed blocks (see above)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        mode, shape, *switch = args.child
        if mode == "memory":
            memory_child(shape, switch == ["on"], torch.device(args.device))
        else:
            time_child(shape, args.steps, torch.device(args.device))
        return
    what = "torch.cuda.max_memory_allocated" if args.device == "cuda" else (
        "max RSS, glibc default malloc" if args.glibc_default else "max RSS, large blocks returned at free")
    print(f"squeezebert-base, forward + backward, fp32, dropout on; {args.device}, {args.threads} threads; "
          f"torch {torch.__version__}; peak = growth of {what} over one step in a fresh process")
    print(f"{'shape':>7} {'peak MiB off':>12} {'on':>7} {'on/off':>6}")
    growths = {}
    for shape in args.shapes:
        off, on = run_child(args, "--child", "memory", shape, "off"), run_child(args, "--child", "memory", shape, "on")
        if off["loss"] != on["loss"]:  # the same weights, batch and dropout masks: the same loss
            raise SystemExit(f"{shape}: the loss differs with checkpointing ({off['loss']} vs {on['loss']})")
        growths[int(shape.split("x")[1]), int(shape.split("x")[0])] = (off["growth_mib"], on["growth_mib"])
        print(f"{shape:>7} {off['growth_mib']:>12,.0f} {on['growth_mib']:>7,.0f} "
              f"{on['growth_mib'] / off['growth_mib']:>6.2f}")
    for seq_len in sorted({length for _, length in growths}):
        sizes = sorted(batch for batch, length in growths if length == seq_len)
        if len(sizes) < 2:
            continue
        small, large = growths[sizes[0], seq_len], growths[sizes[-1], seq_len]
        off, on = ((large[i] - small[i]) / (sizes[-1] - sizes[0]) for i in (0, 1))
        print(f"per extra sample at length {seq_len}: {off:,.0f} MiB off, {on:,.0f} MiB on ({off / on:.1f}x less)")
    timing = run_child(args, "--child", "time", args.shapes[0])
    for name in ("wall", "cpu"):
        off, on = timing[f"{name}_off"], timing[f"{name}_on"]
        print(f"step {name} time at {args.shapes[0]} (median of {args.steps}, alternating): {off:.2f} s off, "
              f"{on:.2f} s on ({on / off - 1:+.0%})")

if __name__ == "__main__":
    main()
