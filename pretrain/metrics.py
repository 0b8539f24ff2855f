"""What a run reports: throughput, model FLOP/s and MFU, TensorBoard scalars and the console line.

Rank 0 writes; the other ranks hold a `Metrics` that writes nothing, so the loop reads the same on all.
FLOPs come from each step's real sequence lengths and masked tokens (`pretrain.model.step_flops`), so
padding does not count.
"""

from __future__ import annotations

import datetime
import sys
import time

from .config import LoggingConfig
from .model import ModelConfig, step_flops

# step values that are decisions for the loop, not scalars to log
NOT_LOGGED = ("skipped", "overflow_only", "preempt", "save_due", "reduced")


class Metrics:
    def __init__(self, config: LoggingConfig, model_config: ModelConfig, rank: int, world_size: int) -> None:
        self.config = config
        self.model_config = model_config
        self.rank = rank
        self.world_size = world_size
        self.writer = None
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(config.dir)

    def line(self, text: str) -> None:
        if self.rank == 0:
            print(f"pretrain: {text}", file=sys.stderr, flush=True)

    def start_phase(self, phase, step_in_phase: int) -> None:
        """Throughput is measured from here (a resumed phase starts its clock at the resume)."""
        self.phase = phase
        self.start_time, self.start_step = time.monotonic(), step_in_phase
        self.phase_flops = 0.0

    def step(self, metrics: dict, state, lr: float, accumulation: int) -> None:
        """One optimizer step's figures: throughput and MFU added, then logged (rank 0)."""
        reduced, phase = metrics["reduced"], self.phase
        self.phase_flops += step_flops(self.model_config, reduced["tokens"], reduced["squared_lengths"],
                                       phase.global_batch, reduced["masked"])
        if not self.writer:
            return
        elapsed = time.monotonic() - self.start_time
        samples_per_s = (state.step_in_phase - self.start_step) * phase.global_batch / max(elapsed, 1e-9)
        flops_per_s = self.phase_flops / max(elapsed, 1e-9)
        scalars = {key: value for key, value in metrics.items() if key not in NOT_LOGGED}
        scalars.update(lr=lr, phase=state.phase_index, samples_per_s=samples_per_s, flops_per_s=flops_per_s,
                       tokens_per_s=samples_per_s * reduced["tokens"] / phase.global_batch,
                       step_in_phase=state.step_in_phase, accumulation=accumulation)
        if self.config.peak_flops_per_device:
            scalars["mfu"] = flops_per_s / (self.config.peak_flops_per_device * self.world_size)
        for key, value in scalars.items():
            trained = "loss" in key or "accuracy" in key or key in ("grad_norm", "skipped_steps")
            self.writer.add_scalar(f"{'train' if trained else 'progress'}/{key}", value, state.global_step)
        if state.step_in_phase % self.config.every_steps == 0 or state.step_in_phase == phase.steps:
            done = state.step_in_phase - self.start_step
            eta = elapsed / max(done, 1) * (phase.steps - state.step_in_phase)
            self.line(
                f"{phase.name} step {state.step_in_phase}/{phase.steps} loss {scalars['loss']:.4f} "
                f"(mlm {scalars['mlm_loss']:.4f}"
                + (f", sop {scalars['sop_loss']:.4f}" if "sop_loss" in scalars else "") + f") lr {lr:.3e} "
                f"grad_norm {scalars['grad_norm']:.3f} {samples_per_s:.1f} samples/s "
                f"skipped {scalars['skipped_steps']}"
                + (f" loss_scale {scalars['loss_scale']:g}" if "loss_scale" in scalars else "")
                + f" ETA {datetime.timedelta(seconds=round(eta))}"
            )
            self.writer.flush()

    def evaluation(self, global_step: int, mlm_loss: float, sop_loss: float | None) -> None:
        """`sop_loss` None: an MLM-only run, which logs no SOP scalar."""
        if self.writer:
            self.writer.add_scalar("eval/mlm_loss", mlm_loss, global_step)
            if sop_loss is not None:
                self.writer.add_scalar("eval/sop_loss", sop_loss, global_step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
            self.writer = None
