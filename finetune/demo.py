"""A learnable task made from a corpus's own text, and the demo that finetunes on it.

The task: which of two documents a sentence comes from (the two documents with the most sentences, so
both classes are large; classes balanced, sentences shuffled with a seed, 80/10/10 train/validation/test).
It needs no labelled data, so `python -m pretrain demo`'s export can be finetuned on its own corpus and a
newcomer sees pretrain → export → finetune → a dev metric. It is written in SST-2's columns
(`sentence`, `label`, `idx`; jsonl files named by split), one sentence and a binary label, so it runs
through the same `finetune glue` pipeline as a GLUE task (`--task sst2 --data <folder>`); chance is 50%.
"""

from __future__ import annotations

import json
import os
import random

import blingfire

from formats.errors import UserError
from formats.files import atomic_write_bytes

from .config import build_config
from .run import log, run_glue

MIN_SENTENCE_CHARS = 20


def sentences_of(text: str) -> list[str]:
    found = []
    for paragraph in text.split("\n"):
        if paragraph.strip():
            found += blingfire.text_to_sentences(paragraph.strip()).split("\n")
    return [s.strip() for s in found if len(s.strip()) >= MIN_SENTENCE_CHARS]


def make_document_task(documents: list[str], out_dir: str, seed: int = 0, max_per_class: int = 600) -> dict:
    """Writes train/validation/test.jsonl of the two-document task into `out_dir`; returns the counts."""
    by_size = sorted((sentences_of(text) for text in documents), key=len, reverse=True)
    if len(by_size) < 2 or len(by_size[1]) < 20:
        raise UserError("the corpus needs two documents of at least 20 sentences each for the demo task")
    rng = random.Random(seed)
    per_class = min(len(by_size[1]), max_per_class)
    rows = [(sentence, label) for label in (0, 1) for sentence in rng.sample(by_size[label], per_class)]
    rng.shuffle(rows)
    cut_train, cut_dev = int(0.8 * len(rows)), int(0.9 * len(rows))
    splits = {"train": rows[:cut_train], "validation": rows[cut_train:cut_dev], "test": rows[cut_dev:]}
    os.makedirs(out_dir, exist_ok=True)
    for split, split_rows in splits.items():
        lines = "".join(json.dumps({"sentence": sentence, "label": label, "idx": i}, ensure_ascii=False) + "\n"
                        for i, (sentence, label) in enumerate(split_rows))
        atomic_write_bytes(os.path.join(out_dir, f"{split}.jsonl"), lines.encode("utf-8"))
    return {split: len(split_rows) for split, split_rows in splits.items()}


def run_demo(demo_dir: str, epochs: float | None = None) -> dict:
    """Finetunes `python -m pretrain demo`'s export (DEMO/export) on the two-document task of its corpus."""
    corpus = os.path.join(demo_dir, "corpus", "python_docs.jsonl")
    export = os.path.join(demo_dir, "export")
    if not (os.path.isfile(corpus) and os.path.isdir(export)):
        raise UserError(f"--out {demo_dir}: no corpus/python_docs.jsonl and export/ there; run "
                        f"`python -m pretrain demo --out {demo_dir}` first")
    with open(corpus, encoding="utf-8") as handle:
        documents = [json.loads(line)["text"] for line in handle if line.strip()]
    task_dir = os.path.join(demo_dir, "finetune_task")
    counts = make_document_task(documents, task_dir)
    log(f"demo task (which of two documents a sentence is from): {counts} in {task_dir}")
    settings = {"task": "sst2", "model": export, "data": task_dir, "out": os.path.join(demo_dir, "finetune"),
                "learning_rate": 1e-4, "batch_size": 32, "epochs": epochs or 3.0, "eval_every_steps": 0,
                "log_every_steps": 10}
    results = run_glue(build_config(("demo: ", settings)))
    log(f"demo done: dev accuracy {results['dev']['accuracy']:.3f} (chance 0.5); the finetuned model is in "
        f"{os.path.join(demo_dir, 'finetune', 'model')}")
    return results
