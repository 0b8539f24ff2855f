"""The measurements of the device check (`bench/gpu_check.py` runs each in its own process; see its docstring).

Each task takes the check's context and records rows (what the table prints) and figures (what the JSON keeps)
in it; a check that finds a fault records a FAILED row and the task goes on. On a CPU (`--dry-run`) the tasks
run the same code on the tiny preset, and what only CUDA can answer (host synchronisations, GPU memory) is
recorded as "skipped: no CUDA".

What is timed:
- the project's step: `SqueezeBertForPretraining` forward and backward under `pretrain.precision.autocast(device,
  "bf16")` and the reference LAMB step (`pretrain.optim.build_lamb`), without the DeepSpeed engine (the engine
  adds no arithmetic: it calls the model and the optimizer); the engine's own step is timed through the real
  `Trainer` (`trainer_steps`). FLOPs: `pretrain.model.step_flops` of the batch (logits at masked positions only);
- transformers' `SqueezeBertForMaskedLM` (logits at every position) + a linear SOP head, with
  `torch.optim.AdamW(fused=True)`, bf16 autocast, the same weights and batch (bench/bench_model_step.py's);
- each timing: warm-up steps excluded, then CUDA events around each step (the median is reported) and the wall
  time of all timed steps between two synchronisations; peak memory is `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings

import torch
import torch.nn.functional as F

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH]

from formats.errors import one_line  # noqa: E402

SAMPLE = os.path.join(ROOT, "tests", "assets", "enwiki_sample")  # 21 real articles, what the tests' shards use
PLANNED_READ = ("trainer.py", "train_step", ".tolist()")  # the step's one read of the device (file, function, code)
LEARNING_RATE = 2.5e-3  # the paper's LAMB peak; the step costs the same at any rate


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Frees what the last measurement left, so the next one's peak memory is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def time_steps(step, device: torch.device, warmup: int, steps: int) -> dict:
    """Seconds per call of `step()` after `warmup` untimed calls: CUDA events around each call (median), and the
    wall time of all timed calls between two synchronisations (mean). The first warm-up call's wall time is kept
    (it holds torch.compile's compilation)."""
    first_s = None
    for index in range(warmup):
        start = time.perf_counter()
        step()
        synchronize(device)
        if index == 0:
            first_s = time.perf_counter() - start
    synchronize(device)
    times = []
    wall_start = time.perf_counter()
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for begin, end in events:
            begin.record()
            step()
            end.record()
        synchronize(device)
        times = [begin.elapsed_time(end) / 1e3 for begin, end in events]
    else:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    wall = (time.perf_counter() - wall_start) / steps
    return {"median_s": statistics.median(times), "mean_wall_s": wall, "first_step_s": first_s, "times_s": times}


def mfu(flops_per_s: float, rate: float | None) -> float | None:
    return flops_per_s / rate if rate else None


# ---- environment ---------------------------------------------------------------------------------------------

DATASHEET_BF16_DENSE = (  # name fragment -> dense bf16 FLOP/s; the more specific names first
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("A100", 312e12),
)
PACKAGES = ("torch", "deepspeed", "transformers", "accelerate", "datasets", "pyarrow", "tokenizers", "triton",
            "numpy", "pydantic", "typing_extensions", "huggingface_hub", "fsspec", "torch-optimizer", "blingfire")


def datasheet_peak(name: str) -> float | None:
    return next((peak for fragment, peak in DATASHEET_BF16_DENSE if fragment in name), None)


def environment(ctx, gemm_size: int, repeats: int = 10) -> None:
    import importlib.metadata as metadata

    device = ctx.device
    figures = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
               "cuda_available": device.type == "cuda", "packages": {}}
    for name in PACKAGES:
        try:
            figures["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            figures["packages"][name] = None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        figures.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability()),
                       memory_gib=properties.total_memory / 2**30, multiprocessors=properties.multi_processor_count,
                       cudnn=torch.backends.cudnn.version(), nccl=str(torch.cuda.nccl.version()),
                       bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
        figures["datasheet_bf16_flops"] = datasheet_peak(figures["gpu"])
    else:
        figures.update(gpu=None, datasheet_bf16_flops=None, threads=torch.get_num_threads())
    ctx.figures.update(figures)
    ctx.save()
    a = torch.randn(gemm_size, gemm_size, device=device, dtype=torch.bfloat16)
    b = torch.randn(gemm_size, gemm_size, device=device, dtype=torch.bfloat16)
    timing = time_steps(lambda: torch.mm(a, b), device, warmup=3, steps=repeats)
    rate = 2 * gemm_size**3 / timing["median_s"]
    ctx.figures["gemm_bf16_flops"] = rate
    peak = figures["datasheet_bf16_flops"]
    where = (f"{figures['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}" if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    ctx.row("bf16 GEMM rate", shape=f"{gemm_size}^3", note=f"{rate / 1e12:,.1f} TFLOP/s"
            + (f" ({rate / peak:.0%} of the datasheet's {peak / 1e12:.0f})" if peak else "") + f"; {where}")


# ---- the real Trainer ------------------------------------------------------------------------------------------

def shard_root(ctx) -> str:
    """Vocabulary and seq128 shards of the Wikipedia sample, made once per check by the data_prep CLI."""
    root = os.path.join(ctx.work_dir, "shards")
    if os.path.isfile(os.path.join(root, "seq128", "manifest.json")):
        return root
    vocab = os.path.join(ctx.work_dir, "vocab")
    for command in (["vocab", "--source", SAMPLE, "--out", vocab, "--vocab-size", "6000"],
                    ["shards", "--source", SAMPLE, "--vocab", vocab, "--out", root, "--seq-len", "128",
                     "--num-proc", str(min(8, os.cpu_count() or 1)), "--shard-text-mb", "0.2", "--quiet"]):
        result = subprocess.run([sys.executable, "-m", "data_prep", *command], cwd=ROOT, capture_output=True,
                                text=True)
        if result.returncode:
            raise RuntimeError(f"data_prep {command[0]} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return root


def build_trainer(ctx, preset: str, steps: int, global_batch: int, micro_batch: int, name: str):
    from pretrain.config import CheckpointConfig, LoggingConfig, PhaseConfig, RunConfig
    from pretrain.trainer import Trainer

    folder = os.path.join(ctx.work_dir, name)
    config = RunConfig(
        model=preset, seed=1234,
        # auto is the paper config's: bf16 on a GPU with native bf16. On a CPU, bf16 autocast by name, so the
        # dry run exercises the same checks.
        precision="auto" if ctx.device.type == "cuda" else "bf16",
        phases=[PhaseConfig(name=name, shards=os.path.join(shard_root(ctx), "seq128"), steps=steps,
                            global_batch=global_batch, micro_batch=micro_batch, max_predictions=20,
                            warmup_fraction=0.25)],
        checkpoint=CheckpointConfig(dir=os.path.join(folder, "checkpoints"), every_steps=0, every_minutes=0, keep=1),
        logging=LoggingConfig(dir=os.path.join(folder, "runs"), every_steps=1, eval_every_steps=0),
    )
    config.validate()
    return Trainer(config)


class SyncRecorder:
    """Every host synchronisation that torch's sync debug mode ("warn") reports inside the block, with the
    Python stack where it happened. Warn rather than error: one run lists them all, not only the first."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.found: list[list[traceback.FrameSummary]] = []

    def __enter__(self) -> "SyncRecorder":
        if self.enabled:
            self._catch = warnings.catch_warnings()
            self._catch.__enter__()
            warnings.simplefilter("always")
            self._show, warnings.showwarning = warnings.showwarning, self._record
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(*exc)

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):
            return self._show(message, category, filename, lineno, file, line)
        stack = traceback.extract_stack()
        # the frames of the code that synchronised: those above the warnings machinery that called this
        machinery = [index for index, frame in enumerate(stack)
                     if os.path.basename(frame.filename) in ("warnings.py", "_py_warnings.py")]
        stack = stack[:machinery[0]] if machinery else stack[:-1]
        self.found.append(stack + [traceback.FrameSummary(f"<thread {threading.current_thread().name}>", 0, "")])


def planned(stack: list[traceback.FrameSummary]) -> bool:
    """The step's one planned read: `.tolist()` of the all-reduced vector in `Trainer.train_step`."""
    frame = stack[-2]  # the innermost Python frame (the last entry names the thread)
    filename, function, code = PLANNED_READ
    return frame.filename.endswith(os.path.join("pretrain", filename)) and frame.name == function and \
        code in (frame.line or "")


def short_path(path: str) -> str:
    """A path inside the repository relative to it, one in a library from its package on."""
    path = os.path.abspath(path)
    if path.startswith(ROOT + os.sep):
        return os.path.relpath(path, ROOT)
    return path.split("site-packages" + os.sep)[-1]


def where(stack: list[traceback.FrameSummary]) -> str:
    frame = stack[-2]
    return f"{short_path(frame.filename)}:{frame.lineno} {frame.name}: {(frame.line or '').strip()}"


def trainer_check(ctx, preset: str, steps: int, global_batch: int, micro_batch: int) -> None:
    """The real Trainer, a few steps on the tiny shards: bf16 logits through the DeepSpeed engine, finite losses,
    and (CUDA) the host synchronisations of each `train_step`."""
    device = ctx.device
    trainer = build_trainer(ctx, preset, steps, global_batch, micro_batch, "trainer_check")
    logits_dtypes: list[torch.dtype] = []
    trainer.model.register_forward_hook(lambda module, inputs, output: logits_dtypes.append(output.mlm_logits.dtype))
    recorded, losses = [], []
    original = trainer.train_step

    def train_step(micro_batches, phase, accumulation):
        synchronize(device)
        with SyncRecorder(enabled=device.type == "cuda") as syncs:
            metrics = original(micro_batches, phase, accumulation)
        recorded.append(syncs.found)
        losses.append(metrics.scalars.loss)
        return metrics

    trainer.train_step = train_step
    code = trainer.fit()
    trainer.close()
    precision = trainer.precision
    ctx.figures.update(precision=precision, exit_code=code, losses=losses,
                       logits_dtypes=sorted({str(dtype) for dtype in logits_dtypes}))
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    wrong = sorted({str(dtype) for dtype in logits_dtypes if dtype != expected})
    ctx.row(f"{precision} logits through the engine", shape=f"{micro_batch}x128", status="FAILED" if wrong else "ok",
            note=(f"mlm_logits {', '.join(wrong)}, not {expected}: autocast does not reach the model inside "
                  "DeepSpeed's engine" if wrong else f"mlm_logits {expected} in all {len(logits_dtypes)} forwards"))
    finite = code == 0 and len(losses) == steps and all(loss == loss and abs(loss) != float("inf") for loss in losses)
    ctx.row(f"Trainer.fit, {steps} steps", shape=f"{micro_batch}x128", status="ok" if finite else "FAILED",
            note=f"exit {code}, losses {', '.join(f'{loss:.3f}' for loss in losses)}")
    if device.type != "cuda":
        ctx.row("host syncs per train_step", status="skipped", note="no CUDA (sync debug mode is CUDA's)")
        return
    planned_reads = [sum(planned(stack) for stack in step) for step in recorded]
    unplanned: dict[str, int] = {}
    for step in recorded:
        for stack in step:
            if not planned(stack):
                unplanned[where(stack)] = unplanned.get(where(stack), 0) + 1
    ctx.figures.update(planned_reads_per_step=planned_reads, unplanned_syncs=unplanned,
                       unplanned_stacks=[[f"{short_path(f.filename)}:{f.lineno} {f.name}" for f in stack[-9:-1]]
                                         for step in recorded for stack in step if not planned(stack)][:10])
    good = not unplanned and all(count == 1 for count in planned_reads)
    note = f"planned reads per step {planned_reads}"
    if unplanned:
        note += "; unplanned: " + "; ".join(f"{count}x {place}" for place, count in unplanned.items())
    ctx.row("host syncs per train_step", shape=f"{micro_batch}x128", status="ok" if good else "FAILED", note=note)


def trainer_steps(ctx, preset: str, batch: int, seq_len: int, warmup: int, steps: int) -> None:
    """The real Trainer's step (DeepSpeed engine, LAMB, the step's all-reduce and read), full micro-batches of the
    shards; the time of `train_step` alone (the loader excluded), between synchronisations."""
    from pretrain.model import step_flops

    if seq_len != 128:
        raise ValueError("trainer_steps: the check's shards are seq128 only")
    device = ctx.device
    release(device)
    trainer = build_trainer(ctx, preset, warmup + steps, batch, batch, "trainer_steps")
    timed: list[tuple[float, dict]] = []
    original = trainer.train_step

    def train_step(micro_batches, phase, accumulation):
        synchronize(device)
        start = time.perf_counter()
        metrics = original(micro_batches, phase, accumulation)
        synchronize(device)
        timed.append((time.perf_counter() - start, metrics))
        return metrics

    trainer.train_step = train_step
    trainer.fit()
    trainer.close()
    measured = timed[warmup:]
    seconds = statistics.median(t for t, _ in measured)
    flops = statistics.mean(step_flops(trainer.model.config, m.sums.tokens, m.sums.squared_lengths, batch,
                                       m.sums.masked) for _, m in measured)
    waits = [m.scalars.data_wait_s or 0.0 for _, m in measured]
    figures = {"median_s": seconds, "samples_per_s": batch / seconds, "flops_per_step": flops,
               "data_wait_s_median": statistics.median(waits), "precision": trainer.precision,
               "times_s": [t for t, _ in measured], "peak_gib": peak_gib(device)}
    ctx.figures.update(figures)
    ctx.row(f"Trainer.train_step ({trainer.precision}, engine)", shape=f"{batch}x{seq_len}",
            samples_per_s=batch / seconds, step_ms=seconds * 1e3, flops_per_s=flops / seconds,
            peak_gib=figures["peak_gib"], note=f"{preset}; loader wait {statistics.median(waits) * 1e3:.0f} ms/step "
                                               "outside the timing")


# ---- the model's step: the project's against transformers' ---------------------------------------------------

def compiled_config(config):
    """The config with `compile=True` when ModelConfig has that field, and how the model gets compiled."""
    from pretrain.model import ModelConfig

    if "compile" in {field.name for field in dataclasses.fields(ModelConfig)}:
        return ModelConfig.from_dict({**config.to_dict(), "compile": True}), "ModelConfig(compile=True)"
    return None, "gpu_check compiles each encoder layer (ModelConfig has no compile field)"


def build_variant(variant: str, config, device: torch.device):
    """(model, optimizer, step function of a batch dict, how) for 'ours', 'ours_compiled' or 'transformers'."""
    from bench_model_step import build_transformers

    from pretrain.config import OptimizerConfig
    from pretrain.optim import build_lamb
    from pretrain.precision import autocast
    from pretrain.pretraining_model import SqueezeBertForPretraining

    torch.manual_seed(0)
    how = "eager"
    determinism = "default"
    if variant == "ours_strict":  # process-wide switches: a part of its own
        from pretrain.precision import make_deterministic

        determinism = "strict"
        make_deterministic(determinism)
        how = "determinism strict"
    if variant == "ours_compiled":
        compiled, how = compiled_config(config)
        model = SqueezeBertForPretraining(compiled or config)
        if compiled is None:
            for layer in model.transformer.encoder.layers:
                layer.compile()
    else:
        model = SqueezeBertForPretraining(config)
    if variant == "transformers":
        reference, sop_head = build_transformers(config, model)  # ours' weights
        del model
        reference, sop_head = reference.to(device).train(), sop_head.to(device)
        parameters = list(reference.parameters()) + list(sop_head.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.01, fused=True)

        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                outputs = reference.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                                token_type_ids=batch["token_type_ids"])
                logits = reference.cls(outputs.last_hidden_state)  # every position
                loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), batch["mlm_labels"].view(-1))
                loss = loss + F.cross_entropy(sop_head(outputs.pooler_output).float(), batch["sop_labels"])
            loss.backward()
            optimizer.step()
        return step, "AdamW(fused=True), bf16 autocast"

    model = model.to(device).train()
    if hasattr(model, "run_in"):  # the model enters its own autocast (see pretrain.pretraining_model)
        model.run_in(device, "bf16", determinism)
    optimizer = build_lamb(model, OptimizerConfig(), lr=LEARNING_RATE)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, "bf16"):
            output = model(**batch)
        output.loss.backward()
        optimizer.step()
    step.model_parameters = model.parameters
    return step, f"LAMB (reference), bf16 autocast, {how}"


def make_batch(config, batch_size: int, seq_len: int, device: torch.device) -> tuple[dict, int]:
    """bench_model_step's batch (random ids, full length, the paper's masked count), with the masked positions
    the trainer's batches carry, on the device; and the masked tokens per sequence."""
    from bench_model_step import make_batch as random_batch

    input_ids, attention_mask, token_type_ids, mlm_labels, sop_labels, masked = random_batch(config, batch_size,
                                                                                            seq_len)
    positions = (mlm_labels.view(-1) != -100).nonzero().squeeze(1)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
             "mlm_labels": mlm_labels, "sop_labels": sop_labels, "mlm_positions": positions}
    return {key: value.to(device) for key, value in batch.items()}, masked


VARIANT_NAMES = {"ours": "ours", "ours_compiled": "ours, compiled", "ours_strict": "ours, strict",
                 "transformers": "transformers"}


def model_steps(ctx, preset: str, shapes: list, variants: list, warmup: int, steps: int) -> None:
    """Each variant's step at each (batch, length), back to back, the memory released between them."""
    from pretrain.model import ModelConfig, step_flops

    device = ctx.device
    config = ModelConfig.preset(preset)
    for batch_size, seq_len in shapes:
        shape = f"{batch_size}x{seq_len}"
        for variant in variants:
            label = f"step {VARIANT_NAMES[variant]}"
            release(device)
            try:
                batch, masked = make_batch(config, batch_size, seq_len, device)
                step, how = build_variant(variant, config, device)
                timing = time_steps(lambda: step(batch), device, warmup, steps)
            except Exception as error:  # one variant's failure (out of memory, a compile error) is its row alone
                ctx.row(label, shape=shape, status="FAILED", note=one_line(error))
                ctx.figures.setdefault(shape, {})[variant] = {"error": one_line(error)}
                step = batch = None
                continue
            flops = step_flops(config, batch_size * seq_len, batch_size * seq_len**2, batch_size, batch_size * masked)
            figures = {**timing, "samples_per_s": batch_size / timing["median_s"], "flops_per_step": flops,
                       "peak_gib": peak_gib(device), "how": how, "preset": preset, "masked_per_sequence": masked}
            ctx.figures.setdefault(shape, {})[variant] = figures
            note = how
            if variant == "ours_compiled":
                note += f"; first step {timing['first_step_s']:.1f} s (compiling)"
            reference = ctx.figures[shape].get("transformers", {}).get("samples_per_s")
            if variant == "transformers" and ctx.figures[shape].get("ours", {}).get("samples_per_s"):
                note += f"; ours {ctx.figures[shape]['ours']['samples_per_s'] / figures['samples_per_s']:.2f}x"
            elif reference and variant != "transformers":
                note += f"; {figures['samples_per_s'] / reference:.2f}x transformers"
            ctx.row(label, shape=shape, samples_per_s=figures["samples_per_s"], step_ms=timing["median_s"] * 1e3,
                    flops_per_s=flops / timing["median_s"], peak_gib=figures["peak_gib"], note=note)
            step = batch = None


# ---- finetuning and inference of an export --------------------------------------------------------------------

def finetune(ctx, preset: str, bench_args: list, tiny_bert: bool) -> None:
    """bench/bench_finetune.py on an export of the `preset` model (random weights: the speed depends on the shapes
    only) against BERT-base (or, in a dry run, a tiny BERT), bf16 autocast on the check's device."""
    from pretrain.model import ModelConfig
    from pretrain.model_files import export_headless
    from pretrain.pretraining_model import SqueezeBertForPretraining

    folder = tempfile.mkdtemp(prefix="finetune_", dir=ctx.work_dir)
    shard_root(ctx)  # makes the vocabulary too
    torch.manual_seed(0)
    export = os.path.join(folder, "export")
    export_headless(SqueezeBertForPretraining(ModelConfig.preset(preset)), export, os.path.join(ctx.work_dir, "vocab"))
    arguments = ["--model", export, "--device", ctx.device.type, "--bf16", "--json",
                 os.path.join(folder, "finetune.json"), *bench_args]
    if tiny_bert:
        from transformers import BertConfig, BertForSequenceClassification

        config = ModelConfig.preset(preset)
        BertForSequenceClassification(BertConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size, num_labels=3,
        )).save_pretrained(os.path.join(folder, "bert"))
        arguments += ["--bert", os.path.join(folder, "bert")]
    import bench_finetune  # in this process: its imports are this part's already

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            bench_finetune.main(arguments)
    except SystemExit as stop:  # its bad-input line, exit 2
        if stop.code:
            raise RuntimeError(f"{(errors.getvalue().strip().splitlines() or ['?'])[-1]}") from None
    finally:
        sys.stderr.write(errors.getvalue()[-4000:])
    with open(os.path.join(folder, "finetune.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    ctx.figures.update({key: value for key, value in results.items() if key != "models"})
    ctx.figures["models"] = {name: {key: value for key, value in model.items()
                                    if key not in ("train", "inference", "latency")}
                             | {measure: {k: v for k, v in model[measure].items() if not k.endswith("times_s")}
                                for measure in ("train", "inference", "latency") if measure in model}
                             for name, model in results["models"].items()}
    shape = f"{results['batch']}x{results['seq_len']}"
    bert = results["models"].get("BERT")
    for name, model in results["models"].items():
        train, inference = model["train"], model["inference"]
        note = (f"inference {inference['samples_per_s']:,.0f}/s (batch {results['infer_batch']})"
                + (f", batch-1 latency {model['latency']['median_s'] * 1e3:.2f} ms" if "latency" in model else ""))
        if bert and name != "BERT":
            note += (f"; {train['samples_per_s'] / bert['train']['samples_per_s']:.2f}x BERT finetuning, "
                     f"{inference['samples_per_s'] / bert['inference']['samples_per_s']:.2f}x inference")
        # FLOPs as bench_finetune counts them: the forward's at the padded length, training 3x forward
        ctx.row(f"finetune {name}", shape=shape, samples_per_s=train["samples_per_s"],
                step_ms=train["median_s"] * 1e3, flops_per_s=3 * model["forward_flops_per_sample"]
                * train["samples_per_s"], note=note)


def reruns(ctx, preset: str, batch: int, seq_len: int, steps: int) -> None:
    """Are two runs from the same seed bit-identical? `steps` steps of the project's step (bf16, dropout on,
    reseeded per step as the trainer does), twice, with `determinism` default and then strict (strict's switches
    are process-wide, so it comes second); the rows say yes or no and how far apart the parameters ended."""
    import hashlib

    from pretrain.model import ModelConfig

    config = ModelConfig.preset(preset)
    batch_dict, _ = make_batch(config, batch, seq_len, ctx.device)
    for mode in ("default", "strict"):
        finals = []
        for _ in range(2):
            step, how = build_variant("ours" if mode == "default" else "ours_strict", config, ctx.device)
            for index in range(steps):
                torch.manual_seed(index)
                step(batch_dict)
            parameters = step.model_parameters()
            finals.append(torch.cat([p.detach().float().reshape(-1).cpu() for p in parameters]))
            step = None
        digests = [hashlib.sha256(final.numpy().tobytes()).hexdigest()[:12] for final in finals]
        largest = float((finals[0] - finals[1]).abs().max())
        ctx.figures[mode] = {"identical": digests[0] == digests[1], "max_abs_difference": largest, "sha256": digests}
        ctx.row(f"reruns bit-identical, determinism {mode}", shape=f"{batch}x{seq_len}, {steps} steps",
                note=f"{'yes' if digests[0] == digests[1] else 'no'}: max |difference| {largest:.3g}")


TASKS = {"environment": environment, "trainer_check": trainer_check, "trainer_steps": trainer_steps,
         "model_steps": model_steps, "finetune": finetune, "reruns": reruns}
