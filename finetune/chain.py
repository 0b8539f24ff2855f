"""The SqueezeBERT paper's finetuning "with bells and whistles", end to end: MNLI distilled → its headless model
(checked to load with only the classifier new) → each listed task distilled from its teacher → `results.md`
and `results.json`, beside the regime without when `without` is on. The steps and the settings: README,
"Chain".

Every run is a `finetune glue` run in its own folder, so a killed chain rerun skips the finished runs and
resumes the one in progress. All data, models and teachers are checked before the first step starts.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field

from formats.files import atomic_write_bytes
from formats.settings import parse_value, split_assignment

from .config import FinetuneConfig, FinetuneConfigError, build_config, read_toml
from .data import load_task
from .distill import check_teacher
from .model_folder import check_weights, load_classifier, load_tokenizer, resolve_model_folder
from .run import log, run_glue, student_label_order
from .tasks import TASKS, get_task

CHAIN_KEYS = ("model", "data", "out", "mnli_teacher", "teachers", "without", "settings", "task_settings")


@dataclass
class ChainConfig:
    model: str = ""
    """The pretrained student: a headless transformers folder (our export, squeezebert-uncased)."""
    data: str = "hub"
    """hub, or a folder holding every task's data (glue_data/ with MNLI/, RTE/, ...)."""
    out: str = ""
    mnli_teacher: str = ""
    teachers: dict[str, str] = field(default_factory=dict)
    """The tasks after MNLI, each with its teacher: {"rte": "teachers/rte", ...}, in order."""
    without: bool = True
    """Also finetune MNLI and every task from `model` without a teacher, for the comparison."""
    settings: dict = field(default_factory=dict)
    """Finetuning settings (`finetune glue`'s keys) for every run of the chain."""
    task_settings: dict[str, dict] = field(default_factory=dict)
    """Settings for one task's runs, over `settings`: {"mnli": {"epochs": 2}}."""


def _set(values: dict, assignment: str) -> None:
    key, text = split_assignment(assignment, "--set epochs=1", FinetuneConfigError)
    values[key.strip()] = parse_value(text)


def load_chain_config(args: argparse.Namespace) -> ChainConfig:
    """defaults < the TOML file < flags."""
    values = read_toml(args.config) if args.config else {}
    unknown = sorted(set(values) - set(CHAIN_KEYS))
    if unknown:
        raise FinetuneConfigError(f"--config {args.config}: unknown keys {unknown}; known: {list(CHAIN_KEYS)}")
    for key in ("model", "data", "out", "mnli_teacher", "without"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.task:
        values["teachers"] = {}
        for item in args.task:
            task, _, teacher = item.partition("=")
            if not teacher:
                raise FinetuneConfigError(f"--task {item}: expected TASK=TEACHER_DIR, e.g. rte=teachers/rte")
            values["teachers"][task] = teacher
    values["settings"] = dict(values.get("settings", {}))
    for assignment in args.set:
        _set(values["settings"], assignment)
    config = ChainConfig(**values)
    for flag, value in (("--model", config.model), ("--out", config.out), ("--mnli-teacher", config.mnli_teacher)):
        if not value:
            raise FinetuneConfigError(f"{flag}: required (or its key in --config)")
    if not config.teachers:
        raise FinetuneConfigError("--task: name at least one task after MNLI and its teacher, e.g. --task rte=DIR")
    config.teachers = {get_task(task).name: teacher for task, teacher in config.teachers.items()}
    if "mnli" in config.teachers:
        raise FinetuneConfigError("--task mnli: MNLI is the chain's first step (its teacher is --mnli-teacher)")
    tasks = ["mnli", *config.teachers]
    named = {}
    for name, values in config.task_settings.items():  # a misspelt table would otherwise be ignored
        task = TASKS.get(name.lower().replace("-", ""))
        if task is None or task.name not in tasks:
            raise FinetuneConfigError(f"--config {args.config}: [task_settings.{name}]: "
                                      f"{'not a task of this chain' if task else 'unknown task'}; the chain's tasks "
                                      f"are {tasks}")
        named[task.name] = values
    config.task_settings = named
    return config


def run_configs(chain: ChainConfig) -> list[tuple[str, FinetuneConfig]]:
    """Every run of the chain, in order, as (regime, config): the MNLI student, the tasks from it, then the
    runs without distillation."""
    reserved = {"task", "model", "data", "out", "teacher", "headless"}
    for where, values in (("settings", chain.settings), *((f"task_settings.{t}", v) for t, v in
                                                          chain.task_settings.items())):
        if reserved & set(values):
            raise FinetuneConfigError(f"{where}: {sorted(reserved & set(values))} are set by the chain itself")

    def config(task: str, model: str, out: str, teacher: str = "", headless: bool = False) -> FinetuneConfig:
        own = {"task": task, "model": model, "data": chain.data, "out": out, "teacher": teacher, "headless": headless}
        own_settings = chain.task_settings.get(task, {})
        return build_config(("settings.", chain.settings), (f"task_settings.{task}.", own_settings), ("", own))

    headless = os.path.join(chain.out, "mnli", "headless")
    runs = [("with", config("mnli", chain.model, os.path.join(chain.out, "mnli"), chain.mnli_teacher, True))]
    runs += [("with", config(task, headless, os.path.join(chain.out, task), teacher))
             for task, teacher in chain.teachers.items()]
    if chain.without:
        runs += [("without", config(task, chain.model, os.path.join(chain.out, "without", task)))
                 for task in ("mnli", *chain.teachers)]
    return runs


def preflight(runs: list[tuple[str, FinetuneConfig]], chain: ChainConfig) -> None:
    """Everything the chain will read, checked before its first step: every task's data, the student, every
    teacher against its task."""
    model = resolve_model_folder(chain.model, "--model")  # a hub id: its snapshot in the local cache
    load_tokenizer(model)
    check_weights(model, "--model")
    checked = set()
    for _, config in runs:
        task = get_task(config.task)
        if task.name not in checked:
            load_task(task, config.data, with_test=config.predict)
            checked.add(task.name)
        if config.model == chain.model:
            student_label_order(model, task)
        if config.teacher:
            check_teacher(resolve_model_folder(config.teacher, "--teacher"), task)


def check_headless(folder: str) -> None:
    """The MNLI student without its classifier loads as a classifier with only the classifier new."""
    _, info = load_classifier(folder, "the headless MNLI model", num_labels=2, output_loading_info=True)
    new = sorted(info["missing_keys"])
    if any(not key.startswith("classifier.") for key in new):
        raise FinetuneConfigError(f"{folder}: the headless model lacks encoder weights {new[:4]}")
    log(f"headless MNLI student {folder}: loads with only {', '.join(new)} new")


def results_table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: a row per task and dev metric, a column per regime that ran."""
    lines = ["| task | dev metric | with distillation (from the MNLI student) | without (from the pretrained model) |",
             "|---|---|---|---|"]
    for task, regimes in results.items():
        metrics = list((regimes.get("with") or regimes.get("without"))["dev"])
        if len(TASKS[task].metric_names) == 1:
            metrics.remove("score")  # the one metric again (MNLI: its matched accuracy)
        for metric in metrics:
            cells = [f"{regimes[r]['dev'][metric]:.4f}" if r in regimes else "" for r in ("with", "without")]
            lines.append(f"| {TASKS[task].glue_dir} | {metric} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def run_chain(chain: ChainConfig) -> dict:
    runs = run_configs(chain)
    preflight(runs, chain)
    results: dict[str, dict[str, dict]] = {}
    headless = os.path.join(chain.out, "mnli", "headless")
    for regime, config in runs:
        if config.model == headless and config.task == next(iter(chain.teachers)):
            check_headless(headless)
        log(f"chain: {config.task} {'with distillation' if config.teacher else 'without distillation'} "
            f"from {config.model} -> {config.out}")
        outcome = run_glue(config)
        results.setdefault(config.task, {})[regime] = {"dev": outcome["dev"], "out": config.out,
                                                       "teacher": config.teacher, "model": config.model}
    table = results_table(results)
    summary = {"headless": headless, "tasks": results}
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_bytes(os.path.join(chain.out, "results.md"), table.encode())
        atomic_write_bytes(os.path.join(chain.out, "results.json"), (json.dumps(summary, indent=1) + "\n").encode())
    log(f"chain: done; dev results (also in {os.path.join(chain.out, 'results.md')}):\n{table}")
    return summary
