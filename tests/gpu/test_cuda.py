"""What only a CUDA device can check: bf16 through DeepSpeed's engine, where LAMB's state lands after a resume,
precision auto, no host synchronisation in the micro-steps, NCCL. Marked `gpu`: skipped, with the reason, where
torch sees no CUDA device (tests/conftest.py); run on a GPU machine with `bash bench/gpu_check.sh`.

The engine is built as `pretrain/trainer.py` builds it (`setup_distributed`, `build_lamb`, `deepspeed.initialize`
with `deepspeed_config`); the tiny preset keeps each test to seconds.
"""

import os

import pytest
import torch

from pretrain.config import CheckpointConfig, LoggingConfig, OptimizerConfig, PhaseConfig, RunConfig, deepspeed_config

pytestmark = pytest.mark.gpu

PRESET = "squeezebert-tiny"
MICRO_BATCH, SEQ_LEN, MASKED = 4, 64, 6


def tiny_model():
    from pretrain.model import ModelConfig
    from pretrain.pretraining_model import SqueezeBertForPretraining

    torch.manual_seed(0)
    return SqueezeBertForPretraining(ModelConfig.preset(PRESET))


def trainer_engine(model, accumulation: int = 1, precision: str = "bf16"):
    """(engine, LAMB, precision) as `Trainer.__init__` builds them, for a world of one."""
    import deepspeed

    from pretrain.distributed import setup_distributed
    from pretrain.optim import build_lamb
    from pretrain.precision import resolve_precision

    setup_distributed()
    phase = PhaseConfig(name="gpu", shards="unused", global_batch=MICRO_BATCH * accumulation, micro_batch=MICRO_BATCH)
    optimizer = build_lamb(model, OptimizerConfig(), lr=1e-3)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=deepspeed_config(phase, 1, OptimizerConfig()))
    assert engine.optimizer is optimizer
    resolved = resolve_precision(precision, engine.device)
    if hasattr(model, "run_in"):  # the trainer tells the model where it computes (autocast inside the engine)
        model.run_in(engine.device, resolved)
    return engine, optimizer, resolved


def host_batch(seed: int, vocab_size: int) -> dict:
    """A micro-batch as the trainer's loader gives it: CPU tensors in pinned memory, the masked positions with it."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (MICRO_BATCH, SEQ_LEN), generator=generator)
    attention_mask = torch.ones(MICRO_BATCH, SEQ_LEN, dtype=torch.long)
    attention_mask[0, SEQ_LEN // 2:] = 0  # one padded example
    mlm_labels = torch.full((MICRO_BATCH, SEQ_LEN), -100)
    for row in range(MICRO_BATCH):
        positions = torch.randperm(SEQ_LEN // 2 - 2, generator=generator)[:MASKED] + 1
        mlm_labels[row, positions] = input_ids[row, positions]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask,
             "token_type_ids": (torch.arange(SEQ_LEN) >= SEQ_LEN // 4).long().expand(MICRO_BATCH, -1).contiguous(),
             "mlm_labels": mlm_labels, "sop_labels": torch.randint(0, 2, (MICRO_BATCH,), generator=generator),
             "mlm_positions": (mlm_labels.view(-1) != -100).nonzero().squeeze(1)}
    return {key: value.pin_memory() for key, value in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}  # as Trainer.to_device


def test_engine_forward_under_the_trainers_autocast_gives_bf16_logits():
    from pretrain.precision import autocast

    model = tiny_model()
    engine, _, precision = trainer_engine(model)
    assert precision == "bf16"
    with autocast(engine.device, precision):
        output = engine(**to_device(host_batch(0, model.config.vocab_size), engine.device))
    # DeepSpeed's engine.forward re-enters autocast disabled on CUDA unless its own torch_autocast is configured:
    # fp32 logits here mean the whole "bf16" run computes in fp32.
    assert output.mlm_logits.dtype == torch.bfloat16
    assert output.mlm_logits.device.type == "cuda"


def test_the_trainer_computes_in_bf16_on_cuda(shard_root, tmp_path):
    """The real Trainer, whatever way it brings autocast to the model: its forwards give bf16 logits."""
    from pretrain.trainer import Trainer

    config = RunConfig(
        model=PRESET, precision="auto",
        phases=[PhaseConfig(name="gpu", shards=os.path.join(shard_root, "seq128"), steps=2, global_batch=8,
                            micro_batch=4)],
        checkpoint=CheckpointConfig(dir=str(tmp_path / "checkpoints"), every_steps=0, every_minutes=0),
        logging=LoggingConfig(dir=str(tmp_path / "runs"), eval_every_steps=0),
    )
    config.validate()
    trainer = Trainer(config)
    dtypes = []
    trainer.model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.mlm_logits.dtype))
    assert trainer.fit() == 0
    # Not trainer.close(): it would destroy the process group, and DeepSpeed keeps the groups it made from it for
    # the engines the next tests build in this process.
    trainer.metrics.close(trainer.outcome)
    assert trainer.precision == "bf16"
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_lamb_step_counters_live_on_their_parameters_device_after_a_resume(tmp_path):
    from pretrain.checkpoint import Checkpointer

    checkpointer = Checkpointer(CheckpointConfig(dir=str(tmp_path)), rank=0)

    def one_step(engine, optimizer):
        output = engine(**to_device(host_batch(1, engine.module.config.vocab_size), engine.device))
        engine.backward(output.loss)
        optimizer.gradient_norm()
        engine.step()

    engine, optimizer, _ = trainer_engine(tiny_model())
    one_step(engine, optimizer)
    path = checkpointer.save(engine, 1, {"test": True})
    resumed, resumed_optimizer, _ = trainer_engine(tiny_model())
    checkpointer.load(resumed, path)
    states = [(parameter, resumed_optimizer.state[parameter]) for group in resumed_optimizer.param_groups
              for parameter in group["params"] if parameter in resumed_optimizer.state]
    assert len(states) == len(optimizer.state) > 0
    for parameter, state in states:
        assert state["step"].device == parameter.device, "the fused Adam kernel needs its step count beside it"
        assert state["exp_avg"].device == state["exp_avg_sq"].device == parameter.device
        assert float(state["step"]) == 1.0
    one_step(resumed, resumed_optimizer)  # the fused kernel accepts the loaded state


def test_precision_auto_is_bf16_on_a_gpu_with_native_bf16():
    from pretrain.precision import resolve_precision

    device = torch.device("cuda", torch.cuda.current_device())
    native = torch.cuda.get_device_capability(device) >= (8, 0)
    assert resolve_precision("auto", device) == ("bf16" if native else "fp16")
    name = torch.cuda.get_device_name(device)
    if "H100" in name or "H200" in name:
        assert resolve_precision("auto", device) == "bf16"


def test_the_micro_steps_make_no_host_synchronisation():
    """The trainer's micro-steps (copies, forward, losses, backward, the sums) under sync debug mode "error":
    any `.item()`, `nonzero`, blocking copy or synchronize in them raises. The step's one planned read (the
    `.tolist()` of the all-reduced vector) comes after them, outside."""
    from pretrain.precision import autocast
    from pretrain.trainer import step_losses

    accumulation = 2
    model = tiny_model()
    engine, optimizer, precision = trainer_engine(model, accumulation)

    for step in range(3):
        micro_batches = [host_batch(10 * step + micro, model.config.vocab_size) for micro in range(accumulation)]
        masked = sum(batch["mlm_positions"].numel() for batch in micro_batches)  # a shape: known to the host
        torch.cuda.set_sync_debug_mode("error")
        try:
            batches = [to_device(batch, engine.device) for batch in micro_batches]
            global_masked = torch.full((), float(masked), device=engine.device)
            sums = torch.zeros(4, dtype=torch.float64, device=engine.device)
            for micro_step, batch in enumerate(batches):
                engine.set_gradient_accumulation_boundary(micro_step == accumulation - 1)
                with autocast(engine.device, precision):
                    output = engine(**batch)
                loss, mlm_sum, sop_sum = step_losses(output, MICRO_BATCH, global_masked, MICRO_BATCH * accumulation,
                                                     float(accumulation))
                engine.backward(loss)
                sums += torch.stack([mlm_sum, output.mlm_accuracy * output.num_masked, sop_sum,
                                     output.sop_accuracy * MICRO_BATCH]).double()
            gradient_norm = optimizer.gradient_norm()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(sums).all() and torch.isfinite(gradient_norm)
        engine.step()


def test_nccl_initialises_for_a_world_of_one():
    import torch.distributed as dist

    from pretrain.distributed import setup_distributed

    rank, world_size = setup_distributed(timeout_minutes=1)
    assert (rank, world_size) == (0, 1)
    assert dist.get_backend() == "nccl"
    assert torch.cuda.current_device() == 0
    values = torch.arange(3.0, device="cuda")
    dist.all_reduce(values)
    assert values.tolist() == [0.0, 1.0, 2.0]
