"""The run configuration: documented dataclasses, loaded from a TOML file with command-line overrides.

Precedence is defaults < config file < `--set key=value` overrides. Everything derived (gradient
accumulation, warmup steps, the DeepSpeed JSON) is computed from the one place it is stated, and a
contradiction is a `RunConfigError` naming the key, raised before any compute starts.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import typing
from dataclasses import dataclass, field

from formats.errors import UserError
from formats.settings import parse_value, read_toml, split_assignment, typed


class RunConfigError(UserError):
    """A configuration that cannot run; the message names the key or file and what to do."""


@dataclass
class PhaseConfig:
    """One phase of the schedule: a shard set, a length, a number of steps and its own LR schedule."""

    name: str = "phase1"
    shards: str = ""
    """A `seqN/` folder made by `python -m data_prep shards`; its length is the phase's sequence length."""
    eval_shards: str = ""
    """A shard set to evaluate on, e.g. the `seqN-heldout/` folder that `data_prep shards --holdout-fraction`
    writes (documents that never enter training). Empty: the last `logging.eval_samples` examples of `shards`
    are held out of training instead."""
    steps: int = 56_000
    """Optimizer steps of this phase (the paper: 56,000 at 128, then 6,000 at 512)."""
    global_batch: int = 8192
    """Samples per optimizer step, whatever the number of ranks (the paper's 8192)."""
    micro_batch: int = 32
    """Samples per rank per forward/backward; accumulation = global_batch / (micro_batch x ranks)."""
    max_predictions: int = 20
    """Masked tokens per sequence at most (the paper: 20 at 128, 80 at 512)."""
    peak_lr: float = 2.5e-3
    """LAMB's learning rate after warmup (the paper's 2.5e-3)."""
    warmup_fraction: float = 0.28
    """Linear warmup over this fraction of the phase's steps, then linear decay to `end_lr`."""
    end_lr: float = 0.0
    reset_optimizer: bool = False
    """Start this phase with fresh LAMB moments. Off: phase 2 continues phase 1's moments (the model and
    its gradient statistics carry over; only the length changes), with its own warmup from 0."""

    def validate(self, where: str) -> None:
        if not self.shards:
            raise RunConfigError(f"{where}.shards: name the seqN/ folder made by `python -m data_prep shards`")
        positive = {"steps": self.steps, "global_batch": self.global_batch, "micro_batch": self.micro_batch,
                    "max_predictions": self.max_predictions, "peak_lr": self.peak_lr}
        for key, value in positive.items():
            if value <= 0:
                raise RunConfigError(f"{where}.{key} = {value}: must be positive")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise RunConfigError(f"{where}.warmup_fraction = {self.warmup_fraction}: must be within [0, 1)")
        if not 0.0 <= self.end_lr <= self.peak_lr:
            raise RunConfigError(f"{where}.end_lr = {self.end_lr}: must be within [0, peak_lr]")

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_fraction * self.steps)


@dataclass
class OptimizerConfig:
    """LAMB with BERT's weight decay rule (see `pretrain.optim`)."""

    implementation: str = "reference"
    """reference: LAMB as apex FusedLAMB / TF-Addons define it | torch-optimizer: its `Lamb` (for comparison)."""
    weight_decay: float = 0.01
    """Applied to every weight except biases and LayerNorm parameters."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    gradient_clipping: float = 1.0
    """Global-norm clipping before the LAMB update (0 = off); NVIDIA's LAMB BERT recipe clips at 1.0."""
    max_consecutive_skips: int = 10
    """A step whose loss or gradient is not finite is skipped (no update); this many in a row stop the run."""
    initial_loss_scale: float = 2.0**16
    """fp16 only: the first dynamic loss scale (halved at each overflow, never below 1)."""
    loss_scale_growth_interval: int = 1000
    """fp16 only: the loss scale doubles after this many steps without overflow."""
    zero_stage: int = 0
    """Must stay 0: DeepSpeed's ZeRO 1/2 flatten each parameter group into one tensor, so LAMB would compute
    one trust ratio per group instead of per layer and silently train a different optimizer."""

    def validate(self) -> None:
        if self.implementation not in OPTIMIZER_IMPLEMENTATIONS:
            raise RunConfigError(f"optimizer.implementation = {self.implementation!r}: choose one of "
                                 f"{OPTIMIZER_IMPLEMENTATIONS}")
        if self.zero_stage != 0:
            raise RunConfigError(
                f"optimizer.zero_stage = {self.zero_stage}: LAMB needs ZeRO stage 0 (stages 1-2 flatten parameter "
                "groups and break LAMB's per-layer trust ratio); the 51M-parameter model fits every GPU without it"
            )
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise RunConfigError("optimizer.beta1 / beta2: must be within [0, 1)")
        if self.weight_decay < 0 or self.eps <= 0 or self.gradient_clipping < 0:
            raise RunConfigError("optimizer: weight_decay and gradient_clipping must be >= 0, eps > 0")
        if self.max_consecutive_skips < 1:
            raise RunConfigError(f"optimizer.max_consecutive_skips = {self.max_consecutive_skips}: must be at least 1")
        if self.initial_loss_scale < 1 or self.loss_scale_growth_interval < 1:
            raise RunConfigError("optimizer.initial_loss_scale and loss_scale_growth_interval: must be at least 1")


@dataclass
class MaskingConfig:
    """Dynamic masking (`pretrain.data.Batcher` reads this very object): drawn per sample at train time, the
    same on any number of ranks. The cap on masked tokens is each phase's `max_predictions`."""

    probability: float = 0.15
    """Share of an example's non-special tokens chosen for prediction (of its words with whole_word):
    BERT's 0.15; ModernBERT uses 0.30. Each phase's max_predictions caps the chosen tokens."""
    replace_with_mask: float = 0.8
    """Of the chosen tokens, the share replaced by [MASK] (BERT's 80%)."""
    replace_with_random: float = 0.1
    """Of the chosen tokens, the share replaced by a random token (BERT's 10%); the rest stay unchanged."""
    whole_word: bool = False
    """Whole-word masking: a wordpiece and its `##` continuations are chosen together (needs the
    vocabulary beside the shards, which data_prep puts there)."""

    def validate(self) -> None:
        if not 0 < self.probability < 1:
            raise RunConfigError(f"masking.probability = {self.probability}: must be within (0, 1)")
        if min(self.replace_with_mask, self.replace_with_random) < 0 or \
                self.replace_with_mask + self.replace_with_random > 1:
            raise RunConfigError("masking.replace_with_mask and replace_with_random: each >= 0, together <= 1")


@dataclass
class CheckpointConfig:
    dir: str = "checkpoints"
    every_steps: int = 1000
    """Save every N optimizer steps (0 = never by count), and at each phase end."""
    every_minutes: float = 30.0
    """Also save when this much wall time passed since the last save (0 = never by time)."""
    keep: int = 3
    """Complete checkpoints kept; older ones are deleted once a newer one is complete."""

    def validate(self) -> None:
        if self.every_steps < 0 or self.every_minutes < 0:
            raise RunConfigError("checkpoint.every_steps / every_minutes: must be >= 0")
        if self.keep < 1:
            raise RunConfigError(f"checkpoint.keep = {self.keep}: keep at least 1")


@dataclass
class LoggingConfig:
    dir: str = "runs"
    """TensorBoard event files go here."""
    every_steps: int = 10
    eval_every_steps: int = 500
    """Evaluate on the held-out samples every N steps (0 = never)."""
    eval_samples: int = 2048
    """Examples evaluated: the first `eval_samples` of a phase's `eval_shards`; without those, the last
    `eval_samples` examples (at most 10%) of the phase's shard set, which then never enter training."""
    peak_flops_per_device: float = 0.0
    """The accelerator's peak FLOP/s at the run's precision (e.g. 989e12 for an H100 in dense bf16); when set,
    MFU = achieved model FLOP/s / (peak x ranks) is logged as progress/mfu."""
    backends: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where the scalars go, any of tensorboard | wandb | mlflow (the last two are extras:
    pip install 'squeezebert-pretrain[wandb]' / '[mlflow]'); see `pretrain.log_backends`."""
    project: str = ""
    """The W&B project and the MLflow experiment. Empty: WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME, else
    squeezebert-pretrain."""
    run_name: str = ""
    """The run's display name in W&B and MLflow. Empty: the name the backend makes up."""
    mlflow_tracking_uri: str = ""
    """A server (http://host:5000) or a local store (sqlite:///path/mlflow.db). Empty: MLFLOW_TRACKING_URI,
    else MLflow's default (sqlite:///mlflow.db in the working folder). Credentials in it
    (https://user:token@host) are used to connect and shown nowhere (`redact_uri`)."""

    def validate(self) -> None:
        if self.every_steps < 1:
            raise RunConfigError(f"logging.every_steps = {self.every_steps}: must be at least 1")
        if self.eval_every_steps < 0 or self.eval_samples < 0 or self.peak_flops_per_device < 0:
            raise RunConfigError("logging.eval_every_steps, eval_samples and peak_flops_per_device must be >= 0")
        unknown = [name for name in self.backends if name not in LOGGING_BACKENDS]
        if unknown:
            raise RunConfigError(f"logging.backends = {self.backends}: unknown {unknown}; choose from "
                                 f"{list(LOGGING_BACKENDS)}")
        if len(set(self.backends)) != len(self.backends):
            raise RunConfigError(f"logging.backends = {self.backends}: a backend is named twice")


@dataclass
class RunConfig:
    model: str = "squeezebert-base"
    """A preset shipped in pretrain/presets/ (squeezebert-base, squeezebert-tiny)."""
    model_overrides: dict = field(default_factory=dict)
    """Preset fields to change, e.g. {hidden_dropout_prob = 0.0}; unknown names are an error."""
    init_from: str = ""
    """Optional initial weights: a transformers SqueezeBERT folder (continued pretraining) or a model folder."""
    seed: int = 42
    """Seeds the initialization, the epoch order, the masks and dropout."""
    objective: str = "mlm+sop"
    """mlm+sop: the paper's (masked LM and ALBERT's sentence-order prediction) | mlm: masked LM only, with no
    SOP head (none in checkpoints or the export) and each pair fed in document order (a swapped pair is put
    back), from the same shards."""
    precision: str = "auto"
    """auto | fp32 | bf16 | fp16. auto: bf16 on GPUs with native bf16, fp16 with loss scaling on other GPUs,
    fp32 on CPUs. Weights, gradients and LAMB's state are fp32 in every mode (see `pretrain.precision`)."""
    determinism: str = "default"
    """default | strict. The data, masks and dropout seeds are functions of (seed, indices) in both. On CPUs
    every kernel is deterministic, so both modes give the same bytes. On GPUs `default` lets cuBLAS and
    SDPA's memory-efficient attention (its backward sums with atomics) vary in the last bits from run to run;
    `strict` sets `torch.use_deterministic_algorithms` (an op without a deterministic kernel is an error),
    CUBLAS_WORKSPACE_CONFIG=:4096:8 and SDPA's math kernel (deterministic backward, more memory and time),
    so a rerun or an exact resume gives the same bytes on the same GPUs and ranks."""
    max_steps_this_run: int = 0
    """Stop (save, exit 75 as on preemption) after this many optimizer steps in this invocation (0 = no
    limit): fixed slices of a schedule for clusters that run chains of short jobs."""
    distributed_timeout_minutes: float = 10.0
    """How long a collective waits for a rank that stopped answering before the job fails with an error."""
    phases: list[PhaseConfig] = field(default_factory=list)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> None:
        if not self.phases:
            raise RunConfigError("phases: give at least one [[phases]] table")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise RunConfigError(f"phases: names repeat ({names}); each phase needs its own name")
        for index, phase in enumerate(self.phases):
            phase.validate(f"phases.{index}")
        if self.max_steps_this_run < 0 or self.distributed_timeout_minutes <= 0:
            raise RunConfigError("max_steps_this_run must be >= 0 and distributed_timeout_minutes > 0")
        if self.determinism not in DETERMINISM:
            raise RunConfigError(f"determinism = {self.determinism!r}: choose one of {DETERMINISM}")
        if self.objective not in OBJECTIVES:
            raise RunConfigError(f"objective = {self.objective!r}: choose one of {OBJECTIVES}")
        if self.precision not in PRECISIONS:
            raise RunConfigError(f"precision = {self.precision!r}: choose one of {PRECISIONS}")
        self.optimizer.validate()
        self.masking.validate()
        self.checkpoint.validate()
        self.logging.validate()

    def to_dict(self) -> dict:
        """The config as plain data, as it leaves the process: the `resolved config` line, the W&B and MLflow
        parameters, every checkpoint. Credentials in any URI are masked (`redacted`); the connections read
        the fields themselves."""
        return redacted(dataclasses.asdict(self))


# scheme://userinfo@ (userinfo up to the last @ before the path); a query parameter named like a secret
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
_SECRET_QUERY = re.compile(r"([?&;][^=&#\s]*(?:token|secret|passw|pwd|key|auth|sig|credential)[^=&#\s]*=)[^&#\s]*",
                           re.IGNORECASE)
REDACTED = "***"


def redact_uri(text: str) -> str:
    """`text` (a URI, or a message holding URIs) with credentials masked: the whole userinfo of
    `scheme://user:password@host` (a token may stand in the user's place, so the user goes too) and the
    values of query parameters named like a secret (`?token=`, `&api_key=`, `&sig=`) become `***`."""
    return _SECRET_QUERY.sub(r"\1" + REDACTED, _USERINFO.sub(r"\1" + REDACTED + "@", text))


def redacted(values):
    """A copy of nested dicts, lists and strings with `redact_uri` applied to every string."""
    if isinstance(values, str):
        return redact_uri(values)
    if isinstance(values, dict):
        return {key: redacted(value) for key, value in values.items()}
    if isinstance(values, (list, tuple)):
        return type(values)(redacted(value) for value in values)
    return values


# What a resumed run may change, as dotted keys of `RunConfig.to_dict()` (`*` = any phase): how the run is
# carried out (batch split, ranks, precision, saving, logging). Every other key is the run itself (its data
# order, schedule, optimizer, masks, model): a change is refused naming the key and both values.
MAY_CHANGE_ON_RESUME = (
    "max_steps_this_run", "distributed_timeout_minutes", "precision", "determinism",
    "phases.*.micro_batch", "phases.*.eval_shards",
    "phases.*.shards",  # compared by the shard sets' fingerprints, not by path: a moved folder is the same data
    "model_overrides.gradient_checkpointing", "model_overrides.compile",
    "optimizer.max_consecutive_skips", "optimizer.initial_loss_scale", "optimizer.loss_scale_growth_interval",
    "checkpoint.*", "logging.*",
)
SHOWN_WITHOUT_VALUE = ("logging.mlflow_tracking_uri",)  # may hold credentials


ABSENT = object()


def _shown(value) -> str:
    return "(absent)" if value is ABSENT else json.dumps(value)


def _dotted(values, prefix: str = "") -> dict:
    if isinstance(values, dict):
        return {k: v for key, value in values.items() for k, v in _dotted(value, f"{prefix}{key}.").items()}
    if isinstance(values, list) and values and all(isinstance(v, dict) for v in values):
        return {k: v for index, value in enumerate(values) for k, v in _dotted(value, f"{prefix}{index}.").items()}
    return {prefix[:-1]: values}


def resume_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """The differences between the config a checkpoint was saved with and the current one, as lines
    `key: saved -> current`: those `MAY_CHANGE_ON_RESUME` allows, and the others."""
    # A setting that is newer than the checkpoint's version had its default's behaviour then.
    defaults = _dotted({**RunConfig().to_dict(), "phases": [dataclasses.asdict(PhaseConfig())] * len(saved["phases"])})
    before = {**{k: v for k, v in defaults.items() if not k.startswith("model_overrides.")}, **_dotted(saved)}
    after = _dotted(current)
    allowed, refused = [], []
    phases = len(saved["phases"]), len(current["phases"])
    if phases[0] != phases[1]:
        refused.append(f"phases: {phases[0]} -> {phases[1]} phases")
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, ABSENT), after.get(key, ABSENT)
        parts = key.split(".")
        if old == new or parts[0] == "phases" and len(parts) > 1 and int(parts[1]) >= min(phases):
            continue  # the same, or in a phase only one side has (the count of phases says it)
        may = any(fnmatch.fnmatchcase(key, pattern) for pattern in MAY_CHANGE_ON_RESUME)
        if key in SHOWN_WITHOUT_VALUE:
            line = f"{key} (changed)"
        else:
            line = f"{key} {_shown(old)} -> {_shown(new)}"
        (allowed if may else refused).append(line)
    return allowed, refused


def gradient_accumulation(phase: PhaseConfig, world_size: int, where: str = "phase") -> int:
    """global_batch / (micro_batch x data-parallel size), or an error naming the keys if not whole."""
    per_step = phase.micro_batch * world_size
    if phase.global_batch % per_step:
        raise RunConfigError(
            f"{where}: global_batch {phase.global_batch} is not a multiple of micro_batch {phase.micro_batch} x "
            f"{world_size} ranks = {per_step}; change micro_batch or the number of ranks"
        )
    return phase.global_batch // per_step


# Each setting's choices are named here, with the settings, so that validating a config file imports no torch:
# `pretrain.optim.build_lamb` builds each implementation, `pretrain.precision.resolve_precision` resolves `auto`.
OPTIMIZER_IMPLEMENTATIONS = ("reference", "torch-optimizer")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OBJECTIVES = ("mlm+sop", "mlm")
DETERMINISM = ("default", "strict")
LOGGING_BACKENDS = ("tensorboard", "wandb", "mlflow")
NESTED = {"optimizer": OptimizerConfig, "masking": MaskingConfig, "checkpoint": CheckpointConfig,
          "logging": LoggingConfig}


def _build(cls, values: dict, prefix: str, source: str):
    """A dataclass from a dict: unknown keys and values of the wrong type are errors naming the key."""
    where = prefix.rstrip(".") or source
    if not isinstance(values, dict):
        raise RunConfigError(f"{where}: expected a table, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise RunConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    types = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name == "phases":
            if not isinstance(value, list):
                raise RunConfigError(f"{key}: expected a list of [[phases]] tables")
            kwargs[name] = [_build(PhaseConfig, v, f"{key}.{i}.", source) for i, v in enumerate(value)]
        elif name in NESTED:
            kwargs[name] = _build(NESTED[name], value, f"{key}.", source)
        else:
            kwargs[name] = typed(value, types[name], key, RunConfigError)
    return cls(**kwargs)


def apply_override(values: dict, assignment: str) -> None:
    """`key.sub=value` or `phases.1.steps=100` into the raw config dict."""
    path, text = split_assignment(assignment, "phases.0.steps=100", RunConfigError)
    keys = path.strip().split(".")
    target = values
    for depth, key in enumerate(keys[:-1]):
        if isinstance(target, list):
            if not key.isdigit() or int(key) >= len(target):
                raise RunConfigError(f"--set {path}: no element {key} in {'.'.join(keys[:depth])}")
            target = target[int(key)]
        else:
            target = target.setdefault(key, {})
            if not isinstance(target, (dict, list)):
                raise RunConfigError(f"--set {path}: {'.'.join(keys[:depth + 1])} is not a table")
    last = keys[-1]
    if isinstance(target, list):
        if not last.isdigit() or int(last) >= len(target):
            raise RunConfigError(f"--set {path}: no element {last}")
        target[int(last)] = parse_value(text)
    else:
        target[last] = parse_value(text)


def load_config(path: str | None, overrides: list[str] = ()) -> RunConfig:
    values = read_toml(path, RunConfigError) if path else {}
    for assignment in overrides:
        apply_override(values, assignment)
    config = _build(RunConfig, values, "", path or "config")
    config.validate()
    return config


def deepspeed_config(phase: PhaseConfig, world_size: int, optimizer: OptimizerConfig) -> dict:
    """The DeepSpeed JSON, derived (never maintained beside the run config).

    DeepSpeed runs in fp32 (mixed precision is autocast, `pretrain.precision`) and does not clip: LAMB
    clips by the global norm it computes anyway (`pretrain.optim`), so the norm is computed once."""
    return {
        "train_batch_size": phase.global_batch,
        "train_micro_batch_size_per_gpu": phase.micro_batch,
        "gradient_accumulation_steps": gradient_accumulation(phase, world_size, f"phase {phase.name}"),
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": optimizer.zero_stage},
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # the trainer logs; DeepSpeed's own prints would interleave
        # DeepSpeed's throughput timer is on by default and synchronizes the device at every micro-step's
        # forward and step: a host wait per micro-step. The trainer measures its own throughput.
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
        "wall_clock_breakdown": False,
    }


def describe(config: RunConfig) -> str:
    return json.dumps(config.to_dict(), indent=1)
