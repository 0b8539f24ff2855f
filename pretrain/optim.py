"""LAMB with BERT's weight-decay rule, and the per-phase learning-rate schedule.

LAMB is torch-optimizer's `Lamb`, handed to DeepSpeed as a client optimizer: DeepSpeed's own "Lamb" is a
CUDA-only fused op, and under ZeRO 1/2 DeepSpeed would flatten each parameter group into one tensor, so
LAMB's trust ratio would be computed per group instead of per layer (`config.OptimizerConfig` rejects it).
"""

from __future__ import annotations

import torch
import torch_optimizer
from torch import nn

from .config import OptimizerConfig, PhaseConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; biases and LayerNorm parameters without (BERT's rule).

    Tied parameters (the MLM decoder is the word-embedding matrix) appear once."""
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen or not parameter.requires_grad:
                continue
            seen.add(id(parameter))
            if name == "bias" or isinstance(module, nn.LayerNorm):
                no_decay.append(parameter)
            else:
                decay.append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_lamb(model: nn.Module, config: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    return torch_optimizer.Lamb(
        parameter_groups(model, config.weight_decay), lr=lr, betas=(config.beta1, config.beta2), eps=config.eps
    )


def learning_rate(phase: PhaseConfig, step: int) -> float:
    """LR of optimizer step `step` (0-based, within the phase): linear warmup from 0 to the peak over
    `warmup_steps`, then linear decay to `end_lr` at the last step."""
    warmup = phase.warmup_steps
    if step < warmup:
        return phase.peak_lr * (step + 1) / warmup
    decay_steps = max(phase.steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    return phase.peak_lr + (phase.end_lr - phase.peak_lr) * progress


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
