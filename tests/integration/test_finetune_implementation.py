"""`python -m finetune glue` on a SqueezeBERT folder runs the project's classifier by default and transformers'
with `--implementation transformers`; without dropout the two train the same steps to the same model, and
what either writes loads in transformers unchanged."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ASSETS, ROOT

GLUE = os.path.join(ASSETS, "glue")


@pytest.fixture(scope="module")
def student_without_dropout(vocab_dir, tmp_path_factory):
    """A tiny SqueezeBERT export (the project's own export, random weights) with dropout off, so that the two
    implementations' runs differ by rounding only (their dropout samplers draw different masks). Two heads of
    32 channels in q/k/v groups of 16: the encoder's three-GEMM path (the unit tests take the fused one)."""
    from pretrain.model import ModelConfig
    from pretrain.model_files import export_headless
    from pretrain.pretraining_model import SqueezeBertForPretraining

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=6000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    folder = str(tmp_path_factory.mktemp("student") / "export")
    export_headless(SqueezeBertForPretraining(config), folder, vocab_dir)
    return folder


def finetune(student, out, *extra):
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "glue", "--task", "sst2", "--model", student, "--data", GLUE,
         "--out", str(out), "--batch-size", "8", "--max-steps", "6", "--eval-every-steps", "3", "--max-length", "48",
         "--learning-rate", "1e-3", "--warmup-fraction", "0", *extra],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr, json.loads((out / "results.json").read_text())


def dev_logits(folder):
    """Logits of the SST-2 fixture's dev sentences, by transformers' Auto classes alone."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == "SqueezeBertForSequenceClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    sentences = [line.split("\t")[0] for line in open(os.path.join(GLUE, "SST-2", "dev.tsv"), encoding="utf-8")][1:]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return model.eval()(**tokenizer(sentences, padding=True, truncation=True, max_length=48,
                                        return_tensors="pt")).logits


def test_the_project_classifier_by_default_and_transformers_on_request_train_alike(student_without_dropout,
                                                                                   tmp_path):
    ours_log, ours = finetune(student_without_dropout, tmp_path / "auto", "--headless")
    theirs_log, theirs = finetune(student_without_dropout, tmp_path / "transformers",
                                  "--implementation", "transformers")
    assert f"{student_without_dropout}: SqueezeBertClassifier," in ours_log
    assert f"{student_without_dropout}: SqueezeBertForSequenceClassification," in theirs_log
    assert ours["steps"] == theirs["steps"] == 6
    assert ours["config"]["implementation"] == "auto" and theirs["config"]["implementation"] == "transformers"
    config = json.loads((tmp_path / "auto" / "model" / "config.json").read_text())
    assert config["architectures"] == ["SqueezeBertForSequenceClassification"]
    ours_logits = dev_logits(tmp_path / "auto" / "model")
    theirs_logits = dev_logits(tmp_path / "transformers" / "model")
    assert float(ours_logits.std()) > 1e-3  # trained away from a constant
    assert torch.allclose(ours_logits, theirs_logits, rtol=0, atol=1e-3), (ours_logits - theirs_logits).abs().max()
    assert ours["dev"] == pytest.approx(theirs["dev"], abs=1e-6)  # 16 dev rows: the same predictions

    from transformers import SqueezeBertForSequenceClassification

    _, info = SqueezeBertForSequenceClassification.from_pretrained(tmp_path / "auto" / "headless", num_labels=3,
                                                                   output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"] and not info["unexpected_keys"]
