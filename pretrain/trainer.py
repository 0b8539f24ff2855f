"""The training loop: resume → (phases: steps → log → checkpoint) → done.

Runs as a plain process (CPU or one GPU), under `deepspeed` or under `torchrun`: the distributed environment comes
from the launcher's variables, or defaults to a world of one. The rules it keeps (losses normalized by the global
batch, dropout seeded per (seed, step, micro-step's place), no host synchronisation per micro-step and one
all-reduce per step, every collective's tensor on the engine's device, non-finite steps skipped by every rank) are
in docs/design.md ("Global batch", "Devices", "Non-finite steps") and README's training section; the comments below
mark where each is kept.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from formats.errors import UserError
from formats.layout import vocab_beside
from formats.manifest import load_manifest
from formats.vocabulary import short

from .checkpoint import Checkpointer, CheckpointError
from .checkpoint_schema import ClientState
from .config import RunConfig, RunConfigError, deepspeed_config, gradient_accumulation, resume_changes
from .data import Batcher, MicroBatches, ShardSet, step_loader
from .distributed import (
    Preemption,
    device_vector,
    leave_signals_to_the_main_process,
    leave_together,
    on_rank0,
    parameter_fingerprint,
    set_last_words,
    setup_distributed,
    write_status,
)
from .log_backends import check as check_log_backends
from .metrics import Metrics, StepScalars
from .model import ModelConfig
from .optim import build_lamb, learning_rate, set_learning_rate
from .precision import DynamicLossScale, make_deterministic, resolve_on_every_rank
from .pretraining_model import SqueezeBertForPretraining
from .step_sums import StepSums

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved after SIGTERM/SIGUSR1; requeue and rerun the same command


class TrainingDiverged(Exception):
    """The loss or the gradients stayed non-finite, or the parameters became so; the message names the step."""


@dataclass
class StepResult:
    """What a step hands the loop: its all-reduced sums, the decisions every rank takes alike, the logged figures."""
    sums: StepSums
    scalars: StepScalars
    skipped: bool  # the loss or the gradient norm was not finite on some rank: nothing was updated
    overflow_only: bool  # fp16: skipped only because the gradients overflowed, which the loss scale handles


@dataclass
class TrainerState:
    phase_index: int = 0
    step_in_phase: int = 0  # optimizer steps completed in the current phase
    global_step: int = 0  # optimizer steps completed over all phases
    consumed_samples: int = 0  # global samples consumed in the current phase
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient, over all phases
    consecutive_skips: int = 0  # of those, in a row up to now

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, values: dict) -> None:
        """`values` as `checkpoint_schema.read_client_state` upgraded them: every counter is there."""
        for key in asdict(self):
            if key not in values or not isinstance(values[key], int) or values[key] < 0:
                raise RunConfigError(f"checkpoint: trainer state has a bad {key!r}: {values.get(key)!r}")
            setattr(self, key, values[key])


RUNTIME_MODEL_FIELDS = ("gradient_checkpointing", "compile")


def build_model(config: RunConfig) -> SqueezeBertForPretraining:
    from .model_files import load_any

    sop = config.objective == "mlm+sop"
    if config.init_from:
        model, vocabulary = load_any(config.init_from)
        check_init_vocabulary(config, vocabulary.sha256)
        # Overrides that change how the model runs, not its weights, apply to a loaded model too (the README's
        # separate phase-2 run starts from init_from); any other override would contradict the weights.
        fixed = sorted(set(config.model_overrides) - set(RUNTIME_MODEL_FIELDS))
        if fixed:
            raise RunConfigError(f"model_overrides {fixed}: a model loaded from init_from keeps its own; only "
                                 f"{list(RUNTIME_MODEL_FIELDS)} can be set for it")
        for name, value in config.model_overrides.items():
            setattr(model.config, name, value)
        model.config.__post_init__()  # the same checks as a config file's value
        if not sop:
            model.remove_sop_head()
        elif model.sop_classifier is None:
            raise RunConfigError(f"init_from = {config.init_from!r}: an MLM-only model has no SOP head to continue "
                                 'training; set objective = "mlm" or start from a model with one')
        return model
    preset = ModelConfig.preset(config.model).to_dict()
    unknown = sorted(set(config.model_overrides) - set(preset))
    if unknown:
        raise RunConfigError(f"model_overrides: unknown model fields {unknown}")
    return SqueezeBertForPretraining(ModelConfig.from_dict({**preset, **config.model_overrides}), sop=sop)


def check_init_vocabulary(config: RunConfig, trained_with: str | None) -> None:
    """A model from a trainer checkpoint (`init_from`, sha256 of the vocabulary it was trained with) goes on with
    shards made with that vocabulary, so that its token ids mean the same wordpieces."""
    try:
        made_with = load_manifest(config.phases[0].shards)["tokenizer"]["sha256"] if config.phases else None
    except (UserError, KeyError, TypeError):  # open_phase_data reports it, naming the key
        return
    if trained_with is not None and made_with != trained_with:
        raise RunConfigError(f"init_from = {config.init_from!r}: trained with the vocabulary of sha256 "
                             f"{short(trained_with)}, phases.0.shards was made with {short(made_with)}; use shards "
                             "made with the model's vocabulary")


def open_phase_data(config: RunConfig, model_config: ModelConfig) -> list[Batcher]:
    """Every phase's shards, checked against the model before any compute."""
    batchers = []
    for index, phase in enumerate(config.phases):
        try:
            shards = ShardSet(phase.shards)
        except UserError as error:  # the same error, told which key named the folder
            raise type(error)(f"phases.{index}.shards: {error}") from None
        if shards.vocab_size > model_config.vocab_size:
            raise RunConfigError(
                f"phases.{index}.shards: vocabulary of {shards.vocab_size} wordpieces, the model has "
                f"{model_config.vocab_size}; use shards made with the model's vocabulary"
            )
        if batchers and shards.vocab_sha256 != batchers[0].shards.vocab_sha256:  # a checkpoint records one
            raise RunConfigError(f"phases.{index}.shards: made with the vocabulary of sha256 "
                                 f"{short(shards.vocab_sha256)}, phases.0.shards with "
                                 f"{short(batchers[0].shards.vocab_sha256)}; a run trains one vocabulary: use shard "
                                 "sets made with the same one")
        if shards.seq_len > model_config.max_position_embeddings:
            raise RunConfigError(f"phases.{index}.shards: length {shards.seq_len} exceeds the model's "
                                 f"max_position_embeddings {model_config.max_position_embeddings}")
        evaluating = bool(config.logging.eval_every_steps)
        eval_shards = open_eval_shards(phase, shards, f"phases.{index}") if phase.eval_shards else None
        held_out = min(config.logging.eval_samples, len(shards) // 10) if evaluating and not eval_shards else 0
        # MLM only: the pairs in document order, so a swapped one is put back
        batchers.append(Batcher(shards, config.seed + index, config.masking, phase.max_predictions, held_out=held_out,
                                document_order=config.objective == "mlm", eval_shards=eval_shards,
                                eval_count=config.logging.eval_samples))
    return batchers


def open_eval_shards(phase, shards: ShardSet, where: str) -> ShardSet:
    """A phase's `eval_shards`, checked to be tokenized as its training shards are."""
    try:
        eval_shards = ShardSet(phase.eval_shards)
    except UserError as error:
        raise type(error)(f"{where}.eval_shards: {error}") from None
    if eval_shards.manifest["tokenizer"] != shards.manifest["tokenizer"]:
        raise RunConfigError(f"{where}.eval_shards: {phase.eval_shards} was made with another vocabulary than "
                             f"{phase.shards}; use the held-out split made with the training shards")
    if eval_shards.fingerprint == shards.fingerprint:
        raise RunConfigError(f"{where}.eval_shards: the training shards themselves; name the held-out split "
                             "(data_prep shards --holdout-fraction) or leave it empty")
    return eval_shards


def step_losses(output, batch_size: int, global_masked: torch.Tensor, global_batch: int,
                scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The micro-batch's share of the step's loss, and its MLM and SOP cross-entropy sums. `global_masked`
    stays a device tensor: dividing by it needs no host read."""
    mlm_sum = output.mlm_loss * output.num_masked  # the heads' mean times its count: no second cross-entropy
    sop_sum = output.sop_loss * batch_size
    loss = (mlm_sum / global_masked.clamp(min=1) + sop_sum / global_batch) * scale
    return loss, mlm_sum.detach(), sop_sum.detach()


class Trainer:
    def __init__(self, config: RunConfig) -> None:
        import deepspeed

        self.config = config
        make_deterministic(config.determinism)  # before the process's first CUDA work
        self.rank, self.world_size = setup_distributed(config.distributed_timeout_minutes)
        for index, phase in enumerate(config.phases):  # a bad batch split fails before any compute
            gradient_accumulation(phase, self.world_size, f"phases.{index}")
        # W&B / MLflow: a missing package or a server that does not answer fails here, on every rank
        on_rank0(lambda: check_log_backends(config.logging))
        torch.manual_seed(config.seed)
        self.model = build_model(config)
        self.batchers = open_phase_data(config, self.model.config)
        first = config.phases[0]
        # LAMB is the optimizer DeepSpeed steps, unwrapped: the engine runs in fp32 (see pretrain.precision)
        self.optimizer = build_lamb(self.model, config.optimizer, lr=first.peak_lr)  # lr set every step
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer,
            config=deepspeed_config(first, self.world_size, config.optimizer),
        )
        if self.engine.optimizer is not self.optimizer:  # the skip protocol and fp32 state rely on it
            raise RuntimeError("DeepSpeed wrapped the LAMB optimizer; this DeepSpeed version is not supported")
        self.device = self.engine.device
        self.precision = resolve_on_every_rank(config.precision, self.device)
        # autocast (and strict determinism) inside the engine, where DeepSpeed cannot undo it
        self.model.run_in(self.device, self.precision, config.determinism)
        self.loss_scale = None
        if self.precision == "fp16":
            self.loss_scale = DynamicLossScale(config.optimizer.initial_loss_scale,
                                               config.optimizer.loss_scale_growth_interval)
        self.state = TrainerState()
        self.checkpointer = Checkpointer(config.checkpoint, self.rank)
        self.preemption = Preemption()
        self.metrics = Metrics(config.logging, self.model.config, self.rank, self.world_size)
        set_last_words(lambda: self.metrics.close("failed"))  # a peer's failure ends this rank too
        self.resumed_run_ids = {}  # the W&B / MLflow runs the checkpoint names
        self.outcome = "failed"  # until fit returns

    # -- checkpoints -------------------------------------------------------------------------------

    def client_state(self) -> ClientState:
        return ClientState(
            trainer=self.state.state_dict(),
            config=self.config.to_dict(),
            model_config=self.model.config.to_dict(),
            vocab_dir=vocab_beside(self.config.phases[0].shards),
            vocab_sha256=self.batchers[0].shards.vocab_sha256,  # what an export's tokenizer files must be
            shards=[b.shards.fingerprint for b in self.batchers],
            world_size=self.world_size,
            loss_scale=self.loss_scale.state_dict() if self.loss_scale else None,
            logging_runs=self.metrics.run_ids,
        )

    def save(self) -> None:
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):  # the same parameters on every rank: every rank stops here
            raise TrainingDiverged(f"global step {self.state.global_step}: the parameters are not finite, so no "
                                   "checkpoint was written; the last complete one is kept")
        started = time.monotonic()
        path = self.checkpointer.save(self.engine, self.state.global_step, self.client_state())
        # how long a save takes here is what the batch system's KillWait (or --signal's lead) must cover
        self.metrics.line(f"saved {path} in {time.monotonic() - started:.1f} s")

    def resume(self) -> None:
        path, problems = self.checkpointer.usable()
        for problem in problems:
            self.metrics.line(f"{problem}; trying the previous checkpoint")
        if path is None:
            if problems:
                raise CheckpointError(f"{self.config.checkpoint.dir}: no usable checkpoint ({problems[-1]}); "
                                      "move the damaged ones away to start over, or restore them")
            return
        client = self.checkpointer.load(self.engine, path)
        allowed, refused = resume_changes(client.config, self.config.to_dict())
        if refused:
            raise RunConfigError(
                f"{path} was saved by a run with other settings ({'; '.join(refused)}); a resume continues that "
                f"run: restore them, or start a new run from its weights with init_from = \"{path}\" and "
                "another checkpoint.dir")
        self.state.load_state_dict(client.trainer)
        if self.loss_scale and client.loss_scale:  # None: saved by a run that was not fp16
            self.loss_scale.load_state_dict(client.loss_scale)
        self.resumed_run_ids = client.logging_runs
        trained_with, current = client.vocab_sha256, self.batchers[0].shards.vocab_sha256  # None: not recorded
        if trained_with is not None and trained_with != current:
            raise RunConfigError(f"{path}: trained with the vocabulary of sha256 {short(trained_with)}, "
                                 f"phases.0.shards was made with {short(current)}; resume on shards made with the "
                                 "checkpoint's vocabulary, or use a new checkpoint.dir")
        if client.shards[: len(self.batchers)] != [b.shards.fingerprint for b in self.batchers]:
            raise RunConfigError(f"{path}: was trained on other shards than the config names; "
                                 "use the same shard sets or a new checkpoint.dir")
        changes = allowed
        if client.world_size != self.world_size:
            changes.append(f"world size {client.world_size} -> {self.world_size} (accumulation recomputed)")
        self.metrics.line(f"resumed from {path} at global step {self.state.global_step} "
                      f"(phase {self.state.phase_index}, step {self.state.step_in_phase})"
                      + (f"; changed: {', '.join(changes)}" if changes else ""))

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self) -> int:
        try:
            code = self.run_phases()
        except BaseException:
            self.metrics.close("failed")  # W&B and MLflow mark the run failed; the error goes on up
            raise
        self.outcome = "complete" if code == 0 else "preempted"
        return code

    def run_phases(self) -> int:
        self.metrics.line("resolved config " + json.dumps(self.config.to_dict()))
        self.metrics.line(f"precision {self.precision} on {self.device} (weights, gradients and LAMB state in fp32)")
        self.resume()
        # opened once the checkpoint has named the runs to continue, before the first step
        self.metrics.open(self.config.to_dict(), self.resumed_run_ids, self.config.checkpoint.dir)
        self.steps_this_run = 0
        while self.state.phase_index < len(self.config.phases):
            stopped_by = self.train_phase()  # None when the phase ran to its end
            budget = self.config.max_steps_this_run
            if not stopped_by and budget and self.steps_this_run >= budget \
                    and self.state.phase_index + 1 < len(self.config.phases):
                # The phase-end checkpoint is saved; the next invocation starts the next phase from it.
                stopped_by = "step budget of this run spent at the end of a phase"
            if stopped_by:
                self.metrics.line(f"{stopped_by}: saved at global step {self.state.global_step}; exit {EXIT_PREEMPTED}")
                write_status("preempted", self.state.global_step)
                return EXIT_PREEMPTED
            self.state.phase_index += 1
            self.state.step_in_phase = 0
            self.state.consumed_samples = 0
        fingerprint = parameter_fingerprint(self.model, self.world_size)
        self.metrics.line(f"training complete; parameters identical on all {self.world_size} ranks "
                          f"(sha256 {fingerprint})")
        write_status("complete", self.state.global_step)
        return 0

    def close(self) -> None:
        """The orderly end of a run that returned (complete or preempted): the logs are closed, then every
        rank leaves the process group together."""
        self.metrics.close(self.outcome)
        leave_together()

    def configure_phase(self, phase) -> int:
        accumulation = self.accumulation = gradient_accumulation(phase, self.world_size)
        self.engine.set_train_micro_batch_size(phase.micro_batch)
        self.engine.set_train_batch_size(phase.global_batch)
        return accumulation

    def train_phase(self) -> str | None:
        """The current phase from its current step on; the reason it stopped early, or None at its end."""
        config = self.config
        index = self.state.phase_index
        phase, batcher = config.phases[index], self.batchers[index]
        accumulation = self.configure_phase(phase)
        if phase.reset_optimizer and self.state.step_in_phase == 0 and index > 0:
            self.optimizer.state.clear()
        dataset = MicroBatches(batcher, phase.global_batch, phase.micro_batch, self.rank, self.world_size,
                               self.state.step_in_phase, phase.steps)
        loader = step_loader(dataset, pin_memory=self.device.type == "cuda",
                             worker_init_fn=leave_signals_to_the_main_process)
        steps = iter(loader)
        self.metrics.start_phase(phase, self.state.step_in_phase)
        budget = config.max_steps_this_run
        while self.state.step_in_phase < phase.steps:
            lr = learning_rate(phase, self.state.step_in_phase)
            set_learning_rate(self.optimizer, lr)
            waited = time.perf_counter()
            micro_batches = next(steps)  # built ahead by the loader's workers
            computed = time.perf_counter()
            result = self.train_step(micro_batches, phase, accumulation)
            # Where a step's time goes: waiting on the loader (0 when it keeps ahead) and the step itself.
            result.scalars.data_wait_s, result.scalars.compute_s = computed - waited, time.perf_counter() - computed
            self.state.step_in_phase += 1
            self.state.global_step += 1
            self.state.consumed_samples += phase.global_batch
            self.count_skip(result)
            # logged as the optimizer holds it, so the test of the schedule reads what was applied
            self.metrics.step(result.sums, result.scalars, self.state, self.optimizer.param_groups[0]["lr"],
                              accumulation)
            if config.logging.eval_every_steps and self.state.global_step % config.logging.eval_every_steps == 0:
                self.evaluate(batcher, phase)
            self.steps_this_run += 1
            phase_ended = self.state.step_in_phase == phase.steps
            budget_spent = bool(budget) and self.steps_this_run >= budget and not phase_ended
            stopped_by = None
            if result.sums.preempted or budget_spent:
                stopped_by = "preempted" if result.sums.preempted else "step budget of this run spent"
            if stopped_by or self.checkpointer.due(self.state.global_step, phase_ended, result.sums.save_requested):
                self.save()
            if stopped_by:
                return stopped_by
        return None

    def count_skip(self, result: StepResult) -> None:
        """Counts a skipped step; too many in a row end the run (the last complete checkpoint stands)."""
        state = self.state
        if result.skipped:
            state.skipped_steps += 1
        if result.skipped and not result.overflow_only:
            state.consecutive_skips += 1
        elif not result.skipped:
            state.consecutive_skips = 0
        result.scalars.skipped_steps = state.skipped_steps
        limit = self.config.optimizer.max_consecutive_skips
        if state.consecutive_skips >= limit:
            raise TrainingDiverged(
                f"global step {state.global_step}: the loss or the gradient norm was not finite for {limit} steps "
                f"in a row (optimizer.max_consecutive_skips); the last complete checkpoint in "
                f"{self.config.checkpoint.dir} is kept: lower the learning rate or check the data, then resume")

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, micro_batches: list[dict], phase, accumulation: int) -> StepResult:
        # What the host knows without asking the device: counts are shapes of the (CPU) batches.
        masked = sum(b["mlm_positions"].numel() for b in micro_batches)
        lengths = torch.cat([b["attention_mask"].sum(1) for b in micro_batches]).double()
        batches = [self.to_device(b) for b in micro_batches]
        global_masked = torch.full((), float(masked), device=self.device)
        if dist.is_initialized():
            dist.all_reduce(global_masked)
        loss_scale = self.loss_scale.scale if self.loss_scale else 1.0
        self.optimizer.loss_scale = loss_scale  # LAMB divides it back out of the gradients
        scale = accumulation * self.world_size * loss_scale  # undoes DeepSpeed's 1/accumulation and rank mean
        sums = StepSums()  # the device's sums start as host zeros and become device tensors at the first add
        for micro_step, batch in enumerate(batches):
            # The boundary is stated, not counted, so a resume or a phase change can never misalign it.
            self.engine.set_gradient_accumulation_boundary(micro_step == accumulation - 1)
            # Dropout is seeded by the micro-batch's place in the global batch, not by (rank, micro-step):
            # the same examples get the same dropout on any number of ranks (same micro-batch size).
            place = micro_step * self.world_size + self.rank  # see data.rank_slice
            torch.manual_seed(hash((self.config.seed, self.state.global_step, place)) % (2**63))
            output = self.engine(**batch)
            batch_size = len(batch["sop_labels"])
            loss, mlm_sum, sop_sum = step_losses(output, batch_size, global_masked, phase.global_batch, scale)
            self.engine.backward(loss)
            sums.mlm_sum += mlm_sum.double()
            sums.mlm_correct += (output.mlm_accuracy * output.num_masked).double()
            sums.sop_sum += sop_sum.double()
            sums.sop_correct += (output.sop_accuracy * batch_size).double()
        # the last backward all-reduced the gradients: the norm is the same on every rank
        sums.gradient_norm_squared = self.optimizer.gradient_norm().double().square()
        sums.masked, sums.tokens, sums.squared_lengths = masked, float(lengths.sum()), float(lengths.square().sum())
        # read at the end of the step, so a signal that arrived during it is acted on now
        sums.preempt, sums.save_due = float(self.preemption.requested), float(self.checkpointer.clock_due())
        reduced = sums.pack(self.device)
        if dist.is_initialized():
            dist.all_reduce(reduced)
        sums = StepSums.unpack(reduced.tolist())  # the read
        loss_finite = math.isfinite(sums.mlm_sum) and math.isfinite(sums.sop_sum)
        gradients_finite = math.isfinite(sums.gradient_norm_squared)
        finite = loss_finite and gradients_finite
        # fp16: gradients that overflow while the loss is finite are the loss scale's business, not divergence
        overflow_only = bool(self.loss_scale) and loss_finite and self.loss_scale.scale > self.loss_scale.minimum
        if self.loss_scale:
            self.loss_scale.update(finite)
        self.optimizer.overflow = not finite  # LAMB then changes nothing; DeepSpeed counts a skipped step
        self.engine.step()
        masked_total = max(sums.masked, 1)
        mlm_loss, sop_loss = sums.mlm_sum / masked_total, sums.sop_sum / phase.global_batch
        scalars = StepScalars(loss=mlm_loss + sop_loss, mlm_loss=mlm_loss, mlm_accuracy=sums.mlm_correct / masked_total,
                              grad_norm=math.sqrt(sums.gradient_norm_squared / self.world_size),  # same on every rank
                              loss_scale=loss_scale if self.loss_scale else None)
        if self.model.sop_classifier is not None:  # MLM only: no SOP figure is logged
            scalars.sop_loss, scalars.sop_accuracy = sop_loss, sums.sop_correct / phase.global_batch
        return StepResult(sums, scalars, skipped=not finite, overflow_only=not finite and overflow_only)

    @torch.no_grad()
    def evaluate(self, batcher: Batcher, phase) -> None:
        if not batcher.eval_count:
            return
        self.engine.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # MLM and SOP cross-entropy sums
        counts = [0, 0]  # masked tokens, sequences: shapes, known to the host
        share = range(self.rank * phase.micro_batch, batcher.eval_count, self.world_size * phase.micro_batch)
        for start in share:
            batch = batcher(torch.arange(start, min(start + phase.micro_batch, batcher.eval_count)).numpy(),
                            evaluation=True)
            counts[0] += batch["mlm_positions"].numel()
            counts[1] += len(batch["sop_labels"])
            batch = self.to_device(batch)
            output = self.engine(**batch)
            sop_sum = (F.cross_entropy(output.sop_logits.float(), batch["sop_labels"], reduction="sum")
                       if output.sop_logits is not None else output.sop_loss)
            sums += torch.stack([
                F.cross_entropy(output.mlm_logits.float(), output.mlm_targets, reduction="sum"), sop_sum,
            ]).double()
        totals = torch.cat([sums, device_vector(counts, self.device)])
        if dist.is_initialized():
            dist.all_reduce(totals)
        mlm_sum, sop_sum, masked, sequences = totals.tolist()
        self.engine.train()
        self.metrics.evaluation(self.state.global_step, mlm_sum / max(masked, 1),
                                sop_sum / max(sequences, 1) if self.model.sop_classifier is not None else None)
