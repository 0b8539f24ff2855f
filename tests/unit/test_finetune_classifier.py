"""`finetune.classifier.SqueezeBertClassifier` against transformers' `SqueezeBertForSequenceClassification`
(the real class, same folder): logits, losses and gradients agree, padding changes no real token's output, and
a model saved by either loads in the other with no missing or unexpected key."""

import json
import os

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    SqueezeBertConfig,
    SqueezeBertForSequenceClassification,
)
from transformers.utils import logging as transformers_logging

from finetune.classifier import SqueezeBertClassifier, SqueezeBertEncoder, supports
from finetune.model_folder import ModelFolderError, load_classifier

TINY = dict(vocab_size=300, hidden_size=64, embedding_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64)  # the paper's groups: q/k/v 4, post 1, inner 4, out 4
NO_KEYS_LEFT = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}


@pytest.fixture(autouse=True)
def quiet():
    transformers_logging.set_verbosity_error()  # the load reports of the expected fresh classifiers
    transformers_logging.disable_progress_bar()


def transformers_folder(folder, num_labels, **extra):
    """transformers' classifier with random weights (classifier included), saved to `folder`."""
    torch.manual_seed(0)
    SqueezeBertForSequenceClassification(SqueezeBertConfig(**TINY, num_labels=num_labels, **extra)).save_pretrained(
        folder)
    return str(folder)


def both(folder):
    """transformers' class and the project's, loaded from the same folder, in eval mode."""
    reference, info = SqueezeBertForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    ours, our_info = SqueezeBertClassifier.from_pretrained(folder, output_loading_info=True)
    assert {key: info[key] for key in NO_KEYS_LEFT} == {key: our_info[key] for key in NO_KEYS_LEFT} == NO_KEYS_LEFT
    return reference.eval(), ours.eval()


def batch(seed=0, size=4, length=24):
    """Sentence pairs of several real lengths, padded to `length` (pad id 0)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, TINY["vocab_size"], (size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    token_type_ids = torch.zeros_like(input_ids)
    for row, real in enumerate(range(length, 0, -max(1, length // size))[:size]):
        input_ids[row, real:] = 0
        attention_mask[row, real:] = 0
        token_type_ids[row, real // 2:real] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


@pytest.mark.parametrize("num_labels, labels", [
    (3, torch.tensor([0, 2, 1, 2])),  # single-label classification (MNLI-like)
    (1, torch.tensor([0.5, 4.0, 2.5, 1.0])),  # regression (STS-B-like)
    (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])),  # multi-label
], ids=["classification", "regression", "multi_label"])
def test_logits_losses_and_gradients_match_transformers(tmp_path, num_labels, labels):
    reference, ours = both(transformers_folder(tmp_path, num_labels))
    inputs = batch()
    expected, got = reference(**inputs, labels=labels), ours(**inputs, labels=labels)
    assert torch.allclose(got.logits, expected.logits, rtol=0, atol=1e-5), (got.logits - expected.logits).abs().max()
    assert torch.allclose(got.loss, expected.loss, rtol=1e-6, atol=1e-6)
    assert ours.config.problem_type == reference.config.problem_type  # decided from the labels, the same way
    expected.loss.backward()
    got.loss.backward()
    ours_gradients = dict(ours.named_parameters())
    gradients = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    largest = max(float(gradient.abs().max()) for gradient in gradients.values())
    assert set(gradients) == {name for name, p in ours_gradients.items() if p.grad is not None}
    for name, gradient in gradients.items():
        # relative to the tensor's own scale, or to the model's for gradients that are zero in exact arithmetic
        # (the key bias: softmax ignores a shift of every score)
        scale = max(float(gradient.abs().max()), 1e-3 * largest)
        assert float((ours_gradients[name].grad - gradient).abs().max()) <= 1e-4 * scale, name


def test_padding_changes_no_output_of_the_real_tokens(tmp_path):
    """A sequence alone and the same sequence padded to 3x its length beside longer ones: the same logits."""
    _, ours = both(transformers_folder(tmp_path, 2))
    inputs = batch(length=30)
    real = int(inputs["attention_mask"][2].sum())
    alone = {key: value[2:3, :real] for key, value in inputs.items()}
    with torch.no_grad():
        padded_logits = ours(**inputs).logits[2]
        alone_logits = ours(**alone).logits[0]
        hidden_padded = ours.transformer(**inputs).last_hidden_state[2, :real]
        hidden_alone = ours.transformer(**alone).last_hidden_state[0]
    assert real < 30 and torch.allclose(padded_logits, alone_logits, rtol=0, atol=1e-5)
    assert torch.allclose(hidden_padded, hidden_alone, rtol=0, atol=1e-5)


def test_a_model_saved_by_either_loads_in_the_other_with_every_key(tmp_path):
    reference, ours = both(transformers_folder(tmp_path / "transformers", 3))
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architectures"] == ["SqueezeBertForSequenceClassification"] and config["model_type"] == "squeezebert"
    loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert type(loaded) is SqueezeBertForSequenceClassification
    assert {key: info[key] for key in NO_KEYS_LEFT} == NO_KEYS_LEFT
    assert set(loaded.state_dict()) == set(ours.state_dict()) == set(reference.state_dict())
    inputs = batch(seed=1)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(**inputs).logits, ours(**inputs).logits, rtol=0, atol=1e-5)


def test_a_headless_model_saved_by_either_loads_in_both_with_only_the_classifier_new(tmp_path):
    reference, ours = both(transformers_folder(tmp_path / "transformers", 3))
    reference.base_model.save_pretrained(tmp_path / "headless_transformers")
    ours.base_model.save_pretrained(tmp_path / "headless_ours")  # what `finetune --headless` writes
    assert isinstance(ours.base_model, SqueezeBertEncoder)
    config = json.loads((tmp_path / "headless_ours" / "config.json").read_text())
    assert config["architectures"] == ["SqueezeBertModel"]
    for folder in ("headless_transformers", "headless_ours"):
        for model_class in (SqueezeBertForSequenceClassification, SqueezeBertClassifier):
            _, info = model_class.from_pretrained(tmp_path / folder, num_labels=2, output_loading_info=True)
            assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"], (folder, model_class)
            assert not info["unexpected_keys"], (folder, model_class)


def test_a_fresh_model_is_initialized_as_bert_and_moves_with_train_and_eval():
    torch.manual_seed(0)
    model = SqueezeBertClassifier(SqueezeBertConfig(**TINY, num_labels=2))
    query = model.transformer.encoder.layers[0].attention.query.weight.detach()
    assert abs(float(query.std()) - 0.02) < 0.003 and float(model.classifier.bias.detach().abs().max()) == 0.0
    assert float(model.transformer.embeddings.word_embeddings.weight[0].detach().abs().max()) == 0.0  # the padding row
    model.eval()
    assert not model.transformer.project.training and not model.transformer.encoder.layers[0].training
    model.train()
    assert model.transformer.project.training and model.dropout.training


def test_the_trainers_arguments_work_and_unsupported_ones_are_refused(tmp_path):
    _, ours = both(transformers_folder(tmp_path, 2))
    inputs = batch()
    as_tuple = ours(**inputs, labels=torch.tensor([0, 1, 1, 0]), return_dict=False)
    assert len(as_tuple) == 2 and as_tuple[1].shape == (4, 2)
    assert ours(**inputs, num_items_in_batch=torch.tensor(4)).logits.shape == (4, 2)  # what a Trainer may pass
    with pytest.raises(ValueError, match="--implementation transformers"):
        ours(**inputs, output_hidden_states=True)


def test_load_classifier_picks_the_class_by_implementation(tmp_path):
    squeezebert = transformers_folder(tmp_path / "squeezebert", 2)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(
        tmp_path / "bert")
    bert = str(tmp_path / "bert")
    assert type(load_classifier(squeezebert, implementation="auto")) is SqueezeBertClassifier
    assert type(load_classifier(squeezebert, implementation="project")) is SqueezeBertClassifier
    assert type(load_classifier(squeezebert, implementation="transformers")) is SqueezeBertForSequenceClassification
    assert type(load_classifier(squeezebert)) is SqueezeBertForSequenceClassification  # teachers: transformers'
    assert type(load_classifier(bert, implementation="auto")) is BertForSequenceClassification
    with pytest.raises(ModelFolderError, match=r"--model .*bert: .*not 'squeezebert'.*--implementation transformers"):
        load_classifier(bert, implementation="project")


def test_configs_the_project_encoder_does_not_implement_go_to_transformers(tmp_path):
    assert supports(SqueezeBertConfig(**TINY)) is None
    assert "hidden_act" in supports(SqueezeBertConfig(**{**TINY, "hidden_act": "relu"}))
    folder = transformers_folder(tmp_path, 2, hidden_act="relu")
    assert type(load_classifier(folder, implementation="auto")) is SqueezeBertForSequenceClassification
    with pytest.raises(ModelFolderError, match="hidden_act"):
        load_classifier(folder, implementation="project")
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))


def test_implementation_is_a_checked_setting():
    from finetune.config import FinetuneConfigError, build_config

    settings = {"task": "rte", "model": "m", "out": "o"}
    assert build_config(("", settings)).implementation == "auto"
    assert build_config(("", {**settings, "implementation": "transformers"})).implementation == "transformers"
    with pytest.raises(FinetuneConfigError, match="--implementation fast: one of auto, project, transformers"):
        build_config(("", {**settings, "implementation": "fast"}))
