"""The GLUE server's test files: one `<TASK>.tsv` per test set, header `index\tprediction`.

Label names for the NLI tasks (MNLI-m.tsv, MNLI-mm.tsv and AX.tsv: entailment / neutral / contradiction;
QNLI.tsv, RTE.tsv: entailment / not_entailment), the label id for the others (CoLA, SST-2, MRPC, QQP,
WNLI: 0/1), a score for STS-B (clipped to the scale's [0, 5]). The folder is written whole or not at all.
"""

from __future__ import annotations

import os

import numpy as np

from formats.files import atomic_folder

from .tasks import Task


def prediction_rows(task: Task, outputs: np.ndarray) -> list[str]:
    if task.is_regression:
        return [f"{score:.3f}" for score in np.clip(outputs.reshape(-1), 0.0, 5.0)]
    ids = outputs.argmax(axis=-1)
    return [task.label_names[i] for i in ids] if task.server_label_names else [str(int(i)) for i in ids]


def server_file(task: Task, split: str) -> str:
    return task.server_files[task.test_splits.index(split)]


def write_predictions(task: Task, outputs_by_split: dict[str, tuple[list[int], np.ndarray]], out_dir: str) -> list[str]:
    """Writes every test set's file into `out_dir` (replaced atomically); returns the file names."""
    names = []
    with atomic_folder(out_dir) as tmp_dir:
        for split, (indices, outputs) in outputs_by_split.items():
            name = server_file(task, split)
            rows = prediction_rows(task, outputs)
            with open(os.path.join(tmp_dir, name), "w", encoding="utf-8") as handle:
                handle.write("index\tprediction\n")
                handle.writelines(f"{index}\t{row}\n" for index, row in zip(indices, rows))
            names.append(name)
    return names
