"""Precision on the CPU, as far as a CPU allows: which precision `auto` picks, autocast with fp32 weights and
gradients, and the fp16 loss scale (an overflow is detected, skipped and halves the scale)."""

import pytest
import torch

import pretrain.model
from pretrain.model import GroupedPointwise, ModelConfig
from pretrain.optim import Lamb, parameter_groups
from pretrain.precision import DynamicLossScale, PrecisionError, autocast, common_precision, resolve_precision
from pretrain.pretraining_model import SqueezeBertForPretraining
from tests.unit.test_model import random_batch


def test_auto_is_fp32_on_a_cpu_and_explicit_choices_stand():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert [resolve_precision(p, cpu) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]


@pytest.mark.parametrize("gpu, native, expected", [("NVIDIA A100-SXM4-80GB", True, "bf16"),
                                                    ("Tesla V100-SXM2-32GB", False, "fp16")])
def test_auto_on_a_gpu_is_bf16_where_it_is_native_and_fp16_where_it_is_only_emulated(monkeypatch, gpu, native,
                                                                                     expected):
    """torch's capability queries answered as that GPU would (a V100 emulates bf16: True unless
    `including_emulation=False`); the device is a CUDA device object, which needs no GPU to exist."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", cuda) == expected
    assert resolve_precision("fp16", cuda) == "fp16" and resolve_precision("fp32", cuda) == "fp32"
    if native:
        assert resolve_precision("bf16", cuda) == "bf16"
    else:
        with pytest.raises(PrecisionError, match=rf"^precision = 'bf16': {gpu} has no native bf16; use precision = "
                                                 r"'fp16' \(or 'auto', which picks it\)$"):
            resolve_precision("bf16", cuda)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_computes_in_half_precision_and_keeps_weights_and_gradients_fp32(precision, dtype):
    config = ModelConfig.preset("squeezebert-tiny")
    torch.manual_seed(0)
    model = SqueezeBertForPretraining(config)
    seen = []
    for module in model.modules():
        if isinstance(module, GroupedPointwise):
            module.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with autocast(torch.device("cpu"), precision):
        output = model(*random_batch(config, n=2, w=32))
    assert set(seen) == {dtype}  # the grouped 1x1 convolutions ran in half precision
    assert output.loss.dtype == torch.float32  # cross-entropy in fp32
    output.loss.backward()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in model.parameters()} == {torch.float32}


def test_ranks_agree_on_one_precision_or_all_raise_the_same_error():
    assert common_precision(["bf16", "bf16"]) == "bf16"
    assert common_precision(["bf16", "fp16", "bf16"]) == "fp16"  # auto on a job mixing A100s and V100s
    refused = PrecisionError("precision = 'bf16': Tesla V100 has no native bf16")
    with pytest.raises(PrecisionError, match="Tesla V100 has no native bf16"):
        common_precision(["bf16", refused])


@pytest.mark.parametrize("determinism, kernels",
                         [("strict", {"math"}), ("default", {"math", "flash", "efficient", "cudnn"})])
def test_strict_determinism_leaves_sdpa_only_its_math_kernel(monkeypatch, determinism, kernels):
    """The kernels SDPA may choose from while the model's forward runs: on CUDA, with a boolean mask, the choice
    would be the memory-efficient kernel, whose backward is not deterministic."""
    import torch.nn.functional as F

    allowed = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        switches = {"math": torch.backends.cuda.math_sdp_enabled(), "flash": torch.backends.cuda.flash_sdp_enabled(),
                    "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                    "cudnn": torch.backends.cuda.cudnn_sdp_enabled()}
        allowed.append({name for name, on in switches.items() if on})
        return sdpa(*args, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    # Evaluation's attention is SDPA on CUDA; on CPU in fp32 it is the model's own (`AttentionByExample`), so
    # CUDA's branch is taken here by answering the device check as CUDA would.
    monkeypatch.setattr(pretrain.model, "by_example", lambda q: False)
    config = ModelConfig.preset("squeezebert-tiny")
    model = SqueezeBertForPretraining(config).eval()
    model.run_in(torch.device("cpu"), "fp32", determinism)
    model(*random_batch(config, n=2, w=16))
    assert allowed and all(seen == kernels for seen in allowed), allowed


def test_fp32_autocast_is_no_autocast():
    config = ModelConfig.preset("squeezebert-tiny")
    model = SqueezeBertForPretraining(config)
    with autocast(torch.device("cpu"), "fp32"):
        hidden, _ = model.transformer(*random_batch(config, n=2, w=16)[:3])
    assert hidden.dtype == torch.float32


def test_loss_scale_halves_on_overflow_grows_after_its_interval_and_is_checkpointed():
    scale = DynamicLossScale(scale=8.0, growth_interval=3)
    scale.update(finite=False)
    assert scale.scale == 4.0 and scale.good_steps == 0
    for _ in range(3):
        scale.update(finite=True)
    assert scale.scale == 8.0 and scale.good_steps == 0
    scale.update(finite=True)
    restored = DynamicLossScale(growth_interval=3)
    restored.load_state_dict(scale.state_dict())
    assert (restored.scale, restored.good_steps) == (8.0, 1)
    for _ in range(10):
        scale.update(finite=False)
    assert scale.scale == 1.0  # never below 1
    with pytest.raises(PrecisionError, match="bad loss-scale state"):
        restored.load_state_dict({"scale": "x", "good_steps": 0})


def test_an_fp16_overflow_is_seen_in_the_gradient_norm_and_the_step_is_skipped():
    config = ModelConfig.preset("squeezebert-tiny")
    torch.manual_seed(1)
    model = SqueezeBertForPretraining(config)
    optimizer = Lamb(parameter_groups(model, 0.01), lr=1e-3)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer.loss_scale = 2.0**60  # far beyond fp16's range (65504): the half-precision gradients overflow
    with autocast(torch.device("cpu"), "fp16"):
        loss = model(*random_batch(config, n=2, w=32)).loss
    (loss * optimizer.loss_scale).backward()
    assert torch.isfinite(loss) and not torch.isfinite(optimizer.gradient_norm())
    optimizer.overflow = True  # what the trainer sets when the norm is not finite
    optimizer.step()
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert not optimizer.state  # LAMB's moments were never touched
