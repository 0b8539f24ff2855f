"""A step's one all-reduce: every named field comes back as itself, whatever the order or number of fields, and sums
over real ranks; the logged figures get their tags from their fields."""

import dataclasses
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.metrics import StepScalars
from pretrain.step_sums import StepSums

NAMES = [slot.name for slot in dataclasses.fields(StepSums)]


def distinct(cls, offset=0.0):
    """An instance whose fields all differ, half of them device tensors as in a step, half host numbers."""
    return cls(**{name: torch.tensor(index + offset + 0.5, dtype=torch.float64) if index % 2 else index + offset + 0.5
                  for index, name in enumerate(slot.name for slot in dataclasses.fields(cls))})


def as_numbers(sums):
    return {name: float(value) for name, value in dataclasses.asdict(sums).items()}


def test_pack_then_unpack_gives_every_field_back():
    sums = distinct(StepSums)
    vector = sums.pack(torch.device("cpu"))
    assert vector.dtype == torch.float64 and vector.shape == (len(NAMES),)
    assert as_numbers(StepSums.unpack(vector.tolist())) == as_numbers(sums)


def test_a_field_added_or_moved_shifts_no_other_field():
    """The layout follows the class's own fields: a field inserted first and the others in reverse still read back
    each as itself."""
    layout = [("added", float, dataclasses.field(default=0.0))] + \
        [(slot.name, slot.type, dataclasses.field(default=0.0)) for slot in dataclasses.fields(StepSums)][::-1]
    reordered = dataclasses.make_dataclass("Reordered", layout, namespace={
        "pack": StepSums.pack, "unpack": classmethod(StepSums.unpack.__func__)})
    sums = distinct(reordered)
    assert as_numbers(reordered.unpack(sums.pack(torch.device("cpu")).tolist())) == as_numbers(sums)
    try:
        StepSums.unpack(sums.pack(torch.device("cpu")).tolist())
    except ValueError as error:
        assert "11 values for the 10 fields" in str(error)
    else:
        raise AssertionError("a vector of another layout was read as StepSums")


def reduce_on_rank(rank, store_file, results):
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    sums = distinct(StepSums, offset=100.0 * rank)
    sums.preempt = float(rank == 1)  # a signal that reached rank 1 only
    vector = sums.pack(torch.device("cpu"))
    dist.all_reduce(vector)
    results[rank] = as_numbers(StepSums.unpack(vector.tolist()))
    dist.destroy_process_group()


def test_two_ranks_sum_every_field_and_a_flag_on_one_rank_is_seen_by_both():
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(reduce_on_rank, args=(os.path.join(folder, "store"), results), nprocs=2)
        results = dict(results)
    expected = {name: 2 * (index + 0.5) + 100.0 for index, name in enumerate(NAMES)}
    expected["preempt"] = 1.0
    assert results[0] == results[1] == expected
    assert StepSums.unpack(list(expected.values())).preempted


def test_the_logged_tags_come_from_the_fields_and_unset_figures_are_not_logged():
    scalars = StepScalars(**{slot.name: 1.0 for slot in dataclasses.fields(StepScalars)})
    assert list(scalars.tags()) == [
        "train/loss", "train/mlm_loss", "train/sop_loss", "train/mlm_accuracy", "train/sop_accuracy",
        "train/grad_norm", "train/loss_scale", "progress/data_wait_s", "progress/compute_s", "train/skipped_steps",
        "progress/lr", "progress/phase", "progress/samples_per_s", "progress/flops_per_s", "progress/tokens_per_s",
        "progress/step_in_phase", "progress/accumulation", "progress/mfu"]
    assert StepScalars(loss=2.5, mlm_loss=2.0, skipped_steps=0).tags() == {
        "train/loss": 2.5, "train/mlm_loss": 2.0, "train/skipped_steps": 0}
