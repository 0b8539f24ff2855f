"""The training loop: resume → (phases: steps → log → checkpoint) → done.

Runs as a plain process (CPU or one GPU), under `deepspeed` or under `torchrun`: the distributed
environment comes from the launcher's variables, or defaults to a world of one.

Losses are normalized by the *global* batch: the MLM loss of a step is the sum of the cross-entropies of
all masked tokens of the global batch over their global count (all-reduced before the backward), and the
SOP loss the sum over the global batch over its size. Each micro-batch's loss is scaled so that DeepSpeed's
1/accumulation and its mean over ranks give exactly that gradient, so a step's update does not depend on
how the global batch is split into ranks and micro-batches (up to float summation order). Dropout is
seeded per (seed, step, micro-step, rank), so no RNG state needs saving for an exact resume.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import Checkpointer
from .config import RunConfig, RunConfigError, deepspeed_config, gradient_accumulation
from .data import Batcher, MaskingConfig, MicroBatches, ShardSet
from .heads import SqueezeBertForPretraining
from .model import ModelConfig, flops_per_token
from .optim import build_lamb, learning_rate, set_learning_rate

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved after SIGTERM/SIGUSR1; requeue and rerun the same command


@dataclass
class TrainerState:
    phase_index: int = 0
    step_in_phase: int = 0  # optimizer steps completed in the current phase
    global_step: int = 0  # optimizer steps completed over all phases
    consumed_samples: int = 0  # global samples consumed in the current phase

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, values: dict) -> None:
        for key in asdict(self):
            if key not in values or not isinstance(values[key], int) or values[key] < 0:
                raise RunConfigError(f"checkpoint: trainer state has a bad {key!r}: {values.get(key)!r}")
            setattr(self, key, values[key])


class Preemption:
    """SIGTERM / SIGUSR1 set a flag; every step the ranks agree (max over ranks) whether to stop."""

    def __init__(self) -> None:
        self.requested = False
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, self._handler)

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def agreed(self) -> bool:
        flag = torch.tensor([1 if self.requested else 0])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def setup_distributed(timeout_minutes: float = 10.0) -> tuple[int, int]:
    import deepspeed

    if "RANK" not in os.environ:  # a plain process: a world of one
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return dist.get_rank(), dist.get_world_size()


def use_bf16(config: RunConfig) -> bool:
    if config.precision == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return config.precision == "bf16"


def build_model(config: RunConfig) -> SqueezeBertForPretraining:
    from .export import load_any

    if config.init_from:
        model, _vocab = load_any(config.init_from)
        return model
    preset = ModelConfig.preset(config.model).to_dict()
    unknown = sorted(set(config.model_overrides) - set(preset))
    if unknown:
        raise RunConfigError(f"model_overrides: unknown model fields {unknown}")
    return SqueezeBertForPretraining(ModelConfig.from_dict({**preset, **config.model_overrides}))


def open_phase_data(config: RunConfig, model_config: ModelConfig) -> list[Batcher]:
    """Every phase's shards, checked against the model before any compute."""
    batchers = []
    for index, phase in enumerate(config.phases):
        try:
            shards = ShardSet(phase.shards)
        except Exception as error:
            raise RunConfigError(f"phases.{index}.shards: {error}") from None
        if shards.vocab_size > model_config.vocab_size:
            raise RunConfigError(
                f"phases.{index}.shards: vocabulary of {shards.vocab_size} wordpieces, the model has "
                f"{model_config.vocab_size}; use shards made with the model's vocabulary"
            )
        if shards.seq_len > model_config.max_position_embeddings:
            raise RunConfigError(f"phases.{index}.shards: length {shards.seq_len} exceeds the model's "
                                 f"max_position_embeddings {model_config.max_position_embeddings}")
        held_out = min(config.logging.eval_samples, len(shards) // 10) if config.logging.eval_every_steps else 0
        batchers.append(Batcher(shards, config.seed + index, MaskingConfig(max_predictions=phase.max_predictions),
                                held_out=held_out))
    return batchers


def step_losses(output, batch_size: int, global_masked: int, global_batch: int,
                scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The micro-batch's share of the step's loss, and its MLM and SOP cross-entropy sums."""
    mlm_sum = output.mlm_loss * output.num_masked  # the heads' mean times its count: no second cross-entropy
    sop_sum = output.sop_loss * batch_size
    return (mlm_sum / max(global_masked, 1) + sop_sum / global_batch) * scale, mlm_sum.detach(), sop_sum.detach()


class Trainer:
    def __init__(self, config: RunConfig) -> None:
        import deepspeed

        self.config = config
        self.rank, self.world_size = setup_distributed(config.distributed_timeout_minutes)
        for index, phase in enumerate(config.phases):  # a bad batch split fails before any compute
            gradient_accumulation(phase, self.world_size, f"phases.{index}")
        torch.manual_seed(config.seed)
        self.model = build_model(config)
        self.batchers = open_phase_data(config, self.model.config)
        self.bf16 = use_bf16(config)
        first = config.phases[0]
        optimizer = build_lamb(self.model, config.optimizer, lr=first.peak_lr)  # set every step from the schedule
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.model, optimizer=optimizer,
            # bf16 weights under DeepSpeed on accelerators; on CPU, bf16 is autocast over fp32 (see train_step)
            config=deepspeed_config(first, self.world_size, config.optimizer, self.bf16 and torch.cuda.is_available()),
        )
        self.device = self.engine.device
        self.state = TrainerState()
        self.checkpointer = Checkpointer(config.checkpoint.dir, config.checkpoint.keep, self.rank)
        self.preemption = Preemption()
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(config.logging.dir)
        self.last_save_time = time.monotonic()

    # -- checkpoints -------------------------------------------------------------------------------

    def client_state(self) -> dict:
        return {
            "trainer": self.state.state_dict(),
            "config": self.config.to_dict(),
            "model_config": self.model.config.to_dict(),
            "vocab_dir": os.path.join(os.path.dirname(os.path.abspath(self.config.phases[0].shards)), "vocab"),
            "shards": [b.shards.fingerprint for b in self.batchers],
            "world_size": self.world_size,
        }

    def save(self) -> None:
        path = self.checkpointer.save(self.engine, self.state.global_step, self.client_state())
        self.last_save_time = time.monotonic()
        self.log_line(f"saved {path}")

    def resume(self) -> None:
        path = self.checkpointer.latest()
        if path is None:
            return
        client = self.checkpointer.load(self.engine, path)
        self.state.load_state_dict(client["trainer"])
        if client["shards"][: len(self.batchers)] != [b.shards.fingerprint for b in self.batchers]:
            raise RunConfigError(f"{path}: was trained on other shards than the config names; "
                                 "use the same shard sets or a new checkpoint.dir")
        changes = []
        if client["world_size"] != self.world_size:
            changes.append(f"world size {client['world_size']} -> {self.world_size} (accumulation recomputed)")
        self.log_line(f"resumed from {path} at global step {self.state.global_step} "
                      f"(phase {self.state.phase_index}, step {self.state.step_in_phase})"
                      + (f"; changed: {', '.join(changes)}" if changes else ""))

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self) -> int:
        self.log_line("resolved config " + json.dumps(self.config.to_dict()))
        self.resume()
        self.steps_this_run = 0
        while self.state.phase_index < len(self.config.phases):
            if self.train_phase() == EXIT_PREEMPTED:
                self.write_status("preempted")
                return EXIT_PREEMPTED
            budget = self.config.max_steps_this_run
            if budget and self.steps_this_run >= budget and self.state.phase_index + 1 < len(self.config.phases):
                # The phase-end checkpoint is saved; the next invocation starts the next phase from it.
                self.log_line(f"step budget of this run spent at the end of a phase; exit {EXIT_PREEMPTED}")
                self.write_status("preempted")
                return EXIT_PREEMPTED
            self.state.phase_index += 1
            self.state.step_in_phase = 0
            self.state.consumed_samples = 0
        fingerprint = self.parameter_fingerprint()
        self.log_line(f"training complete; parameters identical on all {self.world_size} ranks (sha256 {fingerprint})")
        self.write_status("complete")
        return 0

    def parameter_fingerprint(self) -> str:
        """sha256 of all parameters, checked equal on every rank (data parallelism must keep them so)."""
        import hashlib

        digest = hashlib.sha256()
        for parameter in self.model.parameters():
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
        mine = digest.hexdigest()
        everyone = [None] * self.world_size
        if dist.is_initialized():
            dist.all_gather_object(everyone, mine)
        else:
            everyone = [mine]
        if len(set(everyone)) != 1:
            raise RuntimeError(f"parameters differ between ranks: {everyone}")
        return mine

    def close(self) -> None:
        """The orderly end of a run that returned (complete or preempted): the event file is closed, then
        every rank leaves the process group together. A rank that exits while a peer still holds its
        connections can make that peer's collective library abort at exit (SIGABRT from gloo)."""
        if self.writer:
            self.writer.close()
            self.writer = None
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def write_status(self, state: str) -> None:
        """For job scripts (launch/): PRETRAIN_STATUS_FILE gets `complete` or `preempted <step>`, written by
        the first rank of every node (the outcome is agreed by all ranks), so each node's script knows it
        even when its launcher's exit code says otherwise."""
        path = os.environ.get("PRETRAIN_STATUS_FILE")
        if path and os.environ.get("LOCAL_RANK", "0") == "0":
            from data_prep.atomic import atomic_write_bytes

            atomic_write_bytes(path, f"{state} {self.state.global_step}\n".encode())

    def configure_phase(self, phase) -> int:
        accumulation = self.accumulation = gradient_accumulation(phase, self.world_size)
        self.engine.set_train_micro_batch_size(phase.micro_batch)
        self.engine.set_train_batch_size(phase.global_batch)
        return accumulation

    def train_phase(self) -> int:
        config = self.config
        index = self.state.phase_index
        phase, batcher = config.phases[index], self.batchers[index]
        accumulation = self.configure_phase(phase)
        if phase.reset_optimizer and self.state.step_in_phase == 0 and index > 0:
            self.optimizer.state.clear()
        dataset = MicroBatches(batcher, phase.global_batch, phase.micro_batch, self.rank, self.world_size,
                               self.state.step_in_phase, phase.steps)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, prefetch_factor=4,
                                             persistent_workers=False)
        batches = iter(loader)
        flops_token = flops_per_token(self.model.config, batcher.shards.seq_len, phase.max_predictions)
        start_time, start_step = time.monotonic(), self.state.step_in_phase
        budget = config.max_steps_this_run
        while self.state.step_in_phase < phase.steps:
            step = self.state.step_in_phase
            lr = learning_rate(phase, step)
            set_learning_rate(self.optimizer, lr)
            waited = time.perf_counter()
            micro_batches = [next(batches) for _ in range(accumulation)]
            computed = time.perf_counter()
            metrics = self.train_step(micro_batches, phase, accumulation)
            # Where a step's time goes: waiting on the loader (0 when it keeps ahead) and the step itself.
            metrics.update(data_wait_s=computed - waited, compute_s=time.perf_counter() - computed)
            self.state.step_in_phase += 1
            self.state.global_step += 1
            self.state.consumed_samples += phase.global_batch
            if self.rank == 0:
                elapsed = time.monotonic() - start_time
                samples_per_s = (self.state.step_in_phase - start_step) * phase.global_batch / max(elapsed, 1e-9)
                flops_per_s = samples_per_s * batcher.shards.seq_len * flops_token
                metrics.update(lr=lr, phase=index, samples_per_s=samples_per_s,
                               tokens_per_s=samples_per_s * metrics.pop("mean_length"), flops_per_s=flops_per_s)
                if config.logging.peak_flops_per_device:
                    metrics["mfu"] = flops_per_s / (config.logging.peak_flops_per_device * self.world_size)
                self.log_step(metrics, phase, elapsed, start_step)
            if config.logging.eval_every_steps and self.state.global_step % config.logging.eval_every_steps == 0:
                self.evaluate(batcher, phase)
            self.steps_this_run += 1
            budget_spent = bool(budget) and self.steps_this_run >= budget
            stop = self.preemption.agreed() or (budget_spent and self.state.step_in_phase < phase.steps)
            if stop or self.should_save(phase):
                self.save()
            if stop:
                reason = "step budget of this run spent" if budget_spent else "preempted"
                self.log_line(f"{reason}: saved at global step {self.state.global_step}; exit {EXIT_PREEMPTED}")
                return EXIT_PREEMPTED
        return 0

    def should_save(self, phase) -> bool:
        every = self.config.checkpoint
        if self.state.step_in_phase == phase.steps:
            return True
        if every.every_steps and self.state.global_step % every.every_steps == 0:
            return True
        if not every.every_minutes:  # the same config on every rank: no collective needed to agree on this
            return False
        due = time.monotonic() - self.last_save_time >= every.every_minutes * 60
        flag = torch.tensor([1 if due else 0])  # wall clocks differ: rank 0's decides for everyone
        if dist.is_initialized():
            dist.broadcast(flag, src=0)
        return bool(flag.item())

    def train_step(self, micro_batches: list[dict], phase, accumulation: int) -> dict:
        counts = torch.tensor([float(sum(int((b["mlm_labels"] != -100).sum()) for b in micro_batches))])
        if dist.is_initialized():
            dist.all_reduce(counts)
        global_masked = int(counts.item())
        scale = accumulation * self.world_size  # undoes DeepSpeed's 1/accumulation and mean over ranks
        totals = torch.zeros(6, dtype=torch.float64)  # mlm_sum, masked, mlm_correct, sop_sum, sop_correct, tokens
        for micro_step, batch in enumerate(micro_batches):
            # The boundary is stated, not counted, so a resume or a phase change can never misalign it.
            self.engine.set_gradient_accumulation_boundary(micro_step == accumulation - 1)
            # Dropout is seeded by the micro-batch's place in the global batch, not by (rank, micro-step):
            # the same examples get the same dropout on any number of ranks (same micro-batch size).
            place = micro_step * self.world_size + self.rank  # see data.rank_slice
            torch.manual_seed(hash((self.config.seed, self.state.global_step, place)) % (2**63))
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16 and self.device.type == "cpu"):
                output = self.engine(**batch)
            batch_size = len(batch["sop_labels"])
            loss, mlm_sum, sop_sum = step_losses(output, batch_size, global_masked, phase.global_batch, scale)
            self.engine.backward(loss)
            totals += torch.stack([
                mlm_sum.double(), torch.tensor(float(output.num_masked), dtype=torch.float64, device=mlm_sum.device),
                (output.mlm_accuracy * output.num_masked).double(), sop_sum.double(),
                (output.sop_accuracy * batch_size).double(),
                batch["attention_mask"].sum().double(),
            ]).cpu()
        grad_norm = self.gradient_norm()  # the last backward all-reduced the gradients
        self.engine.step()
        if dist.is_initialized():
            dist.all_reduce(totals)
        mlm_loss = totals[0].item() / max(totals[1].item(), 1)
        sop_loss = totals[3].item() / phase.global_batch
        return {
            "loss": mlm_loss + sop_loss, "mlm_loss": mlm_loss, "sop_loss": sop_loss,
            "mlm_accuracy": totals[2].item() / max(totals[1].item(), 1),
            "sop_accuracy": totals[4].item() / phase.global_batch, "grad_norm": grad_norm,
            "mean_length": totals[5].item() / phase.global_batch,
        }

    def gradient_norm(self) -> float:
        """Global L2 norm of the averaged gradients, before clipping (DeepSpeed does not report it for a
        client optimizer in fp32). Gradients are all-reduced by the last backward, so every rank agrees."""
        squares = [p.grad.detach().float().pow(2).sum() for p in self.model.parameters() if p.grad is not None]
        return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0

    @torch.no_grad()
    def evaluate(self, batcher: Batcher, phase) -> None:
        if not batcher.held_out:
            return
        self.engine.eval()
        totals = torch.zeros(4, dtype=torch.float64)
        share = range(self.rank * phase.micro_batch, batcher.held_out, self.world_size * phase.micro_batch)
        for start in share:
            batch = batcher(torch.arange(start, min(start + phase.micro_batch, batcher.held_out)).numpy(),
                            evaluation=True)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            output = self.engine(**batch)
            totals += torch.tensor([
                F.cross_entropy(output.mlm_logits.float(), output.mlm_targets, reduction="sum").item(),
                output.num_masked,
                F.cross_entropy(output.sop_logits.float(), batch["sop_labels"], reduction="sum").item(),
                len(batch["sop_labels"]),
            ], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(totals)
        self.engine.train()
        if self.writer:
            step = self.state.global_step
            self.writer.add_scalar("eval/mlm_loss", totals[0].item() / max(totals[1].item(), 1), step)
            self.writer.add_scalar("eval/sop_loss", totals[2].item() / max(totals[3].item(), 1), step)

    # -- logging (rank 0) --------------------------------------------------------------------------

    def log_step(self, metrics: dict, phase, elapsed: float, start_step: int) -> None:
        step = self.state.global_step
        for key, value in metrics.items():
            group = "train" if "loss" in key or "accuracy" in key or key == "grad_norm" else "progress"
            self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.add_scalar("progress/step_in_phase", self.state.step_in_phase, step)
        self.writer.add_scalar("progress/accumulation", self.accumulation, step)
        if self.state.step_in_phase % self.config.logging.every_steps == 0 or self.state.step_in_phase == phase.steps:
            done = self.state.step_in_phase - start_step
            eta = elapsed / max(done, 1) * (phase.steps - self.state.step_in_phase)
            self.log_line(
                f"{phase.name} step {self.state.step_in_phase}/{phase.steps} loss {metrics['loss']:.4f} "
                f"(mlm {metrics['mlm_loss']:.4f}, sop {metrics['sop_loss']:.4f}) lr {metrics['lr']:.3e} "
                f"grad_norm {metrics['grad_norm']:.3f} {metrics['samples_per_s']:.1f} samples/s "
                f"ETA {datetime.timedelta(seconds=round(eta))}"
            )
            self.writer.flush()

    def log_line(self, text: str) -> None:
        if self.rank == 0:
            print(f"pretrain: {text}", file=sys.stderr, flush=True)
