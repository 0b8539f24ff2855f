"""A GLUE task's splits from any of the places they live, in the hub's columns, checked before any compute.

The sources (`--data`: the hub, the GLUE download, files named by split, a `datasets` folder) and the label
rule: README, "Data" and "Labels by name". Every split comes out with the task's text columns, `label` (the
hub's ids, mapped by name where the source names its classes: `finetune.labels`; -1 on test sets) and `idx`.
Train and dev splits are required; a missing test split only means no test-server predictions.
"""

from __future__ import annotations

import glob
import hashlib
import os

import numpy as np

from formats.errors import one_line

from .glue_files import DataError, parse_label, read_tsv, split_path
from .labels import contradiction, task_ids
from .tasks import Task

HUB_DATASET = "nyu-mll/glue"
FILE_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_ALIASES = {"validation": ("validation", "dev"), "validation_matched": ("validation_matched", "dev_matched"),
                 "validation_mismatched": ("validation_mismatched", "dev_mismatched")}


def required_splits(task: Task) -> tuple[str, ...]:
    return ("train", *task.dev_splits)


def resolve_source(task: Task, data: str) -> tuple[str, str | None]:
    """(kind, folder): kind is hub, tsv, files or disk."""
    if data in ("", "hub"):
        return "hub", None
    if not os.path.isdir(data):
        raise DataError(f"--data {data}: no such folder (give a GLUE folder, a folder of split files, a "
                        "datasets folder, or `hub`)")
    for folder in (os.path.join(data, task.glue_dir), os.path.join(data, task.name), data):
        if not os.path.isdir(folder):
            continue
        if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
            return "disk", folder
        if glob.glob(os.path.join(folder, "*.tsv")):
            return "tsv", folder
        if any(_split_files(folder, split) for split in required_splits(task)):
            return "files", folder
    raise DataError(f"--data {data}: no {task.name} data there: expected the GLUE layout ({task.glue_dir}/"
                    "train.tsv), files named by split (train.jsonl, validation.csv, train-*.parquet) or a "
                    "folder saved by datasets")


def _split_files(folder: str, split: str) -> list[str]:
    for name in SPLIT_ALIASES.get(split, (split,)):
        for extension in FILE_EXTENSIONS:
            found = sorted(glob.glob(os.path.join(folder, f"{name}{extension}")) +
                           glob.glob(os.path.join(folder, f"{name}-*{extension}")))
            if found:
                return found
    return []


def _load_hub(task: Task, split: str):
    import datasets

    try:
        return datasets.load_dataset(HUB_DATASET, "ax" if split == "ax" else task.name, split="test" if
                                     split == "ax" else split)
    except Exception as error:  # the hub unreachable, offline mode, a missing split: one line
        raise DataError(f"--data hub: cannot load {HUB_DATASET} {task.name} {split} ({one_line(error, 160)}); "
                        "without the hub, pass --data with a local copy (see python -m finetune glue --help)") from None


def _load_split(task: Task, kind: str, folder: str | None, split: str):
    """The raw split (a `datasets.Dataset` or a dict of columns), None when it is not there."""
    import datasets

    if kind == "hub":
        return _load_hub(task, split)
    if kind == "tsv":
        path = split_path(folder, split)
        return read_tsv(task, path, split) if os.path.isfile(path) else None
    if kind == "disk":
        saved = datasets.load_from_disk(folder)
        for name in SPLIT_ALIASES.get(split, (split,)):
            if name in saved:
                return saved[name]
        return None
    files = _split_files(folder, split) if split != "ax" else _split_files(os.path.join(folder, "..", "ax"), "test")
    if not files:
        return None
    builder = FILE_EXTENSIONS[os.path.splitext(files[0])[1]]
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as error:
        raise DataError(f"{files[0]}: not readable as {builder} ({one_line(error, 160)})") from None


def normalize(task: Task, raw, split: str, where: str):
    """The split as a `datasets.Dataset` with exactly the text columns, `label` and `idx`; wrong columns and
    labels outside the task's set are errors naming `where`."""
    import datasets

    dataset = raw if isinstance(raw, datasets.Dataset) else datasets.Dataset.from_dict(raw)
    text_columns = ("premise", "hypothesis") if split == "ax" else task.text_columns
    labelled = split.startswith(("train", "validation"))
    needed = [*text_columns, *(["label"] if labelled else [])]
    missing = [name for name in needed if name not in dataset.column_names]
    if missing:
        raise DataError(f"{where}: no column {missing} (found {dataset.column_names}; {task.name} needs {needed})")
    if "idx" not in dataset.column_names:
        dataset = dataset.add_column("idx", list(range(len(dataset))))
    if "label" not in dataset.column_names:
        dataset = dataset.add_column("label", [-1.0 if task.is_regression else -1] * len(dataset))
    dataset = dataset.select_columns([*text_columns, "label", "idx"])
    dataset = _labels_by_name(task, dataset, where)
    if labelled:
        dataset = _checked_labels(task, dataset, where)
    if len(dataset) == 0:
        raise DataError(f"{where}: no rows")
    return dataset


def _labels_by_name(task: Task, dataset, where: str):
    """A ClassLabel `label` (a datasets folder, the hub's parquet files) as the task's ids, mapped by its names
    (`finetune.labels`); names that are not the task's are an error naming `where`."""
    import datasets

    feature = dataset.features["label"]
    if not isinstance(feature, datasets.ClassLabel):
        return dataset
    problem = contradiction(task, feature.names)
    if problem:
        raise DataError(f"{where}: the label column is a ClassLabel and {problem}; give {task.name}'s labels "
                        f"({list(task.label_names) or 'scores in [0, 5]'})")
    ids = task_ids(task, feature.names)
    plain = datasets.Value("float32" if task.is_regression else "int64")
    dataset = dataset.cast_column("label", plain)  # the task's ids from here on, not the source's names
    if ids is None:
        return dataset
    # -1 (a test set's "no label") and ids outside the feature stay as they are, for the range check to name
    return dataset.map(lambda batch: {"label": [ids[label] if 0 <= label < len(ids) else label
                                                for label in batch["label"]]}, batched=True)


def _checked_labels(task: Task, dataset, where: str):
    labels = dataset["label"]
    if task.is_regression:
        allowed = "a similarity score in [0, 5]"
    else:
        allowed = f"one of 0..{task.num_labels - 1} or {list(task.label_names)}"
        words = [row for row, label in enumerate(labels) if _is_word(label)]
        numbers = [row for row, label in enumerate(labels) if _is_number(label)]
        if words and numbers:
            # `1` beside `"entailment"`: which label an id means depends on an order the file does not state
            # (the hub's, or the dataset's it came from); a guess could train on flipped labels
            raise DataError(f"{where}: labels mix names and numbers (row {words[0]} has {labels[words[0]]!r}, "
                            f"row {numbers[0]} has {labels[numbers[0]]!r}); write every label of the split one "
                            f"way: all ids 0..{task.num_labels - 1} or all names {list(task.label_names)}")
    if any(isinstance(label, str) for label in labels):  # names, as the TSVs of QNLI, RTE, MNLI spell them
        ids = [parse_label(task, str(label), f"{where} row {row}") for row, label in enumerate(labels)]
        return dataset.remove_columns("label").add_column("label", ids)
    values = np.asarray([label if isinstance(label, (int, float)) else np.nan for label in labels],
                        dtype=np.float64)  # None, a list: not a label
    if task.is_regression:
        bad = np.flatnonzero(~((values >= 0) & (values <= 5)))
    else:
        bad = np.flatnonzero(~np.isin(values, np.arange(task.num_labels)))
    if bad.size:
        raise DataError(f"{where}: row {int(bad[0])} has label {labels[bad[0]]!r}, outside the labels of "
                        f"{task.name} ({allowed}); {bad.size} such rows")
    return dataset


def _where(kind: str, folder: str | None, data: str, split: str) -> str:
    """What an error about a split names: its file where it has one."""
    if kind == "tsv":
        return split_path(folder, split)
    files = _split_files(folder, split) if kind == "files" and split != "ax" else []
    if files:
        return files[0] + (f" (and {len(files) - 1} more {split} files)" if len(files) > 1 else "")
    return f"{folder} ({split})" if kind == "disk" else f"--data {data} ({split})"


def _is_number(label) -> bool:
    """1, 3.8 or "1" (a CSV has no types); not a bool, None or a list."""
    if isinstance(label, str):
        try:
            float(label)
        except ValueError:
            return False
        return True
    return isinstance(label, (int, float)) and not isinstance(label, bool)


def _is_word(label) -> bool:
    return isinstance(label, str) and not _is_number(label)


def load_task(task: Task, data: str, with_test: bool = True, with_train: bool = True) -> dict:
    """Every split of the task: train (unless `with_train` is off), the dev split(s) and, when present, the
    test split(s)."""
    kind, folder = resolve_source(task, data)
    splits = {}
    wanted = [*required_splits(task)[0 if with_train else 1:], *(task.test_splits if with_test else ())]
    for split in wanted:
        where = _where(kind, folder, data, split)
        try:
            raw = _load_split(task, kind, folder, split)
        except DataError:
            if split != "ax":
                raise
            raw = None  # the diagnostic set is optional
        if raw is None:
            if split in required_splits(task):
                hint = where if kind == "tsv" else f"{folder}: no file named {SPLIT_ALIASES.get(split, (split,))}.*"
                raise DataError(f"{hint}: the {split} split of {task.name} is missing")
            continue
        splits[split] = normalize(task, raw, split, where)
    return splits


def fingerprint(dataset) -> str:
    """sha256 of a split's content (texts and labels, in order; not `idx`, which sources number differently:
    QQP's TSVs carry the original question-pair ids, the hub numbers rows from 0): the same data from any
    source has the same fingerprint, and any changed text or label changes it."""
    digest = hashlib.sha256()
    for batch in dataset.iter(batch_size=4096):
        for column in sorted(batch):
            if column == "idx":
                continue
            digest.update(column.encode())
            digest.update(repr(batch[column]).encode())
    return digest.hexdigest()
