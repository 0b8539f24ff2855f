"""One pretraining step of the full-size model: this project's against transformers', side by side.

    python bench/bench_model_step.py [--shapes 128x8 128x32 512x2] [--steps 3] [--bf16] [--threads 2]

A step is forward + backward + a torch-optimizer LAMB step, fp32 on the CPU. The reference is
transformers' `SqueezeBertForMaskedLM` (logits at every position, loss over the masked ones) plus a linear
SOP head on its pooled output, with the same weights and the same batch. The two alternate step by step
in one process so machine noise hits both alike; the median step time of each is reported. Peak memory
(max RSS) of each is measured in its own subprocess. Achieved FLOP/s uses `flops_per_token` (the useful
work: logits at masked positions only) against the measured fp32 matmul rate of the machine.
The last line is the samples/s ratio at sequence length 128.
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
import torch.nn.functional as F
import torch_optimizer
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pretrain.model import ModelConfig, flops_per_token  # noqa: E402
from pretrain.model_files import transformers_config  # noqa: E402
from pretrain.pretraining_model import SqueezeBertForPretraining  # noqa: E402

MAX_MASKED = {128: 20, 512: 80}  # the paper's caps per sequence


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


def build_models(config: ModelConfig):
    ours = build_ours(config)
    return (ours, *build_transformers(config, ours))


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


def time_pair(config, shape, steps, bf16):
    seq_len, batch_size = shape
    ours, hf, hf_sop = build_models(config)
    ours_opt, hf_opt = lamb(ours.parameters()), lamb(list(hf.parameters()) + list(hf_sop.parameters()))
    batch = make_batch(config, batch_size, seq_len)
    step_ours(ours, ours_opt, batch, bf16)  # warm-up: allocator, kernels, optimizer state
    step_transformers(hf, hf_sop, hf_opt, batch, bf16)
    ours_times, hf_times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        step_ours(ours, ours_opt, batch, bf16)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        step_transformers(hf, hf_sop, hf_opt, batch, bf16)
        hf_times.append(time.perf_counter() - start)
    return statistics.median(ours_times), statistics.median(hf_times), batch[-1]


def peak_memory_child(which: str, seq_len: int, batch_size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    config = ModelConfig.preset("squeezebert-base")
    batch = make_batch(config, batch_size, seq_len)
    if which == "ours":
        ours = build_ours(config)
        optimizer = lamb(ours.parameters())
        for _ in range(2):
            step_ours(ours, optimizer, batch, False)
    else:
        hf, hf_sop = build_transformers(config, None)  # its own init: the process never holds our model
        optimizer = lamb(list(hf.parameters()) + list(hf_sop.parameters()))
        for _ in range(2):
            step_transformers(hf, hf_sop, optimizer, batch, False)
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
    parser.add_argument("--bf16", action="store_true", help="also time both under CPU bf16 autocast at 128x8")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        seq_len, batch_size = map(int, args.memory_child[1].split("x"))
        peak_memory_child(args.memory_child[0], seq_len, batch_size, args.threads)
        return
    torch.set_num_threads(args.threads)
    config = ModelConfig.preset("squeezebert-base")
    rate = matmul_rate(args.threads)
    print(f"fp32 matmul rate, {args.threads} threads: {rate / 1e9:,.0f} GFLOP/s; torch {torch.__version__}")
    print(f"{'shape':>8} {'precision':>9} {'ours samples/s':>15} {'transformers':>13} {'ratio':>6} "
          f"{'ours GFLOP/s':>13} {'of matmul':>9} {'ours MiB':>9} {'hf MiB':>7}")
    # Memory first, while this process is small: a child's max RSS starts from its parent's at fork.
    memory = {}
    if not args.no_memory:
        for shape_text in args.shapes:
            seq_len, batch_size = map(int, shape_text.split("x"))
            memory[shape_text] = (f"{peak_memory('ours', seq_len, batch_size, args.threads):,.0f}",
                                  f"{peak_memory('hf', seq_len, batch_size, args.threads):,.0f}")
    ratios_128 = []
    runs = [(shape, False) for shape in args.shapes] + ([("128x8", True)] if args.bf16 else [])
    for shape_text, bf16 in runs:
        seq_len, batch_size = map(int, shape_text.split("x"))
        ours_time, hf_time, masked = time_pair(config, (seq_len, batch_size), args.steps, bf16)
        flops = flops_per_token(config, seq_len, masked) * seq_len * batch_size / ours_time
        peak = memory.get(shape_text, ("", "")) if not bf16 else ("", "")
        ratio = hf_time / ours_time
        if seq_len == 128 and not bf16:
            ratios_128.append(ratio)
        print(f"{shape_text:>8} {'bf16' if bf16 else 'fp32':>9} {batch_size / ours_time:>15.2f} "
              f"{batch_size / hf_time:>13.2f} {ratio:>6.2f} {flops / 1e9:>13.1f} {flops / rate:>9.0%} "
              f"{peak[0]:>9} {peak[1]:>7}")
    if ratios_128:
        print(f"samples/s ratio ours / transformers at seq 128 (fp32): {min(ratios_128):.2f} (lowest over batch sizes)")


if __name__ == "__main__":
    main()
