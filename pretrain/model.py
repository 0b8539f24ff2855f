"""The SqueezeBERT encoder (Iandola et al., 2020), one readable file.

The math is transformers' `modeling_squeezebert.py`: BERT-base whose position-wise fully-connected layers
are grouped 1x1 convolutions. The layout is not: transformers keeps activations as [N, C, W] for
`nn.Conv1d` and permutes around every LayerNorm and attention; here activations stay [N, W, C]
(channels last) and a grouped 1x1 convolution is a batched matmul over the groups, which is the same
arithmetic with no permutes and runs ~1.5x faster on CPU. The GEMMs read and write strided views, so no
activation is copied in or out of a group-major layout (`grouped_pointwise`), and q, k and v come from one
GEMM (`SelfAttention`). Attention is `scaled_dot_product_attention` (a fused kernel where the platform has
one), on CPU in fp32 one example at a time with the [H, W, W] scores in cache (`AttentionByExample`); dropout
masks on CPU come from a faster sampler (`dropout_keep_mask`). `ModelConfig.compile` compiles the layers.

Parameter names and shapes are transformers' (conv weights stay [C_out, C_in / groups, 1]), so a state dict
moves between the two with a prefix and nothing else: see `pretrain.model_files`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib.resources
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from formats.errors import UserError

# Shipped inside the package (package data), so editable and wheel installs find them the same way.
PRESETS = importlib.resources.files("pretrain") / "presets"


# Inductor settings of `ModelConfig.compile`: random ops call torch's own (so dropout draws eager's masks from the
# seeded generator, and a recomputation replays them) and no kernel is chosen by timing where it changes numerics.
COMPILE_OPTIONS = {"fallback_random": True, "deterministic": True}


class ConfigError(UserError):
    """A model config that cannot work; the message names the field."""


@dataclass
class ModelConfig:
    """SqueezeBERT hyper-parameters, with the names of transformers' `SqueezeBertConfig`."""

    vocab_size: int = 30528  # BERT's 30522 rounded up to a multiple of 64 for matmul tiles
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    q_groups: int = 4  # the paper's grouping: q/k/v 4, post-attention 1, intermediate 4, output 4
    k_groups: int = 4
    v_groups: int = 4
    post_attention_groups: int = 1
    intermediate_groups: int = 4
    output_groups: int = 4
    hidden_act: str = "gelu"  # exact (erf) GELU, as transformers' "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512  # phase 2 trains at 512
    type_vocab_size: int = 2  # segments A and B
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02  # BERT's normal(0, 0.02)
    pad_token_id: int = 0
    # Activation checkpointing, a training-time switch that changes no weight: keep only each encoder layer's
    # input through the forward pass and recompute the layer's activations in the backward pass. One more
    # forward of the encoder per micro-step (+30% FLOPs of forward + backward at length 512) buys a much
    # smaller activation peak, for larger micro-batches in phase 2. Dropout draws the same masks when
    # recomputed (the RNG state is replayed), so losses and gradients are unchanged. Not exported to
    # transformers' config.json (`model_files.TRANSFORMERS_CONFIG_KEYS`).
    gradient_checkpointing: bool = False
    # torch.compile (inductor) of every encoder layer, a switch that changes no weight. Each layer is compiled in
    # place at the first forward (`nn.Module.compile`), so parameter names, state dicts, checkpoints, the export
    # and the parity with transformers are unchanged. Kept (tested on CPU): the same seed gives the same losses
    # and gradients bit for bit, within a process and across processes (the same kernels are generated, and
    # `COMPILE_OPTIONS` stops inductor choosing kernels by timing), so a resumed run is bit-identical to an
    # uninterrupted one, and every rank runs a micro-batch with the same kernels; dropout draws eager's masks
    # from the seeded generator (on CUDA with aten's dropout kernels, not fused ones), and activation
    # checkpointing recomputes bit-identically. Dropped: bit equality with eager (fused kernels round
    # differently: gradients within 1e-4 of their largest in fp32), so switching compile on or off within a run
    # breaks its bit-identical resume. The first forward of a shape compiles (tens of seconds on 2 CPU cores; a
    # second sequence length compiles one dynamic-shape graph for all later ones). Needs a C++ compiler on CPU,
    # Triton on CUDA. Not exported to transformers' config.json.
    compile: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        for name in ("q_groups", "k_groups", "v_groups", "post_attention_groups", "intermediate_groups",
                     "output_groups"):
            groups = getattr(self, name)
            wide = name in ("intermediate_groups", "output_groups")
            channels = [self.hidden_size] + ([self.intermediate_size] if wide else [])
            if groups < 1 or any(c % groups for c in channels):
                raise ConfigError(f"model.{name} {groups} must divide the channels {channels}")
        if self.hidden_act != "gelu":
            raise ConfigError(f"model.hidden_act {self.hidden_act!r}: only 'gelu' (SqueezeBERT's) is implemented")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"model.pad_token_id {self.pad_token_id} is outside the vocabulary")
        if not isinstance(self.gradient_checkpointing, bool):  # "false" from a config file would read as on
            raise ConfigError(f"model.gradient_checkpointing {self.gradient_checkpointing!r}: must be true or false")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"model.compile {self.compile!r}: must be true or false")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "model config") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown keys {unknown}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        resource = PRESETS / f"{name}.json"
        if not resource.is_file():
            known = sorted(r.name[:-5] for r in PRESETS.iterdir() if r.name.endswith(".json"))
            raise ConfigError(f"model preset {name!r} not found; known presets: {known}")
        return cls.from_dict(json.loads(resource.read_text(encoding="utf-8")), f"preset {name}")


class GroupedPointwise(nn.Module):
    """A 1x1 `Conv1d(c_in, c_out, groups)` applied to channels-last input [..., c_in].

    Weight shape [c_out, c_in / groups, 1] as nn.Conv1d's, so checkpoints match transformers'."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(c_out, c_in // groups, 1))
        self.bias = nn.Parameter(torch.empty(c_out))

    def forward(self, x: torch.Tensor, reuse: str = "") -> torch.Tensor:
        return grouped_pointwise(x, self.weight.squeeze(-1), self.bias, self.groups, reuse)


# Without autograd (evaluation, inference) the large outputs that the layer itself consumes (q/k/v, the
# intermediate, the convolutions before LayerNorm) are written into buffers kept for one forward of the model and
# reused by every layer: a fresh tensor this large is newly mapped by glibc at each allocation, and its page
# faults cost more than the pass that writes it (measured: the bias copy into fresh outputs was 18% of a batch-32
# forward at length 128, most of it page faults). Per forward call (a context variable), so concurrent forwards in
# other threads each have their own; a forward hook that keeps such an output sees it overwritten by the next layer.
_REUSED_OUTPUTS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("squeezebert_reused_outputs",
                                                                             default=None)


@contextlib.contextmanager
def reused_outputs():
    """The scope of one model forward in which `output_buffer` reuses outputs (no effect under autograd)."""
    token = _REUSED_OUTPUTS.set({})
    try:
        yield
    finally:
        _REUSED_OUTPUTS.reset(token)


def reusing(reuse: str) -> bool:
    """Whether the output named `reuse` goes into the forward's buffer (inside `reused_outputs`, no autograd)."""
    return bool(reuse) and _REUSED_OUTPUTS.get() is not None and not torch.is_grad_enabled()


def output_buffer(reuse: str, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialized [rows, cols] output like `like`: the forward's buffer named `reuse` when `reusing(reuse)`,
    else a new tensor."""
    if not reusing(reuse):
        return like.new_empty(rows, cols)
    buffers = _REUSED_OUTPUTS.get()
    key = (reuse, rows, cols, like.dtype, like.device)
    if key not in buffers:
        buffers[key] = like.new_empty(rows, cols)
    return buffers[key]


def grouped_pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                      reuse: str = "") -> torch.Tensor:
    """x [..., c_in] times a grouped weight [c_out, c_in / groups] plus bias [c_out]: [..., c_out], contiguous.

    Group j maps input channels [j * c_in/g, (j+1) * c_in/g) to output channels [j * c_out/g, ...): a batched
    GEMM over the groups whose operands are strided views of x and of the output (`GroupedMatmul`), so no
    activation is copied into or out of a group-major layout, forward or backward. `reuse` names the output's
    buffer for `output_buffer` (without autograd only)."""
    if groups == 1:
        # `out=` has no autograd and autocast does not cast it: F.linear in those cases
        if not torch.compiler.is_compiling() and reusing(reuse) and not torch.is_autocast_enabled(x.device.type):
            flat = x.reshape(-1, x.shape[-1])
            out = output_buffer(reuse, flat.shape[0], weight.shape[0], flat)
            return torch.addmm(bias, flat, weight.t(), out=out).view(*x.shape[:-1], weight.shape[0])
        return F.linear(x, weight, bias)
    if torch.compiler.is_compiling():
        # Dynamo does not trace an `out=` into a strided view (a graph break); inductor picks the layouts itself
        # and folds the permute into the kernel that reads the result.
        *lead, c_in = x.shape
        c_out = weight.shape[0]
        grouped = x.reshape(-1, groups, c_in // groups).transpose(0, 1)  # [g, T, c_in/g]
        out = torch.baddbmm(bias.view(groups, 1, c_out // groups), grouped,
                            weight.view(groups, c_out // groups, -1).transpose(1, 2))  # [g, T, c_out/g]
        return out.transpose(0, 1).reshape(*lead, c_out)
    return GroupedMatmul.apply(x, weight, bias, groups, reuse)


class GroupedMatmul(torch.autograd.Function):
    """`grouped_pointwise` in eager mode. Each GEMM of the batch reads its group of x in place ([T, c_in] seen
    as [g, T, c_in/g]: row stride c_in) and writes its group of the output in place ([T, c_out] seen as
    [g, T, c_out/g]), through `out=`, which autograd does not differentiate: hence the explicit backward, which
    writes the input's gradient the same way. BLAS and cuBLAS take the strides as leading dimensions (cuBLAS:
    one strided-batched GEMM, ldc = c_out, batch stride c_out/g), so no pass over an activation is spent on a
    layout change. Autocast does not cast `out=` ops: the cast is done here, as autocast does for baddbmm."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                reuse: str = "") -> torch.Tensor:
        ctx.dtypes = x.dtype, weight.dtype, bias.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        *lead, c_in = x.shape
        c_out = weight.shape[0]
        flat = x.contiguous().view(-1, c_in)  # [T, c_in]; every input this model makes is contiguous
        # Under autograd a tensor of its own, not a view: the caller may change it in place (`ConvLayerNorm`).
        out = (output_buffer(reuse, flat.shape[0], c_out, flat).view(*lead, c_out) if reusing(reuse)
               else flat.new_empty(*lead, c_out))
        torch.baddbmm(bias.view(groups, 1, c_out // groups),  # the GEMM accumulates onto the bias (beta = 1)
                      by_group(flat, groups), weight.view(groups, c_out // groups, -1).transpose(1, 2),
                      out=by_group(out.view(-1, c_out), groups))
        ctx.groups, ctx.lead = groups, lead
        ctx.save_for_backward(flat, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        flat, weight = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        groups, c_out = ctx.groups, weight.shape[0]
        grad = grad.contiguous().view(-1, c_out).to(flat.dtype)  # [T, c_out]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(flat)
            torch.bmm(by_group(grad, groups), weight.view(groups, c_out // groups, -1), out=by_group(grad_x, groups))
            grad_x = grad_x.view(*ctx.lead, flat.shape[1]).to(x_dtype)
        if ctx.needs_input_grad[1]:
            # x^T grad, [g, c_in/g, c_out/g]: this operand order reads both strided views at full speed (the
            # transposed-gradient order runs at half speed on MKL); the small result is transposed afterwards.
            grad_weight = torch.bmm(by_group(flat, groups).transpose(1, 2), by_group(grad, groups))
            grad_weight = grad_weight.transpose(1, 2).reshape(c_out, -1).to(weight_dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0).to(bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None


def by_group(flat: torch.Tensor, groups: int) -> torch.Tensor:
    """[T, C] seen as [groups, T, C / groups] without a copy (row stride C)."""
    return flat.view(flat.shape[0], groups, -1).transpose(0, 1)


def dropout_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A boolean mask of x's shape, each element True with probability 1 - p.

    On CPU, torch's Bernoulli sampler is a tenth of this model's training step at length 128 and a sixth
    at 512 (measured, torch 2.13, 2 threads: 44 ms for one 2x12x512x512 attention-probability tensor).
    Here one draw of the default generator (seeded by `torch.manual_seed`, so a seed, a resumed generator
    state and activation checkpointing's replay give the same masks) seeds numpy's SFC64, a small-state
    generator of the PractRand/BigCrush-passing kind, whose 64-bit words are cut into four uniform 16-bit
    lanes. Its raw output is 4x the speed of the default generator's mt19937 (1.7 vs 6.6 ms for 786,432
    words; the masks were 4% of a SqueezeBERT-base finetuning step with mt19937). p is rounded to a multiple
    of 1/65536."""
    if x.device.type != "cpu":
        return torch.rand(x.shape, device=x.device) >= p
    return cpu_keep_mask(x.detach(), p)


# An operator of its own so that torch.compile keeps it whole (Dynamo cannot trace the in-place `random_`). Its
# `nondeterministic_seeded` tag and inductor's fallback_random make compiled layers call it in program order on
# the default generator, so they draw eager's masks. It takes the tensor to be masked, not just its shape, so
# that no common-subexpression pass merges two draws of the same shape into one.
@torch.library.custom_op("squeezebert::cpu_keep_mask", mutates_args=(), tags=torch.Tag.nondeterministic_seeded)
def cpu_keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    count = like.numel()
    seed = int(torch.randint(2**62, (), dtype=torch.int64))  # the default generator's one draw for this mask
    words = np.random.SFC64(seed).random_raw((count + 3) // 4)  # raw stream: numpy keeps it stable (NEP 19)
    # numpy's comparison: 2x the speed of torch's on int16 lanes (0.21 vs 0.47 ms for 1.6M, 2 threads)
    keep = np.greater_equal(words.view(np.int16)[:count], round(p * 65536) - 32768)
    return torch.from_numpy(keep).view(like.shape)


@cpu_keep_mask.register_fake
def _(like: torch.Tensor, p: float) -> torch.Tensor:
    return torch.empty(like.shape, dtype=torch.bool)


def dropout(x: torch.Tensor, p: float, training: bool, inplace_on_cpu: bool = False) -> torch.Tensor:
    """Inverted dropout (keep with probability 1 - p, scale by 1 / (1 - p)), as `F.dropout`. `inplace_on_cpu`:
    x itself is changed on CPU (for a tensor no backward reads: no new tensor, no pass to fill it), unless x is a
    view (`F.linear`'s output is one): autograd would then copy its base in and out (`CopySlices`), forward and
    backward, which costs more than a new tensor (measured: 2% of a finetuning step)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":  # accelerators have a fused dropout kernel
        return F.dropout(x, p, True)
    mask = byte_keep_mask(x, p)
    return cpu_dropout_(x.mul_(mask) if inplace_on_cpu and changes_in_place(x) else x.mul(mask), p)


def changes_in_place(x: torch.Tensor) -> bool:
    """Whether an in-place change of x costs no copy under autograd: x is not a view (autograd would copy its base
    in and out, `CopySlices`), or the code is being compiled (functionalized; `_is_view` would break the graph)."""
    return torch.compiler.is_compiling() or not x._is_view()


def byte_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """`dropout_keep_mask` read as bytes, forward and backward (autograd keeps the 1-byte mask): torch's CPU
    product of a float and a uint8 tensor is 2x the speed of `where(mask, x, 0)` and 3x of a product with the
    bool mask (measured at [16, 12, 128, 128], torch 2.13, 2 threads)."""
    return dropout_keep_mask(x, p).view(torch.uint8)


def cpu_dropout_(kept: torch.Tensor, p: float) -> torch.Tensor:
    """The 1 / (1 - p) of inverted dropout, in place on the kept values: F.dropout's arithmetic."""
    return kept.mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float,
              training: bool, scale: float | None = None, qkv: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax self-attention over [N, H, W, D]; `mask` [N, 1, 1, W] is True at real tokens (the keys that may be
    attended); `scale` multiplies q k^T (default 1 / sqrt(D); `SelfAttention` passes 1 with q already scaled by
    its weights). On CPU the output at padding positions may be 0 (`AttentionByExample`).
    `qkv`: the [N, W, H, 3, D] tensor that q, k and v are views of, when they are (their gradient is then
    written straight into its layout).

    On CPU in fp32 and fp64, `AttentionByExample`. Elsewhere `scaled_dot_product_attention` wherever it has a
    fused kernel for the case; on CPU with attention dropout (bf16, or compiled) it would fall back to its math
    path with the slow Bernoulli sampler, so that case is written out here with `dropout`'s mask (the same
    arithmetic)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dropout_p = dropout_p if training else 0.0
    if by_example(q) and q.shape[0] and (mask is None or (mask.dtype == torch.bool
                                                          and mask.shape == (q.shape[0], 1, 1, k.shape[2]))):
        keep_probabilities = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, qkv) if t is not None)
        keys = attended_keys(mask, k.shape[2])
        if keys is not None and q.shape[2] != k.shape[2]:  # not self-attention: every query, the bias over all keys
            keys = [-1] * q.shape[0]
        bias = padding_bias(mask, q.dtype) if keys is not None and min(keys) < 0 else None
        parts = (qkv,) if qkv is not None else (q, k, v)
        # [N, W, H, D] from the Function, so that the [N, H, W, D] view (and any view of it) is an ordinary one
        return AttentionByExample.apply(bias, keys, scale, dropout_p, keep_probabilities, *parts).transpose(1, 2)
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2))  # [N, H, W, W]
    if scale != 1.0:
        scores.mul_(scale)
    if mask is not None:  # in place, and added: the sum's backward passes the gradient on untouched
        scores.add_(padding_bias(mask, scores.dtype))
    probabilities = torch.softmax(scores, dim=-1)
    # `dropout` with its scale applied to the [N, H, W, D] result instead of the [N, H, W, W] probabilities.
    return cpu_dropout_(torch.matmul(probabilities.mul(byte_keep_mask(probabilities, dropout_p)), v), dropout_p)


def by_example(q: torch.Tensor) -> bool:
    """Whether `attention` runs `AttentionByExample`: on CPU in fp32 or fp64, eager."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu"))


def attended_keys(mask: torch.Tensor | None, keys: int) -> list[int] | None:
    """Per example of a key mask [N, 1, 1, W]: L when its keys are L real ones and then only padding (right
    padding, L > 0), else -1 (any other mask: the padding bias is added). None without a mask."""
    if mask is None:
        return None
    flat = mask.reshape(mask.shape[0], keys).numpy()  # a CPU mask (`by_example`); numpy: half torch's overhead
    lengths = flat.sum(1)
    prefix = (flat == (np.arange(keys) < lengths[:, None])).all(1) & (lengths > 0)
    return np.where(prefix, lengths, -1).tolist()


def qkv_views(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v [N, H, W, D] as views of the fused [N, W, H, 3, D] (`SelfAttention`)."""
    return tuple(t.transpose(1, 2) for t in qkv.unbind(3))


class AttentionByExample(torch.autograd.Function):
    """Softmax attention on CPU, one example at a time, forward and backward, with `dropout`'s masks.

    Batched over the whole batch, each pass over the [N, H, W, W] scores (the padding bias, softmax, the dropout
    product and their backward) streams tens of MB through memory, and the batched matmuls first copy q, k and v
    (strided views of the qkv GEMM's output, whose batch and head dimensions do not merge). One example's
    [H, W, W] (768 kB at W = 128) stays in a core's L2 cache from its q k^T to its product with v, each GEMM
    reads q, k and v in place (a head's rows are a strided matrix), and the gradients of q, k and v are written
    straight into the fused qkv layout (no stack of three).

    Self-attention over right-padded examples (L real tokens, then padding, as tokenizers and GLUE's padding to
    the max length give) computes the L x L block only, as variable-length attention kernels do: the padding
    keys' probabilities are exactly 0 in the masked computation (skipping them changes only the order of a
    softmax's sums; their gradients are 0 there too), and the padding queries' output is 0 here, as PyTorch's
    nested-tensor encoder gives, instead of an attention over the real keys that no real position ever reads
    (a padding position is only ever a key, and masked): every real position's output and every gradient are
    the same (tested against the masked computation). Any other mask (left padding, holes, no real token)
    is added as `padding_bias` over all W x W. Otherwise the arithmetic of `F.scaled_dot_product_attention`'s
    math path, within 1e-6 in fp32 (tested); the dropout mask is drawn for the whole [N, H, W, W] at once, as
    `dropout` draws it. Measured: `bench/bench_finetune.py`, BENCHMARKS.md.
    Inputs: bias [N, 1, 1, W] or None, `attended_keys`, scale, dropout_p (0: none), keep_probabilities (a
    backward will run), then either qkv [N, W, H, 3, D] or q, k, v [N, H, W, D] (self-attention: as many queries
    as keys when `attended_keys` has a length). Output: [N, W, H, D] (`attention` returns its [N, H, W, D] view)."""

    @staticmethod
    def forward(ctx, bias, keys, scale, dropout_p, keep_probabilities, *parts):
        q, k, v = qkv_views(parts[0]) if len(parts) == 1 else parts
        n, heads, w, d = q.shape
        out = q.new_empty(n, w, heads, d)
        keep = probabilities = None
        if dropout_p or keep_probabilities:
            probabilities = q.new_empty(n, heads, w, k.shape[2])
        if dropout_p:
            keep = byte_keep_mask(probabilities, dropout_p)
        scratch = q.new_empty(heads, w, k.shape[2])
        for i in range(n):
            rows, real = spans(keys, i, w, k.shape[2])
            scores = first(scratch if probabilities is None else probabilities[i], heads, rows, real)
            torch.bmm(q[i, :, :rows], k[i, :, :real].transpose(1, 2), out=scores)
            if scale != 1.0:
                scores.mul_(scale)
            if keys is not None and keys[i] < 0:
                scores.add_(bias[i])
            torch.softmax(scores, -1, out=scores)
            weights = scores if keep is None else scores.mul(keep[i, :, :rows, :real])
            context = torch.bmm(weights, v[i, :, :real])  # [H, rows, D]
            if dropout_p:
                context.mul_(1.0 / (1.0 - dropout_p))
            out[i, :rows].copy_(context.transpose(0, 1))
            if rows < w:
                out[i, rows:].zero_()  # the padding queries'
        if keep_probabilities:
            ctx.save_for_backward(probabilities, keep, *parts)
            ctx.keys, ctx.scale, ctx.dropout_p = keys, scale, dropout_p
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        probabilities, keep, *parts = ctx.saved_tensors
        grad = grad.transpose(1, 2)  # [N, H, W, D]
        fused = len(parts) == 1
        q, k, v = qkv_views(parts[0]) if fused else parts
        n, heads, w, d = q.shape
        if fused:
            grad_qkv = q.new_empty(n, w, heads, 3, d)
            grad_q, grad_k, grad_v = qkv_views(grad_qkv)
        else:
            grad_q, grad_k, grad_v = (torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
        dropout_scale = 1.0 / (1.0 - ctx.dropout_p)
        for i in range(n):
            rows, real = spans(ctx.keys, i, w, k.shape[2])
            p = first(probabilities[i], heads, rows, real)
            g = grad[i, :, :rows]  # [H, rows, D]
            g = g * dropout_scale if ctx.dropout_p else g
            kept = None if keep is None else keep[i, :, :rows, :real].to(p.dtype)  # one conversion for both products
            weights = p if kept is None else p.mul(kept)
            grad_v[i, :, :real].copy_(torch.bmm(weights.transpose(1, 2), g))
            grad_scores = torch.bmm(g, v[i, :, :real].transpose(1, 2))  # of the weights, then of the probabilities
            if kept is not None:
                grad_scores.mul_(kept)
            grad_scores = torch._softmax_backward_data(grad_scores, p, -1, p.dtype)
            if ctx.scale != 1.0:
                grad_scores.mul_(ctx.scale)
            grad_q[i, :, :rows].copy_(torch.bmm(grad_scores, k[i, :, :real]))
            grad_k[i, :, :real].copy_(torch.bmm(grad_scores.transpose(1, 2), q[i, :, :rows]))
            if rows < w:  # the padding queries' output is 0, whatever they are
                grad_q[i, :, rows:].zero_()
            if real < k.shape[2]:  # the padding keys' probabilities are 0
                grad_k[i, :, real:].zero_()
                grad_v[i, :, real:].zero_()
        return (None, None, None, None, None, *((grad_qkv,) if fused else (grad_q, grad_k, grad_v)))


def spans(keys: list[int] | None, i: int, queries: int, all_keys: int) -> tuple[int, int]:
    """Example i's (queries, keys) that `AttentionByExample` computes: its L real ones when right-padded
    (`attended_keys`), else all."""
    return (queries, all_keys) if keys is None or keys[i] < 0 else (keys[i], keys[i])


def first(buffer: torch.Tensor, heads: int, rows: int, keys: int) -> torch.Tensor:
    """The first heads * rows * keys elements of a contiguous [H, W, W] buffer as a contiguous [H, rows, keys]."""
    return buffer.view(-1)[: heads * rows * keys].view(heads, rows, keys)


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive form of a key mask: 0 where attended, the dtype's lowest value where not (exp of it, less
    the row's maximum, is 0: the same probabilities as filling the scores, a fully masked row included)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


class ConvLayerNorm(nn.Module):
    """Grouped pointwise conv, dropout, residual add, LayerNorm (transformers' ConvDropoutLayerNorm)."""

    def __init__(self, c_in: int, c_out: int, groups: int, config: ModelConfig) -> None:
        super().__init__()
        self.conv1d = GroupedPointwise(c_in, c_out, groups)
        self.layernorm = nn.LayerNorm(c_out, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # No backward reads the convolution's output or the dropout's (the dropout's keeps its mask), so both
        # dropout and the residual sum may change it in place; LayerNorm's output is new. Not a view: autograd
        # would copy its base in and out (see `dropout`).
        out = dropout(self.conv1d(x, reuse="before_layernorm"), self.dropout.p, self.training, inplace_on_cpu=True)
        if out.dtype != residual.dtype or (torch.is_grad_enabled() and (torch.compiler.is_compiling()
                                                                         or not changes_in_place(out))):
            return self.layernorm(out + residual)
        return self.layernorm(out.add_(residual))  # in place (see `ConvActivation`)


class ConvActivation(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.conv1d = GroupedPointwise(c_in, c_out, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # the backward needs GELU's input
            return F.gelu(self.conv1d(x))
        # Without autograd (evaluation, inference) in place: a fresh [T, C] costs its page faults on CPU (glibc
        # maps allocations this large anew each time), 13% of a batch-32 forward at length 128 (the same values).
        return torch.ops.aten.gelu_(self.conv1d(x, reuse="intermediate"))


class SelfAttention(nn.Module):
    """q, k and v of the same input in one grouped GEMM where the groups allow (`fuses_qkv`).

    The parameters stay transformers' three convolutions; their weights are interleaved at every forward
    (a [3C, C/g] copy, small next to the [T, 3C] output when the T tokens are many more than C/g) so that
    the GEMM's output [T, 3C] is [N, W, H, 3, D]: q, k and v of head h side by side. Each of q, k, v is then a strided
    view [N, H, W, D] (last dimension contiguous, which SDPA's fused kernels take), and the backward of that
    split stacks the three gradients straight into the GEMM's layout. One read of x, one autocast cast of it,
    one launch, instead of three of each."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.query = GroupedPointwise(hidden, hidden, config.q_groups)
        self.key = GroupedPointwise(hidden, hidden, config.k_groups)
        self.value = GroupedPointwise(hidden, hidden, config.v_groups)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.fuses_qkv = fuses_qkv(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n, w, c = x.shape
        head_size = c // self.heads
        # Attention's 1 / sqrt(D) is applied to q's weights and bias (a [C, C/g] product) instead of to the
        # [N, H, W, W] scores, forward and backward; for D a power of 4 (64: 1/8) the products are the same bits.
        scale = 1.0 / math.sqrt(head_size)
        weights = (self.query.weight * scale, self.key.weight, self.value.weight)
        biases = (self.query.bias * scale, self.key.bias, self.value.bias)
        if self.fuses_qkv:
            # Rows in (head, q/k/v, d) order; head h's rows lie in group h // (heads / g) of every part.
            weight = torch.stack([t.view(self.heads, head_size, -1) for t in weights], dim=1).view(3 * c, -1)
            bias = torch.stack([t.view(self.heads, head_size) for t in biases], dim=1).view(3 * c)
            qkv = grouped_pointwise(x, weight, bias, self.query.groups, "qkv").view(n, w, self.heads, 3, head_size)
            q, k, v = qkv_views(qkv)
        else:  # [N, W, C] -> [N, H, W, C/H] views; channel = head * C/H + d
            q, k, v = (grouped_pointwise(x, weight.squeeze(-1), bias, part.groups)
                       .view(n, w, self.heads, head_size).transpose(1, 2)
                       for weight, bias, part in zip(weights, biases, (self.query, self.key, self.value)))
        context = attention(q, k, v, mask, self.dropout_prob, self.training, scale=1.0,
                            qkv=qkv if self.fuses_qkv else None)
        return context.transpose(1, 2).reshape(n, w, c)


def fuses_qkv(config: ModelConfig) -> bool:
    """q, k and v share one GEMM when they have the same groups and no head straddles two groups (a head's
    channels are then contiguous in the fused output). Otherwise three GEMMs, each output already [N, W, C]."""
    groups = config.q_groups
    head_size = config.hidden_size // config.num_attention_heads
    return config.k_groups == config.v_groups == groups and (config.hidden_size // groups) % head_size == 0


class SqueezeBertLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.attention = SelfAttention(config)
        self.post_attention = ConvLayerNorm(hidden, hidden, config.post_attention_groups, config)
        self.intermediate = ConvActivation(hidden, inner, config.intermediate_groups)
        self.output = ConvLayerNorm(inner, hidden, config.output_groups, config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.post_attention(self.attention(x, mask), x)
        return self.output(self.intermediate(attended), attended)


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        summed = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
                  + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(summed))


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SqueezeBertLayer(config) for _ in range(config.num_hidden_layers))


class Pooler(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # the [CLS] position


class SqueezeBertModel(nn.Module):
    """Embeddings, encoder layers and pooler: transformers' `SqueezeBertModel` (its `transformer.` prefix)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)
        self.layers_compiled = False

    def compile_layers(self) -> None:
        """Compile every encoder layer in place (see `ModelConfig.compile`): done at the first forward with
        `config.compile` set, so a switch set after construction (`model_overrides` on a loaded model) counts."""
        for layer in self.encoder.layers:
            layer.compile(options=COMPILE_OPTIONS)
        self.layers_compiled = True

    def forward(
        self,
        input_ids: torch.Tensor,  # [N, W]
        attention_mask: torch.Tensor | None = None,  # [N, W], 1 = token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # [N, W], 0 = segment A, 1 = segment B
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (hidden states [N, W, C], pooled [CLS] output [N, C])."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None:
            # Keys that are padding get no attention; a boolean mask lets SDPA pick a fused kernel.
            mask = attention_mask.bool()[:, None, None, :]  # [N, 1, 1, W]
        if self.config.compile and not self.layers_compiled:
            self.compile_layers()
        # Without gradients (evaluation, inference) there is no backward pass to recompute for.
        recompute = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        with reused_outputs() if not torch.is_grad_enabled() else contextlib.nullcontext():
            hidden = self.run_layers(hidden, mask, recompute)
        return hidden, self.pooler(hidden)

    def run_layers(self, hidden: torch.Tensor, mask: torch.Tensor | None, recompute: bool) -> torch.Tensor:
        for layer in self.encoder.layers:
            if recompute:
                # Non-reentrant (torch's recommended form: handles autocast and a mask that needs no gradient);
                # preserve_rng_state replays the forward's dropout masks in the recomputation.
                # The recomputation runs in the backward, outside the forward's `sdpa_kernel` choice (strict
                # determinism's math kernel): it re-enters the kernels the forward allowed, or it would pick
                # another kernel and torch would refuse the recomputed tensors.
                hidden = checkpoint(layer, hidden, mask, use_reentrant=False, preserve_rng_state=True,
                                    context_fn=same_attention_kernels())
            else:
                hidden = layer(hidden, mask)
        return hidden


def same_attention_kernels():
    """`checkpoint`'s context_fn: the forward as it is, the recomputation under the SDPA kernels allowed now."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    switches = {SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled(),
                SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
                SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
                SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled()}
    allowed = [backend for backend, on in switches.items() if on]
    return lambda: (contextlib.nullcontext(), sdpa_kernel(allowed))


def init_weights(module: nn.Module, std: float) -> None:
    """BERT/SqueezeBERT initialization: normal(0, std) weights, zero biases, LayerNorm 1/0, zero padding row."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, GroupedPointwise)):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if sub.padding_idx is not None:
                with torch.no_grad():
                    sub.weight[sub.padding_idx].zero_()
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def step_flops(config: ModelConfig, tokens: float, squared_lengths: float, sequences: float, masked: float,
               training: bool = True) -> float:
    """Matmul FLOPs (2 per multiply-add) of a batch, from what it really holds.

    `tokens` is the sum of the sequences' real lengths, `squared_lengths` the sum of their squares,
    `sequences` their number, `masked` the masked tokens. Per layer and token, forward: every grouped
    pointwise layer costs 2 * c_in * c_out / groups (q, k, v, post-attention, intermediate, output); per layer
    and sequence of length L, attention scores and their weighted sum cost 2 * 2 * L^2 * C. Per sequence: the
    pooler 2C^2 and the SOP classifier 2 * 2C. Per masked token: the MLM transform 2C^2 and the tied
    decoder 2CV (logits are computed at masked positions only). Training is 3x forward (backward computes
    the gradients of both matmul operands). Padding is left out (it is work, not the model's), and so are
    embedding lookups, LayerNorm, GELU and softmax, as `FlopCounterMode` leaves them out.
    """
    c, inner = config.hidden_size, config.intermediate_size
    pointwise = 2 * (
        c * c / config.q_groups + c * c / config.k_groups + c * c / config.v_groups
        + c * c / config.post_attention_groups + c * inner / config.intermediate_groups
        + inner * c / config.output_groups
    )
    total = config.num_hidden_layers * (pointwise * tokens + 2 * 2 * c * squared_lengths)
    total += sequences * (2 * c * c + 2 * c * 2)
    total += masked * (2 * c * c + 2 * c * config.vocab_size)
    return total * (3 if training else 1)


def flops_per_token(config: ModelConfig, seq_len: int, masked_per_sequence: float, training: bool = True) -> float:
    """`step_flops` per token of full-length sequences with `masked_per_sequence` masked tokens each."""
    return step_flops(config, seq_len, seq_len**2, 1, masked_per_sequence, training) / seq_len


__all__ = [
    "ModelConfig", "ConfigError", "SqueezeBertModel", "GroupedPointwise", "init_weights", "flops_per_token",
    "step_flops", "count_parameters",
]
