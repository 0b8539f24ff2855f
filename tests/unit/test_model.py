"""The model against transformers' SqueezeBERT: parity, masks, gradients, export/import, FLOPs; checkpointing."""

import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import SqueezeBertConfig, SqueezeBertForMaskedLM, SqueezeBertForSequenceClassification

from pretrain.model import ConfigError, ModelConfig, count_parameters, flops_per_token, step_flops
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
    from pretrain.model import attention, dropout_keep_mask

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=generator) for _ in range(3))
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[1, ..., 6:] = False
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    tiny_p = 1e-9  # takes the training path but keeps every element
    assert torch.allclose(attention(q, k, v, mask, tiny_p, training=True), reference * (1 / (1 - tiny_p)), atol=1e-6)
    keep = dropout_keep_mask(torch.Size([400, 1000]), 0.1, torch.device("cpu"))
    assert abs(keep.float().mean().item() - 0.9) < 0.003


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
