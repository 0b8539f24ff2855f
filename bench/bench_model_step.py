"""One pretraining step of the full-size model: this project's against transformers', side by side.

    python bench/bench_model_step.py [--shapes 128x8 128x32 512x2] [--steps 3] [--bf16] [--threads 2]
                                     [--variants before fused compiled transformers]

A step is forward + backward + a torch-optimizer LAMB step, fp32 on the CPU. Four variants, same weights,
same batch:
- `before`: this project's model as it was before issue 17 (three GEMMs for q, k, v; every grouped GEMM's
  output copied out of its group-major layout), kept here as `use_formulation_before`;
- `fused`: the model as it is (one grouped GEMM for q, k, v; GEMMs that read and write strided views);
- `compiled`: the same with `compile = true` (each encoder layer compiled by inductor; its compile time,
  paid in the warm-up step, is printed apart);
- `transformers`: transformers' `SqueezeBertForMaskedLM` (logits at every position, loss over the masked
  ones) plus a linear SOP head on its pooled output.
They alternate step by step in one process so machine noise hits all alike; the median step time of each
is reported. Peak memory (max RSS) of each but the compiled one is measured in its own subprocess.
Achieved FLOP/s (of `fused`) uses `flops_per_token` (the useful work: logits at masked positions only)
against the measured fp32 matmul rate of the machine. The last line is the samples/s ratio fused /
transformers at sequence length 128.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

import torch
import torch.nn.functional as F
import torch_optimizer
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pretrain.model import GroupedPointwise, ModelConfig, SelfAttention, attention, flops_per_token  # noqa: E402
from pretrain.model_files import transformers_config  # noqa: E402
from pretrain.pretraining_model import SqueezeBertForPretraining  # noqa: E402

MAX_MASKED = {128: 20, 512: 80}  # the paper's caps per sequence
VARIANTS = ("before", "fused", "compiled", "transformers")


def make_batch(config: ModelConfig, batch: int, seq_len: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (batch, seq_len), generator=generator)
    attention_mask = torch.ones(batch, seq_len, dtype=torch.long)
    token_type_ids = torch.zeros(batch, seq_len, dtype=torch.long)
    token_type_ids[:, seq_len // 2 :] = 1
    mlm_labels = torch.full((batch, seq_len), -100)
    masked = min(MAX_MASKED.get(seq_len, round(0.15 * seq_len)), round(0.15 * seq_len))
    for row in range(batch):
        positions = torch.randperm(seq_len - 2, generator=generator)[:masked] + 1
        mlm_labels[row, positions] = input_ids[row, positions]
    sop_labels = torch.randint(0, 2, (batch,), generator=generator)
    return input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels, masked


def build_ours(config: ModelConfig) -> SqueezeBertForPretraining:
    torch.manual_seed(0)
    return SqueezeBertForPretraining(config).train()


def grouped_pointwise_before(self: GroupedPointwise, x: torch.Tensor, reuse: str = "") -> torch.Tensor:
    """`GroupedPointwise.forward` before issue 17: a batched GEMM into [g, T, c_out/g], then a copy."""
    weight = self.weight.squeeze(-1)  # [c_out, c_in/g]
    if self.groups == 1:
        return F.linear(x, weight, self.bias)
    *lead, c_in = x.shape
    c_out = weight.shape[0]
    grouped = x.reshape(-1, self.groups, c_in // self.groups).transpose(0, 1)  # [g, T, c_in/g]
    out = torch.baddbmm(self.bias.view(self.groups, 1, c_out // self.groups), grouped,
                        weight.view(self.groups, c_out // self.groups, -1).transpose(1, 2))  # [g, T, c_out/g]
    return out.transpose(0, 1).reshape(*lead, c_out)


def self_attention_before(self: SelfAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`SelfAttention.forward` before issue 17: q, k and v by three grouped GEMMs of the same input."""
    n, w, c = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:  # [N, W, C] -> [N, H, W, C/H]
        return t.view(n, w, self.heads, c // self.heads).transpose(1, 2)

    context = attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), mask,
                        self.dropout_prob, self.training)
    return context.transpose(1, 2).reshape(n, w, c)


def use_formulation_before(model: SqueezeBertForPretraining) -> SqueezeBertForPretraining:
    """`model` running the formulation before issue 17 (bound per instance: other models keep theirs)."""
    for module in model.modules():
        if isinstance(module, GroupedPointwise):
            module.forward = types.MethodType(grouped_pointwise_before, module)
        elif isinstance(module, SelfAttention):
            module.forward = types.MethodType(self_attention_before, module)
    return model


def build_variant(name: str, config: ModelConfig):
    """(model, optimizer, step function) of a variant; every variant starts from the same weights."""
    if name == "transformers":
        hf, hf_sop = build_transformers(config, build_ours(config))
        return hf, lamb(list(hf.parameters()) + list(hf_sop.parameters())), \
            lambda optimizer, batch, bf16: step_transformers(hf, hf_sop, optimizer, batch, bf16)
    model = build_ours(dataclasses.replace(config, compile=name == "compiled"))
    if name == "before":
        use_formulation_before(model)
    return model, lamb(model.parameters()), lambda optimizer, batch, bf16: step_ours(model, optimizer, batch, bf16)


def build_transformers(config: ModelConfig, ours: SqueezeBertForPretraining | None = None):
    """transformers' model and a linear SOP head, with `ours`' weights when given."""
    from transformers import SqueezeBertConfig, SqueezeBertForMaskedLM

    values = {k: v for k, v in transformers_config(config).items() if k != "architectures"}
    torch.manual_seed(0)
    hf = SqueezeBertForMaskedLM(SqueezeBertConfig(**values)).train()
    hf_sop = nn.Linear(config.hidden_size, 2)
    if ours is not None:
        hf.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("sop_")}, strict=False)
        hf_sop.load_state_dict({"weight": ours.sop_classifier.weight.detach(),
                                "bias": ours.sop_classifier.bias.detach()})
    return hf, hf_sop


def lamb(parameters):
    return torch_optimizer.Lamb(parameters, lr=2.5e-3, weight_decay=0.01)


def step_ours(model, optimizer, batch, bf16):
    input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels, _ = batch
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels).loss
    loss.backward()
    optimizer.step()
    return loss.item()


def step_transformers(model, sop_head, optimizer, batch, bf16):
    input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels, _ = batch
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs = model.transformer(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        logits = model.cls(outputs.last_hidden_state)
        mlm_loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), mlm_labels.view(-1), ignore_index=-100)
        loss = mlm_loss + F.cross_entropy(sop_head(outputs.pooler_output).float(), sop_labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def matmul_rate(threads: int, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def time_variants(config, shape, steps, bf16, variants):
    """Median step time of each variant, and the compiled variant's warm-up time (its compile)."""
    seq_len, batch_size = shape
    built = {name: build_variant(name, config) for name in variants}
    batch = make_batch(config, batch_size, seq_len)
    warmup = {}
    for name, (_, optimizer, step) in built.items():  # allocator, kernels, optimizer state; the compile
        start = time.perf_counter()
        step(optimizer, batch, bf16)
        warmup[name] = time.perf_counter() - start
    times = {name: [] for name in variants}
    for _ in range(steps):
        for name, (_, optimizer, step) in built.items():
            start = time.perf_counter()
            step(optimizer, batch, bf16)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, warmup, batch[-1]


def peak_memory_child(which: str, seq_len: int, batch_size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    config = ModelConfig.preset("squeezebert-base")
    batch = make_batch(config, batch_size, seq_len)
    if which == "transformers":
        hf, hf_sop = build_transformers(config, None)  # its own init: the process never holds our model
        optimizer = lamb(list(hf.parameters()) + list(hf_sop.parameters()))
        for _ in range(2):
            step_transformers(hf, hf_sop, optimizer, batch, False)
    else:
        model = build_ours(config)
        if which == "before":
            use_formulation_before(model)
        optimizer = lamb(model.parameters())
        for _ in range(2):
            step_ours(model, optimizer, batch, False)
    print(json.dumps({"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_memory(which: str, seq_len: int, batch_size: int, threads: int) -> float:
    output = subprocess.run(
        [sys.executable, __file__, "--memory-child", which, f"{seq_len}x{batch_size}", "--threads", str(threads)],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["max_rss_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["128x8", "128x32", "512x2"], help="SEQxBATCH")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--bf16", action="store_true", help="also time all under CPU bf16 autocast at 128x8")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        seq_len, batch_size = map(int, args.memory_child[1].split("x"))
        peak_memory_child(args.memory_child[0], seq_len, batch_size, args.threads)
        return
    torch.set_num_threads(args.threads)
    config = ModelConfig.preset("squeezebert-base")
    variants = [name for name in VARIANTS if name in args.variants]
    rate = matmul_rate(args.threads)
    print(f"fp32 matmul rate, {args.threads} threads: {rate / 1e9:,.0f} GFLOP/s; torch {torch.__version__}")
    # Memory first, while this process is small: a child's max RSS starts from its parent's at fork.
    measured = [name for name in variants if name != "compiled"] if not args.no_memory else []
    memory = {}
    for shape_text in args.shapes:
        seq_len, batch_size = map(int, shape_text.split("x"))
        for name in measured:
            memory[shape_text, name] = peak_memory(name, seq_len, batch_size, args.threads)
    print("samples/s (median step):")
    print(f"{'shape':>8} {'precision':>9} " + " ".join(f"{name:>12}" for name in variants)
          + f" {'fused/before':>12} {'compiled/fused':>14} {'fused/hf':>8} {'fused GFLOP/s':>13} {'of matmul':>9}")
    ratios_128, notes = [], []
    runs = [(shape, False) for shape in args.shapes] + ([("128x8", True)] if args.bf16 else [])
    for shape_text, bf16 in runs:
        seq_len, batch_size = map(int, shape_text.split("x"))
        times, warmup, masked = time_variants(config, (seq_len, batch_size), args.steps, bf16, variants)
        rates = {name: batch_size / seconds for name, seconds in times.items()}

        def ratio(a: str, b: str, width: int) -> str:
            return f"{rates[a] / rates[b]:>{width}.2f}" if a in rates and b in rates else " " * width

        flops = ""
        if "fused" in times:
            achieved = flops_per_token(config, seq_len, masked) * seq_len * batch_size / times["fused"]
            flops = f"{achieved / 1e9:>13.1f} {achieved / rate:>9.0%}"
        if seq_len == 128 and not bf16 and "fused" in rates and "transformers" in rates:
            ratios_128.append(rates["fused"] / rates["transformers"])
        precision = "bf16" if bf16 else "fp32"
        print(f"{shape_text:>8} {precision:>9} " + " ".join(f"{rates[name]:>12.2f}" for name in variants)
              + f" {ratio('fused', 'before', 12)} {ratio('compiled', 'fused', 14)} {ratio('fused', 'transformers', 8)}"
              + f" {flops}")
        if "compiled" in warmup:
            notes.append(f"compiled, {shape_text} {precision}: first step {warmup['compiled']:.0f} s (the compile)")
    for note in notes:
        print(note)
    if memory:
        print("peak MiB (max RSS of 2 steps in a subprocess): " + "; ".join(
            f"{shape} {name} {mib:,.0f}" for (shape, name), mib in memory.items()))
    if ratios_128:
        print(f"samples/s ratio fused / transformers at seq 128 (fp32): {min(ratios_128):.2f} "
              "(lowest over batch sizes)")


if __name__ == "__main__":
    main()
