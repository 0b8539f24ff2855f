"""One LAMB step of the full-size model (51.7M parameters): the project's reference LAMB against torch-optimizer's.

    python bench/bench_lamb.py [--rounds 9] [--threads 2] [--device cpu|cuda]

Each optimizer owns its own copy of the parameters and the same gradients (BERT's parameter groups: decay
on weights, none on biases and LayerNorm). The steps alternate, so machine noise hits both alike; the
median of `--rounds` steps of each is reported, after one warm-up step that creates the optimizer state.

Two ratios:
1. the optimizer step alone: ours (global-norm clipping included) against `torch_optimizer.Lamb.step`;
2. what the trainer ran before, DeepSpeed's separate global-norm clipping (`torch.nn.utils.clip_grad_norm_`,
   the same arithmetic) followed by `torch_optimizer.Lamb.step`, against ours.
Each step's gradients are restored from a saved copy before the step (LAMB divides them in place when it
clips); the copy is not timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pretrain.model import ModelConfig, count_parameters  # noqa: E402
from pretrain.optim import Lamb, parameter_groups  # noqa: E402
from pretrain.pretraining_model import SqueezeBertForPretraining  # noqa: E402


def model_with_gradients(device: str) -> SqueezeBertForPretraining:
    torch.manual_seed(0)
    model = SqueezeBertForPretraining(ModelConfig.preset("squeezebert-base")).to(device)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-2  # a global norm of ~70: clipping at 1.0 applies
    return model


def timed(step, restore, device: str) -> float:
    restore()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours_model, theirs_model = model_with_gradients(args.device), model_with_gradients(args.device)
    saved = {name: [p.grad.clone() for p in model.parameters()] for name, model in
             (("ours", ours_model), ("theirs", theirs_model))}

    def restore(name, model):
        def copy_back():
            for parameter, gradient in zip(model.parameters(), saved[name]):
                parameter.grad.copy_(gradient)
        return copy_back

    ours = Lamb(parameter_groups(ours_model, 0.01), lr=2.5e-3, eps=1e-6, max_grad_norm=1.0)
    theirs = torch_optimizer.Lamb(parameter_groups(theirs_model, 0.01), lr=2.5e-3, eps=1e-6)

    def theirs_clipped():
        torch.nn.utils.clip_grad_norm_(theirs_model.parameters(), 1.0)
        theirs.step()

    steps = {"ours": (ours.step, restore("ours", ours_model)),
             "torch-optimizer": (theirs.step, restore("theirs", theirs_model)),
             "clip + torch-optimizer": (theirs_clipped, restore("theirs", theirs_model))}
    times = {name: [] for name in steps}
    for round_index in range(args.rounds + 1):  # round 0 creates the optimizer state: not counted
        for name, (step, copy_back) in steps.items():
            elapsed = timed(step, copy_back, args.device)
            if round_index:
                times[name].append(elapsed)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"LAMB step, squeezebert-base ({count_parameters(ours_model) / 1e6:.1f}M parameters), {args.device}, "
          f"{args.threads} threads, torch {torch.__version__}, median of {args.rounds}")
    for name, value in median.items():
        print(f"  {name:>24}: {value * 1e3:8.1f} ms")
    print(f"ours vs torch-optimizer step: {median['torch-optimizer'] / median['ours']:.2f}x faster; "
          f"vs clipping + torch-optimizer step: {median['clip + torch-optimizer'] / median['ours']:.2f}x faster")


if __name__ == "__main__":
    main()
