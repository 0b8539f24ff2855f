"""The nine GLUE tasks: their inputs, labels, metrics, splits and the GLUE server's file names.

One table answers every "what does task X look like?" question: the loaders (`finetune.data`), the
metrics (`finetune.metrics`), the test-server files (`finetune.predictions`) and the CLI read it. Label ids
are the hub's (`nyu-mll/glue` ClassLabel order), so a model finetuned from any source means the same thing
by label 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from formats.errors import UserError


class TaskError(UserError):
    """An unknown task or a task setting that cannot be; the message names it."""


@dataclass(frozen=True)
class Task:
    name: str
    """The hub's config name (`nyu-mll/glue`, name): cola, sst2, ..."""
    glue_dir: str
    """The folder of the original GLUE download (`glue_data/MRPC`)."""
    text_columns: tuple[str, ...]
    """The hub's text columns: one (single sentence) or two (a pair)."""
    label_names: tuple[str, ...]
    """Class names in the hub's id order; empty for the regression task (STS-B)."""
    metric_names: tuple[str, ...]
    main_metric: str
    """What picks the best checkpoint: the GLUE score of the task (the mean where GLUE averages two; for MNLI,
    of the matched dev set)."""
    dev_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    server_files: tuple[str, ...] = ()
    """GLUE server file per test split, in the order of `test_splits`."""
    server_label_names: bool = False
    """The server wants label names (entailment, ...) rather than ids (0/1)."""

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1


TASKS: dict[str, Task] = {task.name: task for task in [
    Task("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), ("mcc",), "mcc",
         server_files=("CoLA.tsv",)),
    Task("sst2", "SST-2", ("sentence",), ("negative", "positive"), ("accuracy",), "accuracy",
         server_files=("SST-2.tsv",)),
    Task("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"),
         "f1_accuracy_mean", server_files=("MRPC.tsv",)),
    Task("stsb", "STS-B", ("sentence1", "sentence2"), (), ("pearson", "spearman"), "pearson_spearman_mean",
         server_files=("STS-B.tsv",)),
    Task("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"),
         "f1_accuracy_mean", server_files=("QQP.tsv",)),
    Task("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
         ("accuracy",), "accuracy", dev_splits=("validation_matched", "validation_mismatched"),
         test_splits=("test_matched", "test_mismatched", "ax"), server_files=("MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"),
         server_label_names=True),
    Task("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",), "accuracy",
         server_files=("QNLI.tsv",), server_label_names=True),
    Task("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",), "accuracy",
         server_files=("RTE.tsv",), server_label_names=True),
    Task("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",), "accuracy",
         server_files=("WNLI.tsv",)),
]}

# MNLI's two dev sets are reported as accuracy_matched / accuracy_mismatched.
DEV_SUFFIX = {"validation": "", "validation_matched": "_matched", "validation_mismatched": "_mismatched"}


def get_task(name: str) -> Task:
    task = TASKS.get(name.lower().replace("-", ""))
    if task is None:
        raise TaskError(f"--task {name}: unknown task; known: {', '.join(TASKS)}")
    return task
