"""A training step's one all-reduce, with named slots.

What every rank must add up once per step (the losses and correct predictions of its share of the global batch,
the token counts, the preemption and save flags, its squared gradient norm) travels in ONE float64 vector: one
all-reduce, read to the host once (`.tolist()` in `Trainer.train_step`, the step's one host synchronisation).
`StepSums` names the slots: `pack` lays its fields out in declaration order and `unpack` reads them back in the same
order, so a field added anywhere moves no other field's value. Every slot is summed: a flag is 1.0 where set, and
set for every rank when its sum is > 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

Value = float | torch.Tensor  # a number the host knows, or a 0-dim tensor the device computed


@dataclass
class StepSums:
    mlm_sum: Value = 0.0  # MLM cross-entropy summed over the masked tokens (device)
    mlm_correct: Value = 0.0  # masked tokens predicted right (device)
    sop_sum: Value = 0.0  # SOP cross-entropy summed over the sequences (device)
    sop_correct: Value = 0.0  # sequences whose order was predicted right (device)
    masked: Value = 0.0  # masked tokens (host: a shape of the batches)
    tokens: Value = 0.0  # real tokens, padding excluded (host)
    squared_lengths: Value = 0.0  # squared real lengths, for attention's FLOPs (host)
    preempt: Value = 0.0  # 1.0 where SIGTERM / SIGUSR1 has arrived (host)
    save_due: Value = 0.0  # 1.0 where rank 0's clock says a save is due (host, rank 0 only)
    gradient_norm_squared: Value = 0.0  # the rank's global gradient norm, squared (device)

    def pack(self, device: torch.device) -> torch.Tensor:
        """The fields as one float64 vector on `device`, in declaration order. Device values are copied where they
        are; host numbers are filled in, a kernel launch each (`torch.tensor(values, device=...)` would copy from
        pageable memory and make the host wait for the device)."""
        slots = fields(self)
        vector = torch.empty(len(slots), dtype=torch.float64, device=device)
        for index, slot in enumerate(slots):
            value = getattr(self, slot.name)
            if isinstance(value, torch.Tensor):
                vector[index].copy_(value)
            else:
                vector[index].fill_(value)
        return vector

    @classmethod
    def unpack(cls, values: Sequence[float]) -> StepSums:
        """The fields from a packed vector as read to the host (after the all-reduce: the sums over ranks)."""
        names = [slot.name for slot in fields(cls)]
        if len(values) != len(names):
            raise ValueError(f"{cls.__name__}.unpack: {len(values)} values for the {len(names)} fields {names}")
        return cls(**dict(zip(names, values)))

    @property
    def preempted(self) -> bool:
        """A preemption signal reached some rank: every rank saves and stops at this step."""
        return self.preempt > 0

    @property
    def save_requested(self) -> bool:
        """Rank 0's clock asked for a save (`checkpoint.every_minutes`): every rank saves at this step."""
        return self.save_due > 0
