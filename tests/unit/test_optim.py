"""LAMB parameter groups and the learning-rate schedule."""

from pretrain.config import OptimizerConfig, PhaseConfig
from pretrain.heads import SqueezeBertForPretraining
from pretrain.model import ModelConfig
from pretrain.optim import build_lamb, learning_rate, parameter_groups


def test_no_decay_for_biases_and_layer_norms_and_tied_weights_once():
    model = SqueezeBertForPretraining(ModelConfig.preset("squeezebert-tiny"))
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)]
               and "layernorm" not in names[id(p)] for p in decay["params"])
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] or "layernorm" in names[id(p)]
               for p in no_decay["params"])
    counted = len(decay["params"]) + len(no_decay["params"])
    assert counted == len(list(model.parameters()))  # the tied decoder weight is the embedding, once
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    optimizer = build_lamb(model, OptimizerConfig(), lr=1e-3)
    assert len(optimizer.param_groups) == 2


def test_schedule_warmup_peak_and_decay():
    phase = PhaseConfig(shards="x", steps=100, peak_lr=2.5e-3, warmup_fraction=0.28)
    rates = [learning_rate(phase, step) for step in range(100)]
    assert rates[0] == 2.5e-3 / 28 and rates[27] == 2.5e-3
    assert all(a < b for a, b in zip(rates[:27], rates[1:28]))
    assert all(a > b for a, b in zip(rates[28:], rates[29:]))
    assert abs(rates[99] - 2.5e-3 / 72) < 1e-12 and learning_rate(phase, 100) == 0.0
    assert max(rates) == 2.5e-3
