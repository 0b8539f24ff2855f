"""The headless export of a finetuned classifier (the chain's MNLI → headless hand-off) carries no head
metadata, so run_glue's own loading path makes any task's head from it."""

import os

import pytest
import torch

from finetune.data import load_task
from finetune.run import load_student, save_headless
from finetune.tasks import get_task
from tests.conftest import ASSETS


@pytest.fixture()
def pretrained(vocab_dir, tmp_path):
    """A tiny SqueezeBERT written by `pretrain export` (random weights, the fixture vocabulary)."""
    from pretrain.model import ModelConfig
    from pretrain.model_files import export_headless
    from pretrain.pretraining_model import SqueezeBertForPretraining

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=6000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)
    export_headless(SqueezeBertForPretraining(config), str(tmp_path / "pretrained"), vocab_dir)
    return str(tmp_path / "pretrained")


def test_the_headless_export_of_an_mnli_student_trains_a_step_on_stsb_as_run_glue_loads_it(pretrained, tmp_path):
    """Loaded as run_glue loads a model for STS-B (`num_labels=1`), a float label's loss is a regression's;
    before, the MNLI head's `problem_type` came along and the first loss raised (target dtype Long)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    mnli_student = load_student(pretrained, get_task("mnli"), seed=1)
    assert mnli_student.config.problem_type == "single_label_classification"
    headless = str(tmp_path / "headless")
    save_headless(mnli_student, headless)
    assert mnli_student.config.id2label[2] == "contradiction"  # the student itself keeps its labels
    stsb = load_task(get_task("stsb"), os.path.join(ASSETS, "glue"), with_test=False)["train"].select(range(8))
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    for folder in (headless, pretrained):
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
        assert model.config.problem_type is None and model.config.id2label == {0: "LABEL_0"}, folder
        batch = tokenizer(list(stsb["sentence1"]), list(stsb["sentence2"]), padding=True, truncation=True,
                          max_length=64, return_tensors="pt")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss = model(**batch, labels=torch.tensor(list(stsb["label"]), dtype=torch.float32)).loss
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and model.config.problem_type == "regression", folder
