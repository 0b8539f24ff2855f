"""Distillation from a task-specific teacher: the loss, the teacher's outputs cached on disk, the Trainer.

Loss (classification) = alpha * CE(student, hard labels) + (1 - alpha) * T^2 * KL(p_teacher,T || p_student,T);
regression (STS-B): alpha * MSE(student, label) + (1 - alpha) * MSE(student, teacher's score). Why the KL runs
from the teacher to the student, and the defaults: README, "Distillation".

The teacher may tokenize differently from the student: its outputs are computed once, from the raw text with
its own tokenizer, and cached under a key of the training data's fingerprint, the teacher's files' sha256 and
the length limit. A cache file is trusted only when its sha256 matches the one recorded beside it and it holds
a float32 array (read without unpickling); a stale or damaged cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer

from formats.errors import UserError, one_line
from formats.files import atomic_write_bytes, file_sha256

from .labels import contradiction, id2label_names, output_order
from .model_folder import check_weights, load_classifier, load_tokenizer
from .tasks import Task

CACHE_FORMAT = 1


class TeacherError(UserError):
    """A teacher that cannot serve the task; the message names it."""


def distillation_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                      alpha: float, temperature: float, regression: bool) -> torch.Tensor:
    """The module docstring's loss, averaged over the batch, computed in fp32 whatever the autocast dtype."""
    student = student_logits.float()
    teacher = teacher_logits.float()
    if regression:
        student = student.view(-1)
        return alpha * F.mse_loss(student, labels.float()) + (1 - alpha) * F.mse_loss(student, teacher.view(-1))
    hard = F.cross_entropy(student, labels)
    soft = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True)  # KL(teacher || student): input is the student
    return alpha * hard + (1 - alpha) * temperature**2 * soft


class DistillationTrainer(Trainer):
    """transformers' Trainer whose training loss adds the teacher's term when a batch carries
    `teacher_logits`; evaluation batches (no teacher) use the model's own loss."""

    def __init__(self, *args, alpha: float = 0.5, temperature: float = 2.0, regression: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.temperature, self.regression = alpha, temperature, regression
        # the loss is a per-batch mean: the Trainer divides it by the accumulation steps itself
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_logits = inputs.pop("teacher_logits", None)
        if teacher_logits is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = distillation_loss(outputs.logits, labels, teacher_logits, self.alpha, self.temperature,
                                 self.regression)
        return (loss, outputs) if return_outputs else loss


class TeacherCollator:
    """Pads the token fields with the tokenizer and stacks the teacher's cached outputs beside them."""

    def __init__(self, tokenizer) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        teacher = [feature.pop("teacher_logits") for feature in features] if "teacher_logits" in features[0] else None
        batch = self.pad(features)
        if teacher is not None:
            batch["teacher_logits"] = torch.tensor(teacher, dtype=torch.float32)
        return batch


def folder_fingerprint(folder: str) -> str:
    """sha256 over the names and sha256 of every file of a model folder (weights, config, tokenizer)."""
    digest = hashlib.sha256()
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode())
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def teacher_label_order(task: Task, id2label: dict) -> list[int] | None:
    """Where each of the task's labels sits among the teacher's outputs, when the teacher names its labels
    (e.g. an MNLI teacher trained with another order); None when its names are generic (LABEL_0...)."""
    return output_order(task, id2label_names(id2label, task.num_labels))


def check_teacher(folder: str, task: Task):
    """The teacher's config and weights, checked against the task before any compute."""
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise TeacherError(f"--teacher {folder}: no config.json; not a transformers model folder")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as error:
        raise TeacherError(f"--teacher {folder}: unreadable config ({one_line(error, 160)})") from None
    if config.num_labels != task.num_labels:
        raise TeacherError(f"--teacher {folder}: it has {config.num_labels} labels, {task.name} has "
                           f"{task.num_labels}; use a teacher finetuned on {task.name}")
    problem = contradiction(task, id2label_names(config.id2label, config.num_labels))
    if problem:  # a teacher for another task with as many labels (SST-2's negative/positive for RTE)
        raise TeacherError(f"--teacher {folder}: {problem}; use a teacher finetuned on {task.name}")
    check_weights(folder, "--teacher")
    load_tokenizer(folder, "--teacher")  # it tokenizes the text itself: a folder without its vocabulary is refused
    return config


def _teacher_logits(folder: str, task: Task, dataset, max_length: int, device, batch_size: int = 64) -> np.ndarray:
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_classifier(folder, "--teacher").to(device).eval()
    texts = [dataset[column] for column in task.text_columns]
    collate = DataCollatorWithPadding(tokenizer)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            encoded = tokenizer(*(column[start:start + batch_size] for column in texts), truncation=True,
                                max_length=max_length)
            batch = collate([{key: encoded[key][i] for key in encoded} for i in range(len(encoded["input_ids"]))])
            outputs.append(model(**{key: value.to(device) for key, value in batch.items()}).logits.float())
    logits = torch.cat(outputs).cpu().numpy()  # one transfer at the end, not one per batch
    order = teacher_label_order(task, model.config.id2label)
    return logits[:, order] if order else logits


def _read_cached(path: str) -> np.ndarray | None:
    """A cached array of float32 logits, or None for anything else. `allow_pickle=False`: an .npy can hold
    pickled objects, and a cache folder shared across runs may hold a file that another hand wrote."""
    try:
        logits = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return logits if logits.dtype == np.float32 and logits.ndim == 2 else None


def teacher_outputs(folder: str, task: Task, dataset, data_fingerprint: str, max_length: int, cache_dir: str,
                    device) -> np.ndarray:
    """The teacher's logits for every row of `dataset`, from the cache when it is valid, else computed and
    cached (written atomically, its sha256 recorded beside it)."""
    key = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "data": data_fingerprint, "max_length": max_length,
                                     "teacher": folder_fingerprint(folder)}, sort_keys=True).encode()).hexdigest()
    array_path = os.path.join(cache_dir, f"teacher-{key[:24]}.npy")
    record_path = array_path[:-4] + ".json"
    if os.path.isfile(array_path) and os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
        if record.get("key") == key and file_sha256(array_path) == record.get("sha256"):
            logits = _read_cached(array_path)
            if logits is not None and logits.shape[0] == len(dataset):
                print(f"finetune: teacher outputs from the cache {array_path}", file=sys.stderr)
                return logits
        print(f"finetune: the cached teacher outputs {array_path} do not match their record: computing them again",
              file=sys.stderr)
    print(f"finetune: computing the teacher's outputs on {len(dataset)} examples ({folder})", file=sys.stderr)
    logits = _teacher_logits(folder, task, dataset, max_length, device)
    os.makedirs(cache_dir, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, logits.astype(np.float32))
    atomic_write_bytes(array_path, buffer.getvalue())
    record = {"key": key, "sha256": file_sha256(array_path), "rows": len(dataset), "teacher": os.path.abspath(folder),
              "data": data_fingerprint, "max_length": max_length}
    atomic_write_bytes(record_path, (json.dumps(record, indent=1) + "\n").encode())
    return logits
