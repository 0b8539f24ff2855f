"""The model against transformers' SqueezeBERT: parity, masks, gradients, export/import, FLOPs; checkpointing;
the grouped GEMMs against plain convolutions; the compiled model."""

import dataclasses
import types

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import SqueezeBertConfig, SqueezeBertForMaskedLM, SqueezeBertForSequenceClassification

from pretrain.model import (
    ConfigError,
    GroupedPointwise,
    ModelConfig,
    SelfAttention,
    SqueezeBertLayer,
    attention,
    count_parameters,
    flops_per_token,
    fuses_qkv,
    grouped_pointwise,
    step_flops,
)
from pretrain.model_files import (
    export_headless,
    import_transformers,
    load_model_folder,
    save_model_folder,
    transformers_config,
)
from pretrain.pretraining_model import SqueezeBertForPretraining

SMALL = ModelConfig(vocab_size=1000, hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384)


def hf_model(config: ModelConfig, seed: int = 0) -> SqueezeBertForMaskedLM:
    torch.manual_seed(seed)
    values = {k: v for k, v in transformers_config(config).items() if k != "architectures"}
    return SqueezeBertForMaskedLM(SqueezeBertConfig(**values)).eval()


def random_batch(config: ModelConfig, n: int = 4, w: int = 24, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (n, w), generator=generator)
    attention_mask = torch.ones(n, w, dtype=torch.long)
    for row in range(1, n):  # every row but the first is padded, by different amounts
        attention_mask[row, w - 3 * row :] = 0
    input_ids[attention_mask == 0] = config.pad_token_id
    token_type_ids = torch.zeros(n, w, dtype=torch.long)
    token_type_ids[:, w // 3 :] = 1
    token_type_ids[attention_mask == 0] = 0
    mlm_labels = torch.full((n, w), -100)
    chosen = (torch.rand(n, w, generator=generator) < 0.3) & attention_mask.bool()
    mlm_labels[chosen] = input_ids[chosen]
    sop_labels = torch.randint(0, 2, (n,), generator=generator)
    return input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A random transformers model saved to disk, and ours imported from it."""
    folder = tmp_path_factory.mktemp("hf")
    hf = hf_model(SMALL)
    hf.save_pretrained(folder)
    ours, missing = import_transformers(str(folder))
    assert missing == ["sop_classifier.bias", "sop_classifier.weight"]
    return hf, ours.eval(), str(folder)


def test_parity_with_transformers(pair):
    hf, ours, _ = pair
    input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels = random_batch(SMALL)
    with torch.no_grad():
        reference = hf(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                       output_hidden_states=True)
        hidden, _ = ours.transformer(input_ids, attention_mask, token_type_ids)
        output = ours(input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels)
    real = attention_mask.bool()
    assert (reference.hidden_states[-1][real] - hidden[real]).abs().max() <= 1e-5
    masked = mlm_labels != -100
    assert output.num_masked == int(masked.sum()) > 0
    assert (reference.logits[masked] - output.mlm_logits).abs().max() <= 1e-5


def test_parity_full_size_preset():
    config = ModelConfig.preset("squeezebert-base")
    hf = hf_model(config)
    ours = SqueezeBertForPretraining(config).eval()
    missing = ours.load_state_dict(hf.state_dict(), strict=False)
    assert set(missing.missing_keys) == {"sop_classifier.weight", "sop_classifier.bias"}
    input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels = random_batch(config, n=2, w=40)
    with torch.no_grad():
        reference = hf(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        output = ours(input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels)
    masked = mlm_labels != -100
    assert (reference.logits[masked] - output.mlm_logits).abs().max() <= 1e-4  # 12 layers, 768 wide, fp32


def test_full_size_parameter_count():
    count = count_parameters(SqueezeBertForPretraining(ModelConfig.preset("squeezebert-base")).transformer)
    assert 50e6 < count < 52e6  # the paper's "51M"


def test_padding_never_changes_real_positions():
    model = SqueezeBertForPretraining(SMALL).eval()
    input_ids, attention_mask, token_type_ids, _, _ = random_batch(SMALL)
    noisy = input_ids.clone()
    noisy[attention_mask == 0] = torch.randint(5, SMALL.vocab_size, (int((attention_mask == 0).sum()),))
    longer_ids = torch.cat([input_ids, torch.zeros(4, 8, dtype=torch.long)], dim=1)
    longer_mask = torch.cat([attention_mask, torch.zeros(4, 8, dtype=torch.long)], dim=1)
    longer_types = torch.cat([token_type_ids, torch.zeros(4, 8, dtype=torch.long)], dim=1)
    with torch.no_grad():
        hidden, pooled = model.transformer(input_ids, attention_mask, token_type_ids)
        hidden_noisy, pooled_noisy = model.transformer(noisy, attention_mask, token_type_ids)
        hidden_longer, pooled_longer = model.transformer(longer_ids, longer_mask, longer_types)
    real = attention_mask.bool()
    assert torch.allclose(hidden[real], hidden_noisy[real], atol=1e-6)
    assert torch.allclose(hidden[real], hidden_longer[:, :24][real], atol=1e-5)
    assert torch.allclose(pooled, pooled_noisy, atol=1e-6) and torch.allclose(pooled, pooled_longer, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    model = SqueezeBertForPretraining(SMALL).train()
    output = model(*random_batch(SMALL))
    output.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name
    assert torch.isclose(output.loss, output.mlm_loss + output.sop_loss)
    assert 0 <= output.mlm_accuracy <= 1 and 0 <= output.sop_accuracy <= 1


def test_initialization_is_berts():
    model = SqueezeBertForPretraining(ModelConfig.preset("squeezebert-base"))
    query = model.transformer.encoder.layers[0].attention.query
    assert abs(query.weight.std().item() - 0.02) < 1e-3 and query.bias.abs().max() == 0
    layer_norm = model.transformer.encoder.layers[0].output.layernorm
    assert (layer_norm.weight == 1).all() and (layer_norm.bias == 0).all()
    assert (model.transformer.embeddings.word_embeddings.weight[0] == 0).all()  # [PAD] row
    assert (model.cls.predictions.bias == 0).all()


def test_export_round_trip_and_tied_weights(pair, tmp_path):
    _, ours, _ = pair
    export = tmp_path / "export"
    export_headless(ours, str(export))
    input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels = random_batch(SMALL, seed=5)
    classifier, info = SqueezeBertForSequenceClassification.from_pretrained(str(export), output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    masked_lm, info = SqueezeBertForMaskedLM.from_pretrained(str(export), output_loading_info=True)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert info["missing_keys"] == [] or set(info["missing_keys"]) <= tied
    masked_lm.eval()
    assert masked_lm.get_output_embeddings().weight.data_ptr() == masked_lm.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        theirs = masked_lm(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        mine = ours(input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels)
        encoder = classifier.eval().transformer(input_ids=input_ids, attention_mask=attention_mask,
                                                token_type_ids=token_type_ids).last_hidden_state
        hidden, _ = ours.transformer(input_ids, attention_mask, token_type_ids)
    real = attention_mask.bool()
    assert (encoder[real] - hidden[real]).abs().max() <= 1e-5
    assert (theirs.logits[mlm_labels != -100] - mine.mlm_logits).abs().max() <= 1e-5
    reimported, _ = import_transformers(str(export))
    embeddings = reimported.transformer.embeddings.word_embeddings
    assert reimported.cls.predictions.word_embeddings[0].weight is embeddings.weight
    for key, value in ours.state_dict().items():
        if not key.startswith("sop_classifier."):
            assert torch.equal(value, reimported.state_dict()[key]), key
    folder = tmp_path / "model_folder"
    save_model_folder(ours, str(folder))
    loaded = load_model_folder(str(folder))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in ours.state_dict().items())
    assert loaded.cls.predictions.word_embeddings[0].weight is loaded.transformer.embeddings.word_embeddings.weight


@pytest.mark.parametrize("seq_len", [32, 128])
def test_flops_per_token_matches_flop_counter(seq_len):
    config = ModelConfig(vocab_size=2048, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=512)
    model = SqueezeBertForPretraining(config).train()
    n = 3
    input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels = random_batch(config, n=n, w=seq_len)
    attention_mask[:] = 1  # every token counts
    masked = int((mlm_labels != -100).sum())
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:  # the math path is made of matmuls the counter sees
        model(input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels).loss.backward()
    expected = flops_per_token(config, seq_len, masked / n) * n * seq_len
    assert abs(counter.get_total_flops() - expected) / expected < 1e-6


def test_step_flops_counts_real_lengths_and_masked_tokens_only():
    """MFU counts the model's work on what the batch holds: padding and unmasked positions are not counted.
    Two sequences of lengths 32 and 128 (each padded to 128 in its batch) are the sum of the two alone."""
    config = ModelConfig.preset("squeezebert-base")
    whole = step_flops(config, tokens=32 + 128, squared_lengths=32**2 + 128**2, sequences=2, masked=5 + 20)
    parts = flops_per_token(config, 32, 5) * 32 + flops_per_token(config, 128, 20) * 128
    assert whole == pytest.approx(parts, rel=1e-12)
    assert whole < 2 * 128 * flops_per_token(config, 128, 20)  # the padded count reads higher


def test_cpu_training_attention_path_is_sdpa_arithmetic():
    from pretrain.model import dropout_keep_mask

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=generator) for _ in range(3))
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[1, ..., 6:] = False
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    tiny_p = 1e-9  # takes the training path but keeps every element
    out = attention(q, k, v, mask, tiny_p, training=True)
    real = mask[:, 0, 0, :, None].expand(2, 10, 8)[:, None].expand(2, 3, 10, 8)  # the real queries
    assert torch.allclose(out[real], reference[real] * (1 / (1 - tiny_p)), atol=1e-6)
    assert not out[~real].any()  # padding queries: 0 on CPU (`AttentionByExample`)
    keep = dropout_keep_mask(torch.empty(400, 1000), 0.1)
    assert abs(keep.float().mean().item() - 0.9) < 0.003


@pytest.mark.parametrize("fused", [True, False], ids=["qkv", "separate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_by_example_gives_the_batched_arithmetic_and_its_gradients_with_the_same_masks(fused, dtype):
    """CPU attention one example at a time (`AttentionByExample`) against the batched math written out with
    autograd: outputs and q/k/v gradients, dropout off and on (the same masks drawn from the same seed), q, k, v
    as views of one fused [N, W, H, 3, D] tensor or separate. Right padding computes the real block only: the
    real queries' outputs are the masked computation's and the padding queries' are 0, and the gradients are
    the masked computation's under a model's loss (one that reads no padding position: its gradient there is
    0). Left padding: every query, with the padding bias. Without autograd, against SDPA at the real queries."""
    from pretrain.model import AttentionByExample, attended_keys, byte_keep_mask, padding_bias, qkv_views

    generator = torch.Generator().manual_seed(3)
    qkv = torch.randn(4, 10, 4, 3, 8, dtype=dtype, generator=generator, requires_grad=True)
    mask = torch.ones(4, 1, 1, 10, dtype=torch.bool)
    mask[1, ..., 6:] = False
    mask[2, ..., 2:] = False
    mask[3, ..., :3] = False  # left padding: all 10 keys with the padding bias, and all 10 queries
    # right padding attends the real keys only; any other mask all keys with the bias
    assert attended_keys(mask, 10) == [10, 6, 2, -1] and attended_keys(None, 10) is None
    computed = mask[:, 0, 0, :, None, None].expand(4, 10, 4, 8).transpose(1, 2).clone()  # [N, H, W, D]
    computed[3] = True
    grad = torch.randn(4, 4, 10, 8, dtype=dtype, generator=generator) * computed
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    for p in (0.0, 0.3):
        results = []
        for by_example in (True, False):
            qkv.grad = None
            q, k, v = qkv_views(qkv) if fused else (t.clone() for t in qkv_views(qkv))
            torch.manual_seed(5)
            if by_example:
                parts = (qkv,) if fused else (q, k, v)
                out = AttentionByExample.apply(padding_bias(mask, dtype), attended_keys(mask, 10), 0.7, p, True,
                                               *parts).transpose(1, 2)
            else:
                probabilities = torch.softmax((q @ k.transpose(-1, -2) * 0.7).masked_fill(~mask, -1e30), -1)
                if p:
                    probabilities = probabilities * byte_keep_mask(probabilities, p) / (1 - p)
                out = probabilities @ v
            out.backward(grad)
            results.append((out.detach(), qkv.grad))
        (out, grad_qkv), (reference, reference_grad) = results
        assert out.shape == reference.shape and grad_qkv.shape == qkv.shape
        assert torch.allclose(out[computed], reference[computed], rtol=0, atol=tolerance)
        assert not out[~computed].any()
        assert torch.allclose(grad_qkv, reference_grad, rtol=0, atol=10 * tolerance)
    with torch.no_grad():
        q, k, v = qkv_views(qkv)
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = attention(q, k, v, mask, 0.1, training=False)
        assert torch.allclose(out[computed], sdpa[computed], rtol=0, atol=tolerance)


def test_attention_takes_what_sdpa_takes_and_its_output_may_be_changed_in_place():
    """`attention` on CPU: queries and keys of different lengths, a mask shared by the batch, a float mask and
    an empty batch give SDPA's answers (the per-example path is for a boolean [N, 1, 1, W] self-attention mask);
    and the output, or a view of it, may be changed in place under autograd (a forward hook may scale it)."""
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(2, 3, 8, 4, generator=generator)
    k, v = (torch.randn(2, 3, 5, 4, generator=generator) for _ in range(2))
    right = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    right[..., 3:] = False
    shared = right[:1]
    additive = torch.zeros(2, 1, 1, 5).masked_fill(~right, -1e9)
    for mask in (right, shared, additive, None):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert torch.allclose(attention(q, k, v, mask, 0.1, training=False), expected, rtol=0, atol=1e-6)
    empty = torch.empty(0, 3, 8, 4)
    assert attention(empty, empty, empty, torch.ones(0, 1, 1, 8, dtype=torch.bool), 0.1, training=False).shape == (0, 3, 8, 4)
    x = torch.randn(2, 8, 3, 3, 4, generator=generator, requires_grad=True)
    out = attention(*(t.transpose(1, 2) for t in x.unbind(3)), right.new_ones(2, 1, 1, 8), 0.0, training=True, qkv=x)
    out.transpose(1, 2).reshape(2, 8, 12).mul_(0.5).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_an_additive_padding_bias_gives_the_probabilities_of_a_filled_mask_fully_masked_rows_included():
    from pretrain.model import padding_bias

    scores = torch.randn(3, 2, 4, 6, generator=torch.Generator().manual_seed(1)) * 30
    mask = torch.ones(3, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    mask[2] = False  # every key is padding: uniform, as a filled mask gives
    for dtype in (torch.float32, torch.bfloat16):
        filled = torch.softmax(scores.to(dtype).masked_fill(~mask, torch.finfo(dtype).min), -1)
        added = torch.softmax(scores.to(dtype) + padding_bias(mask, dtype), -1)
        assert torch.equal(filled, added) and not added.isnan().any()


def count_layer_forwards(model: SqueezeBertForPretraining) -> list[int]:
    """Per encoder layer, how many times its forward runs from now on (a recomputation counts)."""
    counts = [0] * len(model.transformer.encoder.layers)
    for index, layer in enumerate(model.transformer.encoder.layers):
        layer.register_forward_pre_hook(lambda *_, index=index: counts.__setitem__(index, counts[index] + 1))
    return counts


def training_step(checkpointing: bool, seed: int = 7):
    """Loss, gradients and per-layer forward counts of one step at length 128, dropout on."""
    config = dataclasses.replace(SMALL, gradient_checkpointing=checkpointing)
    torch.manual_seed(0)
    model = SqueezeBertForPretraining(config).train()
    counts = count_layer_forwards(model)
    batch = random_batch(config, n=2, w=128)
    torch.manual_seed(seed)  # the dropout masks
    loss = model(*batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}, counts


def test_gradient_checkpointing_recomputes_and_changes_no_number():
    loss, gradients, counts = training_step(checkpointing=False)
    checkpointed_loss, checkpointed_gradients, checkpointed_counts = training_step(checkpointing=True)
    assert counts == [1, 1] and checkpointed_counts == [2, 2]  # each layer's forward ran again in backward
    assert torch.equal(loss, checkpointed_loss)
    assert gradients.keys() == checkpointed_gradients.keys()
    for name, gradient in gradients.items():  # the recomputation runs the same kernels on the same inputs
        assert torch.equal(gradient, checkpointed_gradients[name]), name
    other_masks, _, _ = training_step(checkpointing=True, seed=8)
    assert not torch.equal(loss, other_masks)  # dropout is on, so equal masks were what made them equal


def test_gradient_checkpointing_is_off_without_gradients():
    torch.manual_seed(0)
    plain = SqueezeBertForPretraining(SMALL)
    checkpointed = SqueezeBertForPretraining(dataclasses.replace(SMALL, gradient_checkpointing=True))
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()  # no new parameter names or buffers
    checkpointed.load_state_dict(plain.state_dict())
    counts = count_layer_forwards(checkpointed)
    batch = random_batch(SMALL)
    with torch.no_grad():
        expected = plain.eval()(*batch).loss
        assert torch.equal(checkpointed.eval()(*batch).loss, expected)
        checkpointed.train()(*batch)  # training mode, but no backward pass to recompute for
    assert counts == [2, 2]


def test_gradient_checkpointing_key_loads_exports_and_overrides():
    from pretrain.config import RunConfig
    from pretrain.trainer import build_model

    old = {k: v for k, v in SMALL.to_dict().items() if k != "gradient_checkpointing"}  # before the key existed
    assert ModelConfig.from_dict(old).gradient_checkpointing is False
    assert ModelConfig.preset("squeezebert-base").gradient_checkpointing is False
    on = dataclasses.replace(SMALL, gradient_checkpointing=True)
    assert "gradient_checkpointing" not in transformers_config(on)
    assert ModelConfig.from_dict(on.to_dict()) == on  # checkpoints and model folders keep it
    model = build_model(RunConfig(model="squeezebert-tiny", model_overrides={"gradient_checkpointing": True}))
    assert model.transformer.config.gradient_checkpointing is True
    with pytest.raises(ConfigError, match="model.gradient_checkpointing 'yes': must be true or false"):
        build_model(RunConfig(model="squeezebert-tiny", model_overrides={"gradient_checkpointing": "yes"}))


def test_gradient_checkpointing_applies_to_a_model_loaded_with_init_from(tmp_path):
    """The README's separate phase-2 run starts from init_from: the switch must reach that model too, and an
    override that would contradict the loaded weights is refused."""
    from pretrain.config import RunConfig, RunConfigError
    from pretrain.trainer import build_model

    save_model_folder(SqueezeBertForPretraining(SMALL), str(tmp_path / "phase1"))
    loaded = build_model(RunConfig(init_from=str(tmp_path / "phase1"),
                                   model_overrides={"gradient_checkpointing": True}))
    assert loaded.transformer.config.gradient_checkpointing is True
    with pytest.raises(RunConfigError, match=r"model_overrides \['hidden_size'\]: a model loaded from init_from"):
        build_model(RunConfig(init_from=str(tmp_path / "phase1"), model_overrides={"hidden_size": 64}))


def test_an_mlm_only_model_has_no_sop_head_and_its_loss_is_the_mlm_loss():
    config = ModelConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)
    model = SqueezeBertForPretraining(config, sop=False).eval()
    assert not any("sop" in name for name in model.state_dict())
    ids = torch.randint(5, 512, (2, 16))
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    output = model(ids, torch.ones_like(ids), torch.zeros_like(ids), labels, torch.zeros(2, dtype=torch.long))
    assert output.sop_logits is None and output.sop_loss.item() == 0 and torch.equal(output.loss, output.mlm_loss)


# The grouped GEMMs (issue 17) against transformers' formulation: nn.Conv1d's arithmetic on [N, C, W].


def conv_pointwise(module: GroupedPointwise, x: torch.Tensor, reuse: str = "") -> torch.Tensor:
    """The reference: a grouped 1x1 convolution on [N, C, W], as transformers runs it (a new output always)."""
    return F.conv1d(x.transpose(1, 2), module.weight, module.bias, groups=module.groups).transpose(1, 2)


def conv_self_attention(module: SelfAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The reference: three convolutions, heads split as transformers splits them, the same `attention`."""
    n, w, c = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:  # [N, W, C] -> [N, H, W, C/H]
        return t.reshape(n, w, module.heads, c // module.heads).permute(0, 2, 1, 3)

    q, k, v = (heads(conv_pointwise(part, x)) for part in (module.query, module.key, module.value))
    context = attention(q, k, v, mask, module.dropout_prob, module.training)
    return context.permute(0, 2, 1, 3).reshape(n, w, c)


def with_convolutions(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every grouped pointwise layer and attention running the reference formulation."""
    for module in model.modules():
        if isinstance(module, GroupedPointwise):
            module.forward = types.MethodType(conv_pointwise, module)
        elif isinstance(module, SelfAttention):
            module.forward = types.MethodType(conv_self_attention, module)
    return model


def assert_gradients_close(gradients: dict, expected: dict, rtol: float = 1e-4) -> None:
    """Every gradient within rtol of the largest gradient (the key bias's is zero up to rounding: softmax does
    not see a shift shared by every key, so an elementwise relative test would compare rounding noise)."""
    assert gradients.keys() == expected.keys()
    scale = max(g.abs().max().item() for g in expected.values())
    for name, gradient in expected.items():
        assert (gradients[name] - gradient).abs().max().item() <= rtol * scale, name


GROUPINGS = {  # (q, k, v groups), heads: which attention path each takes
    "fused, grouped": ((4, 4, 4), 4),  # head size 24 = C/g: one head per group
    "fused, one group": ((1, 1, 1), 4),  # one GEMM of width 3C
    "fused, heads per group": ((2, 2, 2), 4),  # two heads per group
    "separate, groups differ": ((4, 2, 1), 4),
    "separate, a head straddles groups": ((4, 4, 4), 2),  # head size 48, group width 24
}


@pytest.mark.parametrize("grouping", GROUPINGS)
def test_fused_qkv_and_copy_free_gemms_match_convolutions(grouping):
    """A training step (dropout on, the same masks) of this model against the same weights run as transformers
    runs them: the same loss and gradients, for every grouping of q, k and v."""
    (q, k, v), heads = GROUPINGS[grouping]
    config = dataclasses.replace(SMALL, q_groups=q, k_groups=k, v_groups=v, num_attention_heads=heads)
    assert fuses_qkv(config) == grouping.startswith("fused")
    torch.manual_seed(0)
    model = SqueezeBertForPretraining(config).train()
    reference = with_convolutions(SqueezeBertForPretraining(config).train())
    reference.load_state_dict(model.state_dict())
    batch = random_batch(config, n=2, w=32)
    results = []
    for candidate in (model, reference):
        torch.manual_seed(7)  # the dropout masks: both draw them in the same order
        loss = candidate(*batch).loss
        loss.backward()
        results.append((loss.detach(), {name: p.grad for name, p in candidate.named_parameters()}))
    (loss, gradients), (expected_loss, expected_gradients) = results
    assert torch.allclose(loss, expected_loss, rtol=1e-6, atol=0)
    assert_gradients_close(gradients, expected_gradients)


class CopyRecorder(TorchDispatchMode):
    """The aten ops that write a copy of a tensor, with its number of elements, as dispatched (an op's own
    internals are not seen)."""

    COPIES = {"aten.clone.default", "aten.copy_.default", "aten._unsafe_view.default", "aten.contiguous.default"}

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.COPIES:
            self.copies.append((str(func), args[0].numel()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("groups", [1, 4])
def test_grouped_pointwise_copies_no_activation_and_matches_conv1d(groups):
    torch.manual_seed(0)
    module = GroupedPointwise(32, 64, groups)
    torch.nn.init.normal_(module.weight)
    torch.nn.init.normal_(module.bias)
    x = torch.randn(4, 100, 32, requires_grad=True)  # activations of 12800 and 25600 elements
    upstream = torch.randn(4, 100, 64)
    recorder = CopyRecorder()
    with recorder:
        out = module(x)
        out.backward(upstream)
    # Neither the output nor a gradient changed layout; the weight's gradient ([g, c_in/g, c_out/g] from the
    # GEMM) is transposed, a copy of at most 2048 elements.
    assert all(numel <= module.weight.numel() for _, numel in recorder.copies), recorder.copies
    assert out.is_contiguous() and out.shape == (4, 100, 64)
    gradients = [x.grad, module.weight.grad, module.bias.grad]
    for tensor in (x, module.weight, module.bias):
        tensor.grad = None
    expected = conv_pointwise(module, x)
    expected.backward(upstream)
    assert torch.allclose(out, expected, atol=1e-4)
    for gradient, tensor in zip(gradients, (x, module.weight, module.bias)):
        assert gradient.shape == tensor.shape and torch.allclose(gradient, tensor.grad, rtol=1e-5, atol=1e-3)


def test_grouped_pointwise_under_autocast_computes_in_bf16_and_returns_fp32_gradients():
    torch.manual_seed(0)
    weight = torch.randn(64, 8, requires_grad=True)
    bias = torch.randn(64, requires_grad=True)
    x = torch.randn(2, 5, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = grouped_pointwise(x, weight, bias, 4)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert (x.grad.dtype, weight.grad.dtype, bias.grad.dtype) == (torch.float32,) * 3
    expected = F.conv1d(x.detach().transpose(1, 2), weight.detach()[..., None], bias.detach(), groups=4)
    assert torch.allclose(out.float(), expected.transpose(1, 2), rtol=0.02, atol=0.1)


def intermediate_outputs(model: SqueezeBertForPretraining, grad: bool, batch) -> tuple[list[int], torch.Tensor]:
    """The data pointers of every layer's intermediate output, and the hidden states, of one forward."""
    pointers, hooks = [], [layer.intermediate.register_forward_hook(lambda _m, _i, out: pointers.append(out.data_ptr()))
                           for layer in model.transformer.encoder.layers]
    try:
        with torch.set_grad_enabled(grad):
            hidden, _ = model.transformer(*batch[:3])
    finally:
        for hook in hooks:
            hook.remove()
    return pointers, hidden.detach()


def test_a_forward_without_autograd_reuses_the_layers_large_outputs_and_gives_the_same_values(monkeypatch):
    import contextlib

    import pretrain.model

    torch.manual_seed(0)
    model = SqueezeBertForPretraining(dataclasses.replace(SMALL, num_hidden_layers=3)).eval()
    batch = random_batch(SMALL)
    pointers, hidden = intermediate_outputs(model, False, batch)
    assert len(set(pointers)) == 1  # one buffer for every layer's intermediate output
    grad_pointers, grad_hidden = intermediate_outputs(model, True, batch)
    assert len(set(grad_pointers)) == 3  # the autograd graph keeps each layer's
    monkeypatch.setattr(pretrain.model, "reused_outputs", contextlib.nullcontext)
    fresh_pointers, fresh_hidden = intermediate_outputs(model, False, batch)
    assert torch.equal(hidden, fresh_hidden) and torch.equal(hidden, grad_hidden)
    with torch.inference_mode():
        assert torch.equal(model.transformer(*batch[:3])[0], hidden)


def test_fused_qkv_keeps_transformers_parameter_names_and_shapes():
    ours = SqueezeBertForPretraining(SMALL).state_dict()
    theirs = hf_model(SMALL).state_dict()
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert {k: v.shape for k, v in ours.items() if not k.startswith("sop_classifier.")} == {
        k: v.shape for k, v in theirs.items() if k not in tied}
    assert ours["transformer.encoder.layers.0.attention.query.weight"].shape == (96, 24, 1)  # [C, C/g, 1]


# The compiled model (`ModelConfig.compile`): small, since compiling costs tens of seconds on two cores.


def compiled_training_step(config: ModelConfig, model: SqueezeBertForPretraining, seed: int = 7):
    batch = random_batch(config, n=2, w=32)
    torch.manual_seed(seed)  # the dropout masks, as the trainer seeds every micro-step
    model.zero_grad(set_to_none=True)
    loss = model(*batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_compiled_layer_is_one_graph(training):
    """Dynamo traces a whole encoder layer into one graph, with and without gradients (a graph break would leave
    eager Python between compiled pieces: CPU-only checks such as `Tensor._is_view` returned a bool and broke it)."""
    layer = SqueezeBertLayer(SMALL).train(training)
    x = torch.randn(2, 16, SMALL.hidden_size, requires_grad=training)
    mask = torch.ones(2, 1, 1, 16, dtype=torch.bool)
    mask[1, ..., 10:] = False
    torch._dynamo.reset()
    with torch.set_grad_enabled(training):
        explained = torch._dynamo.explain(layer)(x, mask)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compiled_layers_keep_the_state_dict_draw_eagers_masks_and_repeat_exactly():
    config = dataclasses.replace(SMALL, compile=True)
    torch.manual_seed(0)
    compiled = SqueezeBertForPretraining(config).train()
    eager = SqueezeBertForPretraining(SMALL).train()
    eager.load_state_dict(compiled.state_dict())
    keys = list(compiled.state_dict())
    loss, gradients = compiled_training_step(config, compiled)
    assert compiled.transformer.layers_compiled and list(compiled.state_dict()) == keys  # no `_orig_mod.`
    eager_loss, eager_gradients = compiled_training_step(SMALL, eager)
    # Dropout on: the compiled layers drew the same masks; only the fused kernels' rounding differs.
    assert torch.allclose(loss, eager_loss, rtol=1e-5, atol=0)
    assert_gradients_close(gradients, eager_gradients)
    again_loss, again_gradients = compiled_training_step(config, compiled)  # same seed, same result, bitwise
    assert torch.equal(again_loss, loss)
    assert all(torch.equal(again_gradients[name], gradient) for name, gradient in gradients.items())
    other_loss, _ = compiled_training_step(config, compiled, seed=8)
    assert not torch.equal(other_loss, loss)  # dropout is on: equal masks were what made them equal
    checkpointed = SqueezeBertForPretraining(dataclasses.replace(config, gradient_checkpointing=True)).train()
    checkpointed.load_state_dict(compiled.state_dict())
    counts = count_layer_forwards(checkpointed)
    checkpointed_loss, checkpointed_gradients = compiled_training_step(config, checkpointed)
    assert counts == [2, 2]  # recomputed in the backward pass, with the same masks and kernels
    assert torch.equal(checkpointed_loss, loss)
    assert all(torch.equal(checkpointed_gradients[name], gradient) for name, gradient in gradients.items())


def test_compile_key_is_a_runtime_switch(tmp_path):
    from pretrain.config import RunConfig
    from pretrain.trainer import build_model

    old = {k: v for k, v in SMALL.to_dict().items() if k != "compile"}  # a model folder from before the key
    assert ModelConfig.from_dict(old).compile is False
    on = dataclasses.replace(SMALL, compile=True)
    assert "compile" not in transformers_config(on)
    assert ModelConfig.from_dict(on.to_dict()) == on
    model = SqueezeBertForPretraining(on)
    save_model_folder(model, str(tmp_path / "folder"))  # the weights of a compiled model are the eager model's
    assert load_model_folder(str(tmp_path / "folder")).config.compile is True
    export_headless(model, str(tmp_path / "export"))
    assert SqueezeBertForMaskedLM.from_pretrained(str(tmp_path / "export")) is not None
    built = build_model(RunConfig(model="squeezebert-tiny", model_overrides={"compile": True}))
    assert built.transformer.config.compile is True
    with pytest.raises(ConfigError, match="model.compile 'yes': must be true or false"):
        build_model(RunConfig(model="squeezebert-tiny", model_overrides={"compile": "yes"}))


def test_activation_checkpointing_recomputes_under_the_attention_kernels_of_the_forward():
    """Strict determinism allows SDPA only its math kernel inside the forward; the checkpoint's recomputation runs
    in the backward, after that choice has ended, and with another kernel torch refuses the recomputed tensors
    (CheckpointError). No dropout, so CPU training takes SDPA as CUDA training always does."""
    from pretrain.pretraining_model import SqueezeBertForPretraining

    values = {**ModelConfig.preset("squeezebert-tiny").to_dict(), "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0, "gradient_checkpointing": True}
    torch.manual_seed(0)
    model = SqueezeBertForPretraining(ModelConfig.from_dict(values)).train()
    batch = random_batch(model.config, n=2, w=16)
    losses = {}
    for determinism in ("default", "strict"):
        model.zero_grad()
        model.run_in(torch.device("cpu"), "fp32", determinism)
        output = model(*batch)
        output.loss.backward()
        losses[determinism] = output.loss.item()
    assert losses["strict"] == pytest.approx(losses["default"], rel=1e-6)

