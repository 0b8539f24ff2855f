"""finetune's precision choice on GPUs, with torch's capability queries answered as each GPU answers them."""

import pytest
import torch

from finetune.config import FinetuneConfigError
from finetune.run import precision_flags


def pretend_gpu(monkeypatch, name: str, native_bf16: bool) -> None:
    """A GPU as torch describes it: V100 and T4 report bf16 support only when emulation counts."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native_bf16 or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_auto_is_fp16_on_a_gpu_that_only_emulates_bf16(monkeypatch):
    pretend_gpu(monkeypatch, "Tesla V100-SXM2-32GB", native_bf16=False)
    assert precision_flags("auto") == {"bf16": False, "fp16": True}
    with pytest.raises(FinetuneConfigError, match="--precision bf16: Tesla V100-SXM2-32GB has no native bf16"):
        precision_flags("bf16")


def test_auto_is_bf16_on_a_gpu_with_native_bf16_and_fp32_on_a_cpu(monkeypatch):
    assert precision_flags("auto") == {"bf16": False, "fp16": False}  # this machine: no GPU
    pretend_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", native_bf16=True)
    assert precision_flags("auto") == {"bf16": True, "fp16": False}
    assert precision_flags("fp32") == {"bf16": False, "fp16": False}
