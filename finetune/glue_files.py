"""The original GLUE download's TSV files (`glue_data/MRPC/train.tsv`, ...), read into the hub's columns.

Each task has its own layout, kept here as data: CoLA's train/dev have no header (source, label, original
label or `*`, sentence) while its test has `index\tsentence`; MRPC's label column is `Quality` and its text
columns `#1 String`/`#2 String`; MNLI carries a dozen columns (parses, genre, label1..label5) and its label
is `gold_label`; QNLI, RTE and MNLI spell their labels as words. Files are read with quoting off
(`csv.QUOTE_NONE`): GLUE text holds unbalanced quotes that a quoting reader would run across lines. A train
or dev row with the wrong number of fields is skipped and counted (the released QQP and MNLI files have a
few); in a test file it is an error naming the file and line, since the server needs every row. A label
outside the task's set is an error naming the file and line.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass

from .tasks import Task, TaskError

csv.field_size_limit(sys.maxsize)  # MNLI's parse columns are long


class DataError(TaskError):
    """Task data that cannot be used: a missing split or file, wrong columns, labels outside the task's set."""


@dataclass(frozen=True)
class TsvLayout:
    text_headers: tuple[str, ...]
    label_header: str
    idx_header: str | None = "index"
    """The column the GLUE server identifies rows by; None: the row number."""
    headerless_train: tuple[int, ...] | None = None
    """CoLA: positions of (label, sentence) in its headerless train and dev files."""


TSV_LAYOUTS = {
    "cola": TsvLayout(("sentence",), "label", headerless_train=(1, 3)),
    "sst2": TsvLayout(("sentence",), "label"),
    "mrpc": TsvLayout(("#1 String", "#2 String"), "Quality"),
    "stsb": TsvLayout(("sentence1", "sentence2"), "score"),
    "qqp": TsvLayout(("question1", "question2"), "is_duplicate", idx_header="id"),
    "mnli": TsvLayout(("sentence1", "sentence2"), "gold_label"),
    "qnli": TsvLayout(("question", "sentence"), "label"),
    "rte": TsvLayout(("sentence1", "sentence2"), "label"),
    "wnli": TsvLayout(("sentence1", "sentence2"), "label"),
    "ax": TsvLayout(("sentence1", "sentence2"), "label"),
}

SPLIT_FILES = {
    "train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv",
    "validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv",
}
DIAGNOSTIC_FILE = os.path.join("..", "diagnostic", "diagnostic.tsv")  # AX: beside MNLI/ in glue_data/


def split_path(folder: str, split: str) -> str:
    return os.path.normpath(os.path.join(folder, DIAGNOSTIC_FILE if split == "ax" else SPLIT_FILES[split]))


def parse_label(task: Task, text: str, where: str) -> int | float:
    """A label as the hub's id (or STS-B's float); anything outside the task's set is an error."""
    text = text.strip()
    if task.is_regression:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 5.0:
            raise DataError(f"{where}: label {text!r} is not a similarity score in [0, 5] (task {task.name})")
        return value
    if text in task.label_names:
        return task.label_names.index(text)
    if text.isdigit() and int(text) < task.num_labels and not task.server_label_names:
        return int(text)
    allowed = list(task.label_names) if task.server_label_names else list(range(task.num_labels))
    raise DataError(f"{where}: label {text!r} is outside the labels of {task.name} ({allowed})")


def read_tsv(task: Task, path: str, split: str) -> dict[str, list]:
    """One split of a GLUE TSV folder as columns: the task's hub text columns, `label` (-1 on test sets)
    and `idx`. Skipped rows (wrong field count) are reported on stderr with their count."""
    layout = TSV_LAYOUTS["ax" if split == "ax" else task.name]
    labelled = split.startswith(("train", "validation"))
    text_columns = ("premise", "hypothesis") if split == "ax" else task.text_columns
    columns: dict[str, list] = {name: [] for name in (*text_columns, "label", "idx")}
    skipped: list[int] = []
    # utf-8-sig: a BOM (as Excel and some editors write) would otherwise glue itself to the first header
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if layout.headerless_train and labelled:
            label_at, text_at = layout.headerless_train
            positions, label_position, idx_position, width, first_line = (text_at,), label_at, None, None, 1
        else:
            header = next(rows, None)
            if header is None:
                raise DataError(f"{path}: empty file")
            wanted = (*layout.text_headers, *((layout.label_header,) if labelled else ()))
            missing = [name for name in wanted if name not in header]
            if missing:
                raise DataError(f"{path}: no column {missing} in the header {header} (a GLUE {task.glue_dir} "
                                f"file has {list(wanted)})")
            positions = tuple(header.index(name) for name in layout.text_headers)
            label_position = header.index(layout.label_header) if labelled else None
            idx_position = header.index(layout.idx_header) if layout.idx_header in header else None
            width, first_line = len(header), 2
        for line_number, row in enumerate(rows, start=first_line):
            if width is None:
                width = len(row)  # a headerless file: its first row sets the width
            if len(row) != width:
                if not labelled:  # the GLUE server scores every test row: a missing one is not a skip
                    raise DataError(f"{path}:{line_number}: {len(row)} fields where the file has {width}; a test "
                                    "set needs every row (the GLUE server scores all of them): repair this row")
                skipped.append(line_number)
                continue
            for name, position in zip(text_columns, positions):
                columns[name].append(row[position])
            where = f"{path}:{line_number}"
            unlabelled = -1.0 if task.is_regression else -1  # the hub's value on test sets
            columns["label"].append(parse_label(task, row[label_position], where) if labelled else unlabelled)
            if idx_position is None:
                columns["idx"].append(len(columns["idx"]))
            elif row[idx_position].strip().isdigit():
                columns["idx"].append(int(row[idx_position]))
            else:
                raise DataError(f"{where}: {layout.idx_header} {row[idx_position]!r} is not a row number")
    if skipped:
        print(f"finetune: {path}: skipped {len(skipped)} rows with a wrong number of fields (lines "
              f"{skipped[:5]}{'...' if len(skipped) > 5 else ''})", file=sys.stderr)
    if not columns["idx"]:
        raise DataError(f"{path}: no usable row")
    return columns
