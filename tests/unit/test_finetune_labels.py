"""Label ids by name for models: a student's own classifier reordered to the task's labels, a student or
teacher for another task refused in one line (`finetune.labels`, `finetune.run.load_student`,
`finetune.distill.check_teacher`)."""

import os
from pathlib import Path

import pytest
import torch

from finetune.distill import TeacherError, check_teacher
from finetune.model_folder import ModelFolderError
from finetune.run import load_student
from finetune.tasks import get_task

WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] the a of and in to is was he she it cat dog".split() + list(
    "abcdefghijklmnopqrstuvwxyz")


def tiny_classifier(folder, labels, positions=64):
    """A tiny SqueezeBERT classifier naming its labels `labels` (in its own output order), with a tokenizer."""
    from transformers import BertTokenizerFast, SqueezeBertConfig, SqueezeBertForSequenceClassification

    torch.manual_seed(0)
    config = SqueezeBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, embedding_size=32, max_position_embeddings=positions,
                               num_labels=len(labels), id2label=dict(enumerate(labels)),
                               label2id={name: i for i, name in enumerate(labels)})
    model = SqueezeBertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    (Path(folder) / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizerFast(str(Path(folder) / "vocab.txt")).save_pretrained(folder)
    return model


def test_a_student_with_an_mnli_classifier_in_another_order_keeps_its_outputs_under_the_tasks_names(tmp_path):
    """CONTRADICTION/NEUTRAL/ENTAILMENT (upper case, another order): output i of the loaded student is what the
    saved model called the task's label i; before, its contradiction output was read as entailment."""
    saved = tiny_classifier(tmp_path / "mnli", ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"])
    loaded = load_student(str(tmp_path / "mnli"), get_task("mnli"), seed=1).eval()
    inputs = torch.tensor([[2, 17, 40, 3], [2, 5, 3, 0]])
    with torch.no_grad():
        before, after = saved(inputs).logits, loaded(inputs).logits
    torch.testing.assert_close(after, before[:, [2, 1, 0]])  # entailment, neutral, contradiction
    assert loaded.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}


def test_a_student_with_generic_labels_keeps_its_order_and_one_for_another_task_is_refused(tmp_path):
    saved = tiny_classifier(tmp_path / "generic", ["LABEL_0", "LABEL_1"])
    loaded = load_student(str(tmp_path / "generic"), get_task("rte"), seed=1).eval()
    inputs = torch.tensor([[2, 17, 40, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs).logits, saved(inputs).logits)
    tiny_classifier(tmp_path / "sst2", ["negative", "positive"])
    with pytest.raises(ModelFolderError) as raised:
        load_student(str(tmp_path / "sst2"), get_task("rte"), seed=1)
    assert str(raised.value).startswith(f"--model {tmp_path / 'sst2'}: a classifier for another task (its labels "
                                        "are ['negative', 'positive'], not rte's") and "\n" not in str(raised.value)
    load_student(str(tmp_path / "sst2"), get_task("mnli"), seed=1)  # another size: a new classifier, no conflict


def test_a_teacher_for_another_task_with_as_many_labels_is_refused_in_one_line(tmp_path):
    tiny_classifier(tmp_path / "sst2", ["negative", "positive"])
    with pytest.raises(TeacherError) as raised:
        check_teacher(str(tmp_path / "sst2"), get_task("rte"))
    assert str(raised.value) == (f"--teacher {tmp_path / 'sst2'}: its labels are ['negative', 'positive'], not rte's "
                                 "['entailment', 'not_entailment']; use a teacher finetuned on rte")
    check_teacher(str(tmp_path / "sst2"), get_task("sst2"))
    tiny_classifier(tmp_path / "upper", ["NOT_ENTAILMENT", "ENTAILMENT"])
    check_teacher(str(tmp_path / "upper"), get_task("rte"))  # the task's names in another order and case
    for name in os.listdir(tmp_path / "upper"):  # weights and config only: every word would be [UNK]
        if name not in ("config.json", "model.safetensors"):
            os.remove(tmp_path / "upper" / name)
    with pytest.raises(ModelFolderError, match=r"--teacher .*upper: no usable tokenizer files"):
        check_teacher(str(tmp_path / "upper"), get_task("rte"))
