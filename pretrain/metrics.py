"""What a run reports: throughput, model FLOP/s and MFU, the scalars (to TensorBoard, W&B, MLflow: the
`logging.backends`, see `pretrain.log_backends`) and the console line.

Rank 0 writes; the other ranks hold a `Metrics` that writes nothing, so the loop reads the same on all.
FLOPs come from each step's real sequence lengths and masked tokens (`pretrain.model.step_flops`), so
padding does not count.
"""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import dataclass, field, fields

from formats.errors import one_line

from .config import LoggingConfig
from .distributed import on_rank0
from .log_backends import open_backends
from .model import ModelConfig, step_flops
from .step_sums import StepSums


def logged(group: str):
    """A step figure logged under the tag `<group>/<field name>`; None (its default) is not logged."""
    return field(default=None, metadata={"group": group})


@dataclass
class StepScalars:
    """One optimizer step's logged figures, each under the tag its field states: `train/` what training says of
    the model (losses, accuracies, the gradient norm, the loss scale, skipped steps), `progress/` how the run goes.
    A field left None is not logged: no SOP head, no fp16 loss scale, no peak FLOP/s given. The trainer fills the
    step's figures, `Metrics.step` the throughput; the backends get them in declaration order."""
    loss: float | None = logged("train")
    mlm_loss: float | None = logged("train")
    sop_loss: float | None = logged("train")
    mlm_accuracy: float | None = logged("train")
    sop_accuracy: float | None = logged("train")
    grad_norm: float | None = logged("train")
    loss_scale: float | None = logged("train")
    data_wait_s: float | None = logged("progress")  # waiting on the loader (0 when it keeps ahead)
    compute_s: float | None = logged("progress")  # the step itself
    skipped_steps: int | None = logged("train")
    lr: float | None = logged("progress")  # as the optimizer held it, so the schedule's test reads what was applied
    phase: int | None = logged("progress")
    samples_per_s: float | None = logged("progress")
    flops_per_s: float | None = logged("progress")
    tokens_per_s: float | None = logged("progress")
    step_in_phase: int | None = logged("progress")
    accumulation: int | None = logged("progress")
    mfu: float | None = logged("progress")

    def tags(self) -> dict:
        """{tag: value} of the figures set."""
        return {f"{slot.metadata['group']}/{slot.name}": getattr(self, slot.name) for slot in fields(self)
                if getattr(self, slot.name) is not None}


class Metrics:
    def __init__(self, config: LoggingConfig, model_config: ModelConfig, rank: int, world_size: int) -> None:
        self.config = config
        self.model_config = model_config
        self.rank = rank
        self.world_size = world_size
        self.backends = []  # rank 0's, from `open` on (once the checkpoint has said which runs to continue)
        self.run_ids = {}  # the W&B / MLflow runs, kept in every checkpoint
        self.missed = {}  # backend name -> writes it did not get after it failed

    def open(self, params: dict, resumed_run_ids: dict, checkpoint_dir: str) -> None:
        """Opens the backends on rank 0 (`params`: the resolved config); one that cannot open is the same
        one-line error on every rank. Collective."""
        def open_on_rank0() -> None:
            self.backends = open_backends(self.config, params, resumed_run_ids, checkpoint_dir, self.line)

        on_rank0(open_on_rank0)
        self.run_ids = {**resumed_run_ids, **{b.name: b.run_id for b in self.backends if b.run_id}}

    def write(self, values: dict, step: int) -> None:
        """`values` ({tag: value}) at `step` to every backend. One that fails is reported and left out."""
        for name in self.missed:  # a backend that failed earlier misses this write too
            self.missed[name] += 1
        for backend in list(self.backends):
            try:
                backend.scalars(values, step)
            except Exception as error:
                self.line(f"{backend.name}: could not log step {step} ({one_line(error)}); leaving it out for the "
                          "rest of this invocation (the next one logs to the same run again)")
                self.backends.remove(backend)
                self.missed[backend.name] = 1

    def line(self, text: str) -> None:
        if self.rank == 0:
            print(f"pretrain: {text}", file=sys.stderr, flush=True)

    def start_phase(self, phase, step_in_phase: int) -> None:
        """Throughput is measured from here (a resumed phase starts its clock at the resume)."""
        self.phase = phase
        self.start_time, self.start_step = time.monotonic(), step_in_phase
        self.phase_flops = 0.0

    def step(self, sums: StepSums, scalars: StepScalars, state, lr: float, accumulation: int) -> None:
        """One optimizer step's figures (`sums`: the step's all-reduced sums): throughput and MFU added to
        `scalars`, then logged (rank 0)."""
        phase = self.phase
        self.phase_flops += step_flops(self.model_config, sums.tokens, sums.squared_lengths, phase.global_batch,
                                       sums.masked)
        if self.rank != 0:
            return
        elapsed = time.monotonic() - self.start_time
        samples_per_s = (state.step_in_phase - self.start_step) * phase.global_batch / max(elapsed, 1e-9)
        flops_per_s = self.phase_flops / max(elapsed, 1e-9)
        scalars.lr, scalars.phase, scalars.samples_per_s, scalars.flops_per_s = \
            lr, state.phase_index, samples_per_s, flops_per_s
        scalars.tokens_per_s = samples_per_s * sums.tokens / phase.global_batch
        scalars.step_in_phase, scalars.accumulation = state.step_in_phase, accumulation
        if self.config.peak_flops_per_device:
            scalars.mfu = flops_per_s / (self.config.peak_flops_per_device * self.world_size)
        self.write(scalars.tags(), state.global_step)
        if state.step_in_phase % self.config.every_steps == 0 or state.step_in_phase == phase.steps:
            done = state.step_in_phase - self.start_step
            eta = elapsed / max(done, 1) * (phase.steps - state.step_in_phase)
            self.line(
                f"{phase.name} step {state.step_in_phase}/{phase.steps} loss {scalars.loss:.4f} "
                f"(mlm {scalars.mlm_loss:.4f}"
                + (f", sop {scalars.sop_loss:.4f}" if scalars.sop_loss is not None else "") + f") lr {lr:.3e} "
                f"grad_norm {scalars.grad_norm:.3f} {samples_per_s:.1f} samples/s "
                f"skipped {scalars.skipped_steps}"
                + (f" loss_scale {scalars.loss_scale:g}" if scalars.loss_scale is not None else "")
                + f" ETA {datetime.timedelta(seconds=round(eta))}"
            )
            for backend in self.backends:
                backend.flush()

    def evaluation(self, global_step: int, mlm_loss: float, sop_loss: float | None) -> None:
        """`sop_loss` None: an MLM-only run, which logs no SOP scalar."""
        values = {"eval/mlm_loss": mlm_loss}
        if sop_loss is not None:
            values["eval/sop_loss"] = sop_loss
        self.write(values, global_step)

    def close(self, outcome: str) -> None:
        """`outcome`: complete | preempted | failed (W&B and MLflow record it as the run's state)."""
        for name, count in self.missed.items():
            self.line(f"{name}: {count} writes of this invocation did not reach it (see the error above)")
        backends, self.backends = self.backends, []
        for backend in backends:
            try:
                backend.close(outcome)
            except Exception as error:  # the run's outcome stands; its log's last state is reported
                self.line(f"{backend.name}: could not close the run ({one_line(error)})")
