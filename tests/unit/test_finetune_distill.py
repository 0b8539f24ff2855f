"""The distillation loss against its formula computed by hand, and the teacher-output cache."""

import json
import math
import os

import numpy as np
import pytest
import torch

from finetune.distill import distillation_loss, teacher_label_order, teacher_outputs
from finetune.tasks import get_task


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_the_loss_is_alpha_ce_plus_t_squared_kl_teacher_to_student():
    student, teacher, label, alpha, temperature = [2.0, 0.5, -1.0], [0.0, 1.5, 0.3], 0, 0.3, 2.0
    p_student, p_teacher = softmax(student, temperature), softmax(teacher, temperature)
    cross_entropy = -math.log(softmax(student, 1.0)[label])
    kl_teacher_student = sum(t * math.log(t / s) for t, s in zip(p_teacher, p_student))
    kl_student_teacher = sum(s * math.log(s / t) for t, s in zip(p_teacher, p_student))
    expected = alpha * cross_entropy + (1 - alpha) * temperature**2 * kl_teacher_student
    loss = distillation_loss(torch.tensor([student]), torch.tensor([label]), torch.tensor([teacher]), alpha,
                             temperature, regression=False)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    reverse = alpha * cross_entropy + (1 - alpha) * temperature**2 * kl_student_teacher
    assert abs(reverse - expected) > 1e-3  # the case tells the two directions apart
    # a batch is the mean of its rows; bf16 logits are computed in fp32 (bf16 arithmetic would be off by ~1e-2)
    rows, labels, teachers = torch.tensor([student, teacher]).bfloat16(), [0, 1], [teacher, student]
    batch = distillation_loss(rows, torch.tensor(labels), torch.tensor(teachers), alpha, temperature,
                              regression=False)
    assert batch.dtype == torch.float32
    each = [distillation_loss(rows[i : i + 1].float(), torch.tensor(labels[i : i + 1]), torch.tensor([teachers[i]]),
                              alpha, temperature, regression=False).item() for i in range(2)]
    assert abs(each[0] - each[1]) > 1e-2  # rows whose mean differs from either row and from their sum
    assert batch.item() == pytest.approx(sum(each) / 2, rel=1e-6)


def test_the_regression_loss_is_mse_to_label_and_teacher():
    loss = distillation_loss(torch.tensor([[3.0], [1.0]]), torch.tensor([2.0, 1.5]), torch.tensor([[4.0], [0.0]]),
                             0.25, 2.0, regression=True)
    expected = 0.25 * ((1.0**2 + 0.5**2) / 2) + 0.75 * ((1.0**2 + 1.0**2) / 2)
    assert loss.item() == pytest.approx(expected)


def test_a_teacher_that_names_its_labels_in_another_order_is_reordered():
    mnli = get_task("mnli")
    assert teacher_label_order(mnli, {0: "contradiction", 1: "entailment", 2: "neutral"}) == [1, 2, 0]
    assert teacher_label_order(mnli, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}) is None
    assert teacher_label_order(mnli, {0: "entailment", 1: "neutral", 2: "contradiction"}) is None


@pytest.fixture()
def tiny_teacher(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] the a of and in to is was he she it cat dog".split()
    (tmp_path / "vocab.txt").write_text("\n".join(words + list("abcdefghijklmnopqrstuvwxyz")) + "\n")
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(words) + 26, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    folder = tmp_path / "teacher"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_teacher_outputs_are_cached_checked_by_sha256_and_rebuilt_when_stale(tiny_teacher, tmp_path, capsys):
    import datasets

    rte = get_task("rte")
    data = datasets.Dataset.from_dict({"sentence1": ["the cat", "a dog was here", "it is"],
                                       "sentence2": ["x", "y", "z"], "label": [0, 1, 0], "idx": [0, 1, 2]})
    cache = str(tmp_path / "cache")
    first = teacher_outputs(tiny_teacher, rte, data, "data-a", 32, cache, "cpu")
    assert first.shape == (3, 2) and "computing" in capsys.readouterr().err
    (array,) = [name for name in os.listdir(cache) if name.endswith(".npy")]
    again = teacher_outputs(tiny_teacher, rte, data, "data-a", 32, cache, "cpu")
    assert np.array_equal(first, again) and "from the cache" in capsys.readouterr().err
    # a damaged cache file no longer matches its recorded sha256: rebuilt
    path = os.path.join(cache, array)
    damaged = np.load(path) + 1
    np.save(path, damaged)
    rebuilt = teacher_outputs(tiny_teacher, rte, data, "data-a", 32, cache, "cpu")
    assert np.array_equal(rebuilt, first) and "do not match" in capsys.readouterr().err
    # other data (fingerprint) or another teacher (its files' hashes): another key, another file
    teacher_outputs(tiny_teacher, rte, data, "data-b", 32, cache, "cpu")
    with open(os.path.join(tiny_teacher, "config.json")) as handle:
        config = json.load(handle)
    config["initializer_range"] = 0.03  # any change of a teacher's file changes its key
    with open(os.path.join(tiny_teacher, "config.json"), "w") as handle:
        json.dump(config, handle)
    teacher_outputs(tiny_teacher, rte, data, "data-a", 32, cache, "cpu")
    assert len([name for name in os.listdir(cache) if name.endswith(".npy")]) == 3


class Payload:
    """Unpickling it creates a file: what a pickle from elsewhere can do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_in_the_teacher_cache_is_not_loaded_and_the_outputs_are_computed_again(tiny_teacher, tmp_path,
                                                                                          capsys):
    """A shared `--teacher-cache` holding an .npy of pickled objects with a matching record (whoever wrote the
    file wrote its sha256 too): read without unpickling, taken for damaged, rebuilt."""
    import datasets

    from formats.files import file_sha256

    rte = get_task("rte")
    data = datasets.Dataset.from_dict({"sentence1": ["the cat", "a dog"], "sentence2": ["x", "y"], "label": [0, 1],
                                       "idx": [0, 1]})
    cache = tmp_path / "cache"
    first = teacher_outputs(tiny_teacher, rte, data, "data-a", 32, str(cache), "cpu")
    (array,) = cache.glob("*.npy")
    marker = tmp_path / "payload-ran"
    np.save(array, np.array([Payload(str(marker)), Payload(str(marker))], dtype=object), allow_pickle=True)
    record_path = array.with_suffix(".json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "sha256": file_sha256(str(array))}))
    capsys.readouterr()
    again = teacher_outputs(tiny_teacher, rte, data, "data-a", 32, str(cache), "cpu")
    assert not marker.exists()
    assert np.array_equal(again, first) and "computing them again" in capsys.readouterr().err
    assert np.load(array, allow_pickle=False).dtype == np.float32  # the rebuilt file
