"""LAMB against a straightforward reference of the published algorithm, the torch-optimizer variant against
torch-optimizer, skipped steps and loss scales; parameter groups and the learning-rate schedule."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
import torch_optimizer
from torch import nn

from pretrain.config import OptimizerConfig, PhaseConfig
from pretrain.model import ModelConfig
from pretrain.optim import Lamb, TorchOptimizerLamb, build_lamb, learning_rate, parameter_groups
from pretrain.pretraining_model import SqueezeBertForPretraining


class TiedModel(nn.Module):
    """Weights, biases, a LayerNorm and a decoder tied to the embedding, as the pretraining model has."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 16)
        self.dense = nn.Linear(16, 16)
        self.LayerNorm = nn.LayerNorm(16)
        self.bias = nn.Parameter(torch.zeros(50))  # the decoder's, zero-initialised like the MLM head's

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.LayerNorm(torch.tanh(self.dense(self.embedding(ids))))
        return F.linear(hidden, self.embedding.weight, self.bias)


@torch.no_grad()
def reference_lamb_step(groups, state, lr, betas, eps, max_grad_norm):
    """LAMB as apex FusedLAMB (DeepLearningExamples' BERT) and TF-Addons define it, one parameter at a time."""
    beta1, beta2 = betas
    gradients = [p.grad for group in groups for p in group["params"]]
    global_norm = math.sqrt(sum(float((g * g).sum()) for g in gradients))
    clip = max(1.0, global_norm / max_grad_norm) if max_grad_norm > 0 else 1.0
    for group in groups:
        for p in group["params"]:
            g = p.grad / clip
            s = state.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            s["t"] += 1
            s["m"] = beta1 * s["m"] + (1 - beta1) * g
            s["v"] = beta2 * s["v"] + (1 - beta2) * g * g
            m_hat = s["m"] / (1 - beta1 ** s["t"])
            v_hat = s["v"] / (1 - beta2 ** s["t"])
            adam = m_hat / (v_hat.sqrt() + eps)
            if group["weight_decay"]:
                update = adam + group["weight_decay"] * p
                w_norm, u_norm = float(p.norm()), float(update.norm())
                ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                p.data -= lr * ratio * update
            else:
                p.data -= lr * adam


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.05])
def test_lamb_equals_the_published_algorithm_for_100_steps(max_grad_norm):
    torch.manual_seed(0)
    ours_model = TiedModel().double()
    reference_model = copy.deepcopy(ours_model)
    betas, eps, decay = (0.9, 0.999), 1e-6, 0.01
    ours = Lamb(parameter_groups(ours_model, decay), lr=1e-2, betas=betas, eps=eps, max_grad_norm=max_grad_norm)
    reference_groups = parameter_groups(reference_model, decay)
    reference_state = {}
    clipped = 0
    for step in range(100):
        lr = 1e-2 * (step + 1) / 100  # a changing rate, as the schedule gives
        ids = torch.randint(0, 50, (8, 12))
        targets = torch.randint(0, 50, (8, 12))
        for model in (ours_model, reference_model):
            F.cross_entropy(model(ids).reshape(-1, 50), targets.reshape(-1)).backward()
        norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in reference_model.parameters()))
        clipped += max_grad_norm > 0 and norm > max_grad_norm
        for group in ours.param_groups:
            group["lr"] = lr
        ours.step()
        reference_lamb_step(reference_groups, reference_state, lr, betas, eps, max_grad_norm)
        ours.zero_grad()
        reference_model.zero_grad()
    assert clipped == (100 if max_grad_norm else 0)  # the clipped case clips at every step
    for (name, mine), theirs in zip(ours_model.named_parameters(), reference_model.parameters()):
        assert relative_difference(mine, theirs) < 1e-6, name
    assert ours_model.bias.abs().max() > 0.1  # the zero-initialised decoder bias did move


def test_a_zero_initialised_bias_moves_as_adam_moves_it_and_not_as_torch_optimizer_does():
    torch.manual_seed(1)
    biases = [nn.Parameter(torch.zeros(64, dtype=torch.float64)) for _ in range(3)]
    lamb = Lamb([{"params": [biases[0]], "weight_decay": 0.0}], lr=2.5e-3, max_grad_norm=0.0)
    adam = torch.optim.Adam([biases[1]], lr=2.5e-3, eps=1e-6)
    torch_lamb = torch_optimizer.Lamb([biases[2]], lr=2.5e-3, eps=1e-6)
    for _ in range(200):
        gradient = torch.randn(64, dtype=torch.float64) + 0.5  # a persistent push in one direction
        for bias, optimizer in zip(biases, (lamb, adam, torch_lamb)):
            bias.grad = gradient.clone()
            optimizer.step()
    assert relative_difference(biases[0], biases[1]) < 1e-9
    # torch-optimizer's trust ratio holds it near 0
    assert float(biases[0].detach().norm()) > 5 * float(biases[2].detach().norm())


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.05])
def test_the_torch_optimizer_variant_is_torch_optimizer_after_clipping(max_grad_norm):
    torch.manual_seed(2)
    model = TiedModel()
    theirs_model = copy.deepcopy(model)
    ours = TorchOptimizerLamb(parameter_groups(model, 0.01), lr=1e-2, max_grad_norm=max_grad_norm)
    theirs = torch_optimizer.Lamb(parameter_groups(theirs_model, 0.01), lr=1e-2, eps=1e-6)
    for _ in range(20):
        ids = torch.randint(0, 50, (4, 10))
        for m in (model, theirs_model):
            m(ids).square().mean().backward()
        if max_grad_norm:  # apex's rule: divide by max(1, norm / max_grad_norm)
            norm = torch.nn.utils.get_total_norm([p.grad for p in theirs_model.parameters()])
            for p in theirs_model.parameters():
                p.grad /= max(1.0, float(norm) / max_grad_norm)
        ours.step()
        theirs.step()
        ours.zero_grad()
        theirs.zero_grad()
    for mine, other in zip(model.parameters(), theirs_model.parameters()):
        assert relative_difference(mine, other) < 1e-6


@pytest.mark.parametrize("implementation", ["reference", "torch-optimizer"])
def test_a_skipped_step_changes_nothing(implementation):
    torch.manual_seed(3)
    model = TiedModel()
    optimizer = build_lamb(model, OptimizerConfig(implementation=implementation), lr=1e-2)
    model(torch.randint(0, 50, (4, 10))).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()["state"]))
    model(torch.randint(0, 50, (4, 10))).square().mean().backward()
    for p in model.parameters():
        p.grad[...] = float("nan")
    assert not torch.isfinite(optimizer.gradient_norm())
    optimizer.overflow = True
    optimizer.step()
    parameters, state = before
    assert all(torch.equal(parameters[k], v) for k, v in model.state_dict().items())
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state[index][key])), key


def test_a_loss_scale_is_undone_inside_the_update():
    torch.manual_seed(4)
    model = TiedModel().double()
    scaled_model = copy.deepcopy(model)
    plain = Lamb(parameter_groups(model, 0.01), lr=1e-2, max_grad_norm=0.5)
    scaled = Lamb(parameter_groups(scaled_model, 0.01), lr=1e-2, max_grad_norm=0.5)
    scaled.loss_scale = 1024.0
    for _ in range(10):
        ids = torch.randint(0, 50, (4, 10))
        model(ids).square().mean().backward()
        (scaled_model(ids).square().mean() * 1024.0).backward()
        assert float(scaled.gradient_norm()) == pytest.approx(float(plain.gradient_norm()), rel=1e-12)
        plain.step()
        scaled.step()
        plain.zero_grad()
        scaled.zero_grad()
    for mine, other in zip(scaled_model.parameters(), model.parameters()):
        assert relative_difference(mine, other) < 1e-9


def test_the_optimizer_state_is_checkpointed_and_restored():
    torch.manual_seed(5)
    model = TiedModel()
    optimizer = Lamb(parameter_groups(model, 0.01), lr=1e-2)
    for _ in range(3):
        model(torch.randint(0, 50, (4, 10))).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    restored_model = copy.deepcopy(model)
    restored = Lamb(parameter_groups(restored_model, 0.01), lr=1e-2)
    saved = io.BytesIO()
    torch.save(optimizer.state_dict(), saved)  # as a checkpoint does: a copy, not the live tensors
    saved.seek(0)
    restored.load_state_dict(torch.load(saved))
    ids = torch.randint(0, 50, (4, 10))
    for m, o in ((model, optimizer), (restored_model, restored)):
        m(ids).square().mean().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), restored_model.parameters()))
    assert set(optimizer.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}  # no scratch saved


def test_a_torch_optimizer_checkpoint_resumes_under_the_reference_lamb():
    torch.manual_seed(6)
    model = TiedModel()
    old = torch_optimizer.Lamb(parameter_groups(model, 0.01), lr=1e-2)
    model(torch.randint(0, 50, (4, 10))).square().mean().backward()
    old.step()
    new = Lamb(parameter_groups(model, 0.01), lr=1e-2)
    new.load_state_dict(old.state_dict())
    state = new.state_dict()["state"][0]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and float(state["step"]) == 1.0
    assert torch.equal(state["exp_avg"], old.state_dict()["state"][0]["exp_avg"])
    new.step()  # continues from those moments
    assert float(new.state_dict()["state"][0]["step"]) == 2.0


def test_after_loading_a_torch_optimizer_checkpoint_every_step_counter_is_on_its_parameters_device():
    """CUDA's fused Adam kernel reads the counters on the parameters' device. Parameters on the `meta` device
    stand for a GPU's: torch places `step` by the saved groups' `fused` flag, which this checkpoint lacks."""
    torch.manual_seed(6)
    model = TiedModel()
    old = torch_optimizer.Lamb(parameter_groups(model, 0.01), lr=1e-2)
    model(torch.randint(0, 50, (4, 10))).square().mean().backward()
    old.step()
    elsewhere = TiedModel().to("meta")
    new = Lamb(parameter_groups(elsewhere, 0.01), lr=1e-2)
    new.load_state_dict(old.state_dict())
    placed = [(new.state[p]["step"].device, p.device) for group in new.param_groups for p in group["params"]]
    assert len(placed) == len(old.state) and all(step == parameter for step, parameter in placed), placed


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
    assert len(optimizer.param_groups) == 2 and isinstance(optimizer, Lamb)
    variant = build_lamb(model, OptimizerConfig(implementation="torch-optimizer"), lr=1e-3)
    assert isinstance(variant, torch_optimizer.Lamb)


def test_schedule_warmup_peak_and_decay():
    phase = PhaseConfig(shards="x", steps=100, peak_lr=2.5e-3, warmup_fraction=0.28)
    rates = [learning_rate(phase, step) for step in range(100)]
    assert rates[0] == 2.5e-3 / 28 and rates[27] == 2.5e-3
    assert all(a < b for a, b in zip(rates[:27], rates[1:28]))
    assert all(a > b for a, b in zip(rates[28:], rates[29:]))
    assert abs(rates[99] - 2.5e-3 / 72) < 1e-12 and learning_rate(phase, 100) == 0.0
    assert max(rates) == 2.5e-3
