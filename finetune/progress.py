"""The console line with progress and ETA, a transformers `TrainerCallback` (TensorBoard is the Trainer's own
`TensorBoardCallback`). It prints from the logs the Trainer has already gathered at its logging steps, so it
adds no host synchronisation of its own."""

from __future__ import annotations

import datetime
import sys
import time

from transformers import TrainerCallback


class ConsoleProgress(TrainerCallback):
    def __init__(self, label: str) -> None:
        self.label = label
        self.start_time = time.monotonic()
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time, self.start_step = time.monotonic(), state.global_step  # a resumed run counts from here

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        done = state.global_step - self.start_step
        elapsed = time.monotonic() - self.start_time
        eta = elapsed / max(done, 1) * max(state.max_steps - state.global_step, 0)
        shown = {key: value for key, value in logs.items() if isinstance(value, float) and not key.endswith(
            ("_runtime", "_per_second", "epoch"))}
        figures = " ".join(f"{key} {value:.4g}" for key, value in sorted(shown.items()))
        print(f"finetune: {self.label} step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f} "
              f"{figures} ETA {datetime.timedelta(seconds=round(eta))}", file=sys.stderr, flush=True)


class SavedOnEveryRank(TrainerCallback):
    """After a checkpoint save, every rank waits for rank 0 to have written it: at the end of training the
    Trainer loads the best checkpoint on every rank (`load_best_model_at_end`) with no barrier of its own, and
    a rank that got there first found no weights, kept its last ones and evaluated another model than rank 0.
    Saves are rare, so the barrier costs nothing per step."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
