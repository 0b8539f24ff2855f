"""Mixed precision that keeps fp32 where it matters.

Master weights, gradients, their accumulation over micro-steps, their all-reduce and LAMB's state are fp32
in every mode. bf16 and fp16 exist only inside the forward and backward compute, through
`torch.autocast`, on CUDA as on CPU. DeepSpeed's own bf16/fp16 modes are not used: with a client
optimizer, DeepSpeed 0.19.8 wraps it in an optimizer that accumulates and all-reduces the gradients in
bf16 (0.37% relative error over 8 micro-steps, 1.55% over 256) and keeps only bf16 weights; older
releases flatten each parameter group, which breaks LAMB's per-layer trust ratio.

fp16 needs loss scaling (its gradients underflow): `DynamicLossScale` multiplies the loss, LAMB divides the
gradients back inside its update, and a step whose gradients overflow is skipped and the scale halved.
It is written here rather than taken from `torch.amp.GradScaler` because DeepSpeed's engine runs the
backward and the step; the scaler's bookkeeping is a few lines, and the overflow test is the trainer's
non-finite check, which it needs anyway.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

import torch

from formats.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(UserError):
    """A precision this device cannot run; the message names the key."""


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (Ampere and later): V100 and T4 only emulate it, far slower than fp16."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto`: bf16 where the GPU has native bf16, else fp16 on a GPU, else fp32 (CPUs)."""
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if requested == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise PrecisionError(f"precision = 'bf16': {torch.cuda.get_device_name(device)} has no native bf16; "
                             "use precision = 'fp16' (or 'auto', which picks it)")
    return requested


def common_precision(choices: list) -> str:
    """The one precision of a run from every rank's own resolution (an error where a rank could not resolve
    it): ranks that computed in different precisions would scale their losses differently and their replicas
    would drift apart. `auto` on a job that mixes GPUs with and without native bf16 is fp16 everywhere."""
    errors = [choice for choice in choices if isinstance(choice, Exception)]
    if errors:
        raise PrecisionError(str(errors[0]))
    return "fp16" if "fp16" in choices else choices[0]


def resolve_on_every_rank(requested: str, device: torch.device) -> str:
    """`resolve_precision` agreed by all ranks: each asks its own GPU, and every rank gets the same answer or
    the same error (never one rank raising while its peers wait). Collective."""
    import torch.distributed as dist

    try:
        mine = resolve_precision(requested, device)
    except PrecisionError as error:
        mine = error
    choices = [mine]
    if dist.is_initialized():
        choices = [None] * dist.get_world_size()
        dist.all_gather_object(choices, mine)
    return common_precision(choices)


def make_deterministic(mode: str) -> None:
    """`determinism = "strict"` (see the config key): call before the first CUDA matmul of the process, since
    cuBLAS reads its workspace setting when it creates its handle."""
    if mode != "strict":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's documented deterministic setting
    torch.use_deterministic_algorithms(True)  # an op with no deterministic kernel raises instead of varying
    torch.backends.cudnn.benchmark = False


def compute_context(device: torch.device, precision: str, determinism: str = "default"):
    """The forward's context: autocast (below), and in strict mode SDPA's math kernel, whose backward is
    deterministic. With a boolean mask FlashAttention is ruled out and SDPA would take the memory-efficient
    kernel, whose backward accumulates with atomics."""
    stack = contextlib.ExitStack()
    stack.enter_context(autocast(device, precision))
    if determinism == "strict":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack


def autocast(device: torch.device, precision: str):
    """The forward's context: autocast to bf16/fp16 with fp32 weights, or nothing for fp32."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


@dataclass
class DynamicLossScale:
    """fp16 loss scaling: halve on overflow (the step is skipped), double after `growth_interval` good steps.

    The defaults are DeepSpeed's and apex's (initial 2^16, window 1000, never below 1)."""

    scale: float = 2.0**16
    growth_interval: int = 1000
    minimum: float = 1.0
    good_steps: int = 0

    def update(self, finite: bool) -> None:
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= 2.0
                self.good_steps = 0
        else:
            self.scale = max(self.scale / 2.0, self.minimum)
            self.good_steps = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, values: dict) -> None:
        scale, good = values.get("scale"), values.get("good_steps")
        if not isinstance(scale, (int, float)) or scale < self.minimum or not isinstance(good, int) or good < 0:
            raise PrecisionError(f"checkpoint: bad loss-scale state {values!r}")
        self.scale, self.good_steps = float(scale), good
