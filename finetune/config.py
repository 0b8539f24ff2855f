"""The finetuning configuration: a documented dataclass, filled from defaults < the task's preset < a TOML
file < command-line flags. Every field is a flag (`--learning-rate 2e-5`) and a TOML key (`learning_rate`);
bad values are one-line errors naming the flag, before any compute. Where the defaults and the per-task
presets (`finetune/presets/tasks.toml`) come from: README, "Defaults".
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import typing
from dataclasses import dataclass

from formats import settings
from formats.errors import UserError
from formats.settings import tomllib

from .tasks import TaskError, get_task

IMPLEMENTATIONS = ("auto", "project", "transformers")  # --implementation's choices

PRESETS = importlib.resources.files("finetune") / "presets"


class FinetuneConfigError(UserError):
    """A setting that cannot run; the message names the flag or key."""


@dataclass
class FinetuneConfig:
    task: str = ""
    """GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli."""
    model: str = ""
    """A transformers-format folder: our export (`python -m pretrain export`), a released SqueezeBERT, a BERT."""
    data: str = "hub"
    """`hub` (nyu-mll/glue through datasets) or a local folder: the GLUE download (glue_data/), files named by
    split (train.jsonl, validation.csv, train-*.parquet) or a folder saved by datasets."""
    out: str = ""
    """Output folder: checkpoints/, tensorboard/, model/ (the best), predictions/, results.json."""
    teacher: str = ""
    """A transformers sequence-classification model for the task (own tokenizer): turns on distillation."""
    alpha: float = 0.5
    """Weight of the hard-label loss; 1 - alpha goes to the teacher's (DistilBERT's 0.5)."""
    temperature: float = 2.0
    """Softmax temperature of the distillation term (Hinton et al.); the term is scaled by T^2."""
    learning_rate: float = 3e-5
    """AdamW's peak learning rate (the model card's MRPC command: 3e-5)."""
    batch_size: int = 16
    """Samples per optimizer step, whatever the number of ranks (the model card's MRPC command: 16)."""
    micro_batch: int = 0
    """Samples per rank per forward/backward; 0: batch_size / ranks. Accumulation is computed."""
    epochs: float = 3.0
    """Passes over the training set. Each task's preset sets its own (CoLA, MRPC, STS-B, RTE: 10; the others: 3;
    finetune/presets/tasks.toml), over this default: set this flag or the TOML key to choose."""
    max_steps: int = 0
    """Optimizer steps; 0: `epochs` passes over the training set."""
    warmup_fraction: float = 0.1
    """Linear warmup over this fraction of the steps, then linear decay to 0 (BERT's 10%)."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (run_glue's default 0)."""
    max_length: int = 128
    """Tokens per example (pair) at most; longer inputs are truncated (run_glue's default 128); at most the
    model's and the teacher's position embeddings."""
    eval_every_steps: int = 0
    """Evaluate on the dev set (and checkpoint) every N steps; 0: at the end of each epoch."""
    log_every_steps: int = 20
    """Console line and TensorBoard scalars every N steps."""
    keep_checkpoints: int = 2
    """Trainer checkpoints kept (the best one is always kept besides)."""
    seed: int = 42
    precision: str = "auto"
    """auto: bf16 on GPUs that have it, fp32 elsewhere | bf16 | fp16 | fp32 (as transformers' Trainer does)."""
    headless: bool = False
    """Also write headless/: the best model without its classifier (the chain's MNLI step)."""
    predict: bool = True
    """Write the GLUE server's test files (predictions/) when the data has test splits."""
    teacher_cache: str = ""
    """Folder of the cached teacher outputs; empty: <out>/teacher_cache."""
    max_train_samples: int = 0
    """Train on the first N training examples only; 0: all (run_glue's --max_train_samples, for trials)."""
    max_eval_samples: int = 0
    """Evaluate on the first N examples of each dev set only; 0: all."""
    max_predict_samples: int = 0
    """Predict the first N examples of each test set only; 0: all (the server needs all: for trials)."""
    train: bool = True
    """--no-train: evaluate and predict with --model as it is (a classifier finetuned on the task, e.g. a run's
    model/); nothing is trained, results.json and predictions/ are written."""
    evaluate: bool = True
    """Evaluate on the dev sets; --no-train --no-evaluate: test predictions only."""
    tokenizer: str = ""
    """A folder (or hub id) with the tokenizer files, when they are not in --model's folder."""
    overwrite_output: bool = False
    """Start over: remove this run's files from --out first (checkpoints, model/, results.json...; the teacher
    cache stays, checked by its key); without it a finished run is not redone and a run in progress resumes."""
    implementation: str = "auto"
    """The student's classifier: auto (the project's for SqueezeBERT folders, transformers' otherwise) | project
    (finetune.classifier: pretrain.model's encoder, transformers' keys and config) | transformers."""

    def validate(self) -> None:
        try:
            self.task = get_task(self.task).name
        except TaskError as error:
            raise FinetuneConfigError(str(error) if self.task else "--task: name a GLUE task") from None
        for flag, value in (("--model", self.model), ("--out", self.out)):
            if not value:
                raise FinetuneConfigError(f"{flag}: required")
        positive = {"learning_rate": self.learning_rate, "batch_size": self.batch_size, "max_length": self.max_length,
                    "temperature": self.temperature, "log_every_steps": self.log_every_steps,
                    "keep_checkpoints": self.keep_checkpoints}
        for key, value in positive.items():
            if value <= 0:
                raise FinetuneConfigError(f"{flag_name(key)} {value}: must be positive")
        for key in ("micro_batch", "max_steps", "eval_every_steps", "weight_decay", "max_train_samples",
                    "max_eval_samples", "max_predict_samples"):
            if getattr(self, key) < 0:
                raise FinetuneConfigError(f"{flag_name(key)} {getattr(self, key)}: must be 0 or more")
        if self.epochs <= 0 and not self.max_steps:
            raise FinetuneConfigError(f"--epochs {self.epochs}: must be positive (or set --max-steps)")
        if not 0.0 <= self.alpha <= 1.0:
            raise FinetuneConfigError(f"--alpha {self.alpha}: must be within [0, 1]")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise FinetuneConfigError(f"--warmup-fraction {self.warmup_fraction}: must be within [0, 1)")
        if not self.train:
            if not (self.evaluate or self.predict):
                raise FinetuneConfigError("--no-train --no-evaluate --no-predict: nothing to do; keep one of them")
            for flag, value in (("--teacher", self.teacher), ("--headless", self.headless)):
                if value:
                    raise FinetuneConfigError(f"{flag}: only for training; drop it with --no-train")
        if self.implementation not in IMPLEMENTATIONS:
            raise FinetuneConfigError(f"--implementation {self.implementation}: one of auto, project, transformers")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise FinetuneConfigError(f"--precision {self.precision}: one of auto, bf16, fp16, fp32")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_settings(self) -> dict:
        """The settings that make a run what it is (what `--out` is compared on): all but the actions."""
        return {key: value for key, value in self.to_dict().items() if key not in ACTIONS}


ACTIONS = ("overwrite_output",)  # what to do with --out, not what the run is


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def field_docs() -> dict[str, str]:
    """Each field's docstring (the string literal after it in the class body), for --help."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(FinetuneConfig))
    docs, body = {}, tree.body[0].body
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def typed(key: str, value, where: str):
    """`value` as `key`'s type; `where` names the layer it came from ("" for the command line's flags)."""
    expected = typing.get_type_hints(FinetuneConfig)[key]
    return settings.typed(value, expected, f"{where}{key}", FinetuneConfigError, "" if where else flag_name(key))


def read_toml(path: str) -> dict:
    return settings.read_toml(path, FinetuneConfigError)


def task_preset(task_name: str) -> dict:
    """The task's preset values (`finetune/presets/tasks.toml`), shipped inside the package."""
    presets = tomllib.loads((PRESETS / "tasks.toml").read_text(encoding="utf-8"))
    return dict(presets.get(task_name, {}))


def build_config(*layers: tuple[str, dict]) -> FinetuneConfig:
    """A validated config from layers of (where, values), later layers winning, the task's preset applied
    beneath them. Unknown keys and values of the wrong type are errors naming where they came from."""
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    merged: dict = {}
    for where, values in layers:
        unknown = sorted(set(values) - known)
        if unknown:
            raise FinetuneConfigError(f"{where}unknown keys {unknown}; known: {sorted(known)}")
        merged.update({key: typed(key, value, where) for key, value in values.items()})
    task = merged.get("task", "")
    preset = {}
    if task:
        try:
            name = get_task(task).name
            preset = {key: typed(key, value, f"finetune/presets/tasks.toml [{name}]: ")
                      for key, value in task_preset(name).items()}
        except TaskError as error:
            raise FinetuneConfigError(str(error)) from None
    config = FinetuneConfig(**{**preset, **merged})
    config.validate()
    return config


def describe(config: FinetuneConfig) -> str:
    return json.dumps(config.to_dict(), indent=1)
