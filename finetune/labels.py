"""Label ids by name: wherever a source names its classes (a `datasets` ClassLabel feature, a model's
`id2label`), its ids are mapped onto the task's by name, case-insensitively; names that are not the task's
are refused; sources without names (`LABEL_0`, `0`, plain integers) keep their ids, checked by range.

This is run_glue's `label_to_id` rule, applied to the data as well as to the student and the teacher: MNLI
saved with `class_encode_column` numbers its classes alphabetically (contradiction, entailment, neutral),
the hub's MNLI does not, and a model finetuned elsewhere may order its outputs either way.
"""

from __future__ import annotations

import re

from .tasks import Task

GENERIC_NAME = re.compile(r"(label_)?\d+")  # transformers' LABEL_0 and ClassLabel(num_classes=...)'s "0"


def real_names(names) -> list[str] | None:
    """The names in id order, lower-cased, or None when they are generic (LABEL_n, digits) or absent."""
    names = [str(name).strip().lower() for name in names]
    if not names or all(GENERIC_NAME.fullmatch(name) for name in names):
        return None
    return names


def id2label_names(id2label: dict | None, count: int) -> list[str]:
    """A config's `id2label` as a list in id order (its keys may be ints or strings)."""
    id2label = id2label or {}
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count)]


def contradiction(task: Task, names) -> str | None:
    """Why `names` cannot be the task's labels, or None when they are its labels (in any order) or generic."""
    named = real_names(names)
    if named is None:
        return None
    wanted = [name.lower() for name in task.label_names]
    if task.is_regression:  # one output is a score whatever it is called (this project's students call it "score")
        return None if len(named) == 1 else f"it names classes {named}, and {task.name} is a score, not classes"
    if sorted(named) != sorted(wanted):
        return f"its labels are {named}, not {task.name}'s {wanted}"
    return None


def task_ids(task: Task, names) -> list[int] | None:
    """For each source id, the task's id of the same name; None when no mapping applies (generic names, or
    the task's own order). Call `contradiction` first: names that are not the task's raise KeyError here."""
    named = real_names(names)
    if named is None or task.is_regression:
        return None
    wanted = [name.lower() for name in task.label_names]
    ids = [wanted.index(name) for name in named]
    return None if ids == list(range(len(ids))) else ids


def output_order(task: Task, names) -> list[int] | None:
    """For each of the task's ids, which of the source's outputs holds it (the rows of a classifier, the
    columns of logits); None when no reordering applies."""
    ids = task_ids(task, names)
    return None if ids is None else [ids.index(label) for label in range(len(ids))]
