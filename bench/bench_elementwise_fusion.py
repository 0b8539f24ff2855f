"""What inductor's fusion of the encoder's elementwise passes would save on CPU, forward + backward, side by side.

    python bench/bench_elementwise_fusion.py [--tokens 2048] [--reps 15] [--threads 2]

Two pieces of a SqueezeBERT-base layer in a finetuning step (batch 16 at length 128 = 2048 tokens), each eager
and `torch.compile`d (inductor's C++ backend), alternating, median of `--reps` forward + backward calls:
- bias + GELU on the intermediate [T, 3072] (eager: the add, GELU, and their backward with the bias gradient);
- dropout (a product with the byte mask and the 1 / (1 - p) scale) + residual + LayerNorm on [T, 768].
The model does not use this yet (`ModelConfig.compile` compiles whole layers, slower on this CPU): it measures
the next step for issue 19's speed goal. Needs a C++ compiler, as any inductor CPU compile does."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

HIDDEN, INTERMEDIATE, P = 768, 3072, 0.1


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(x + bias)


def dropout_residual_layernorm(out, residual, keep, weight, bias):
    return F.layer_norm(out.mul(keep).mul(1.0 / (1.0 - P)) + residual, (HIDDEN,), weight, bias, 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t = args.tokens
    x, b = torch.randn(t, INTERMEDIATE, requires_grad=True), torch.randn(INTERMEDIATE, requires_grad=True)
    out, residual = torch.randn(t, HIDDEN, requires_grad=True), torch.randn(t, HIDDEN, requires_grad=True)
    weight, bias = torch.ones(HIDDEN, requires_grad=True), torch.zeros(HIDDEN, requires_grad=True)
    keep = (torch.rand(t, HIDDEN) >= P).view(torch.uint8)
    cases = {
        "bias + GELU": (bias_gelu, (x, b), torch.randn(t, INTERMEDIATE)),
        "dropout + residual + LayerNorm": (dropout_residual_layernorm, (out, residual, keep, weight, bias),
                                           torch.randn(t, HIDDEN)),
    }
    compiled = {name: torch.compile(fn) for name, (fn, _, _) in cases.items()}
    started = time.perf_counter()
    for name, (_, inputs, grad) in cases.items():  # compile before timing
        compiled[name](*inputs).backward(grad)
    print(f"compiled in {time.perf_counter() - started:.1f} s; {args.tokens} tokens, {args.threads} threads, "
          f"torch {torch.__version__}")
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.reps):
        for name, (fn, inputs, grad) in cases.items():
            for mode, call in (("eager", fn), ("compiled", compiled[name])):
                start = time.perf_counter()
                call(*inputs).backward(grad)
                times.setdefault((name, mode), []).append(time.perf_counter() - start)
    print(f"{'piece (forward + backward)':<32} {'eager ms':>9} {'compiled ms':>12} {'eager / compiled':>17}")
    for name in cases:
        eager, fused = (statistics.median(times[name, mode]) * 1e3 for mode in ("eager", "compiled"))
        print(f"{name:<32} {eager:>9.2f} {fused:>12.2f} {eager / fused:>16.2f}x")


if __name__ == "__main__":
    main()
