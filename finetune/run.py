"""One GLUE run: check everything → tokenize → teacher outputs (cached) → transformers' Trainer (resuming
from its last complete checkpoint) → the best model, the test-server files and results.json.

Output folder (`--out`):
- `checkpoints/checkpoint-N/`: the Trainer's, while training (the best and the last `keep_checkpoints`; removed once
  the run is complete);
- `tensorboard/`; `teacher_cache/` (distillation);
- `model/`: the best checkpoint's model and tokenizer; `headless/` (with `--headless`): the same without its
  classifier; `predictions/`: the GLUE server's files;
- `results.json`: dev metrics and the resolved config, written last: its presence means the run is complete.

Every final file or folder is written atomically (`formats.files`), so a killed run never leaves one that
looks complete. Rerunning the same command resumes from the newest complete Trainer checkpoint (one with
its `trainer_state.json`, which the Trainer writes last); a finished run is not redone.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys

import numpy as np

from formats.files import atomic_folder, atomic_write_bytes

from .config import FinetuneConfig, FinetuneConfigError, describe
from .data import fingerprint, load_task
from .metrics import main_metric, split_metrics
from .model_folder import check_weights, is_refused_pickle, load_classifier, load_tokenizer, refused_checkpoint
from .tasks import DEV_SUFFIX, Task, get_task

RESULTS_FILE = "results.json"
RUN_CONFIG_FILE = "run_config.json"
TRAINER_STATE = "trainer_state.json"
EVAL_BATCH = 64


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def log(text: str) -> None:
    if is_main_process():
        print(f"finetune: {text}", file=sys.stderr, flush=True)


def micro_batch_and_accumulation(config: FinetuneConfig, ranks: int) -> tuple[int, int]:
    """The global batch is stated once; accumulation = batch / (micro-batch x ranks), an error if not whole."""
    micro = config.micro_batch or config.batch_size // ranks
    if micro == 0 or config.batch_size % (micro * ranks):
        raise FinetuneConfigError(f"--batch-size {config.batch_size} does not divide into --micro-batch {micro} x "
                                  f"{ranks} ranks; choose a batch size that is a multiple of their product")
    return micro, config.batch_size // (micro * ranks)


def precision_flags(precision: str) -> dict:
    """`auto`: bf16 where the GPU has it in hardware (Ampere and later), fp16 on older GPUs (V100, T4: they only
    emulate bf16, far slower than fp16), fp32 on CPUs. The Trainer keeps fp32 master weights. (The same rule
    as pretraining's `pretrain.precision`, restated: finetune imports only the model of pretrain.)"""
    import torch

    gpu = torch.cuda.is_available()
    native_bf16 = gpu and torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "auto":
        precision = "bf16" if native_bf16 else "fp16" if gpu else "fp32"
    elif precision == "bf16" and gpu and not native_bf16:
        raise FinetuneConfigError(f"--precision bf16: {torch.cuda.get_device_name()} has no native bf16; use "
                                  "--precision fp16 (or auto, which picks it)")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def load_student(folder: str, task: Task, seed: int, implementation: str = "auto"):
    """The model with a fresh classifier head of the task's size (a head of another size is replaced), of the
    class `implementation` picks (`model_folder.classifier_class`)."""
    from transformers import set_seed

    set_seed(seed)  # the new classifier's initialization
    labels = dict(enumerate(task.label_names)) if not task.is_regression else {0: "score"}
    model, info = load_classifier(
        folder, "--model", implementation, num_labels=task.num_labels, id2label=labels,
        label2id={v: k for k, v in labels.items()},
        problem_type="regression" if task.is_regression else "single_label_classification",
        ignore_mismatched_sizes=True, output_loading_info=True)
    new = sorted(set(info["missing_keys"]) | {key for key, *_ in info.get("mismatched_keys", [])})
    log(f"{folder}: {type(model).__name__}, {len(new)} new weights "
        f"({', '.join(new[:6])}{'...' if len(new) > 6 else ''})")
    return model


def tokenized(dataset, tokenizer, task: Task, split: str, max_length: int):
    text_columns = ("premise", "hypothesis") if split == "ax" else task.text_columns
    return dataset.map(lambda batch: tokenizer(*(batch[column] for column in text_columns), truncation=True,
                                               max_length=max_length),
                       batched=True, remove_columns=[*text_columns, "idx"])


def complete_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest checkpoint the Trainer finished writing; incomplete ones (a kill during a save) removed."""
    if not os.path.isdir(checkpoint_dir):
        return None
    found = sorted((int(name.split("-")[1]), name) for name in os.listdir(checkpoint_dir)
                   if name.startswith("checkpoint-") and name.split("-")[1].isdigit())
    newest = None
    for _, name in found:
        path = os.path.join(checkpoint_dir, name)
        if os.path.isfile(os.path.join(path, TRAINER_STATE)):
            newest = path
        elif is_main_process():
            log(f"removing the incomplete checkpoint {path}")
            shutil.rmtree(path, ignore_errors=True)
    return newest


def check_run_folder(config: FinetuneConfig) -> dict | None:
    """The finished results when this exact run is complete; an error when the folder holds another run."""
    saved_config = os.path.join(config.out, RUN_CONFIG_FILE)
    if os.path.isfile(saved_config):
        with open(saved_config, encoding="utf-8") as handle:
            previous = json.load(handle)
        if previous != config.to_dict():
            changed = sorted(key for key in config.to_dict() if previous.get(key) != config.to_dict()[key])
            raise FinetuneConfigError(f"--out {config.out}: holds a run with other settings ({', '.join(changed)}); "
                                      "use another --out, or remove it to start over")
        results = os.path.join(config.out, RESULTS_FILE)
        if os.path.isfile(results):
            with open(results, encoding="utf-8") as handle:
                return json.load(handle)
    return None


def dev_results(task: Task, metrics: dict[str, float]) -> dict[str, float]:
    """The Trainer's `eval_<set>_<metric>` figures renamed as GLUE reports them (accuracy_matched, f1, ...)."""
    results = {}
    for split in task.dev_splits:
        prefix = "eval_" + (split.split("_")[1] + "_" if len(task.dev_splits) > 1 else "")
        for name in (*task.metric_names, "main"):
            if f"{prefix}{name}" in metrics:
                results[f"{name}{DEV_SUFFIX[split]}"] = metrics[f"{prefix}{name}"]
    results["score"] = results.pop("main" if len(task.dev_splits) == 1 else "main_matched")
    results.pop("main_mismatched", None)
    return results


def quiet_libraries() -> None:
    """The console shows finetune's own lines: no per-call progress bars of datasets' maps and saves."""
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()  # save_pretrained's "Writing model shards"
    transformers.utils.logging.disable_progress_bar()


def run_glue(config: FinetuneConfig, callbacks: tuple = ()) -> dict:
    """Finetunes (or finds finished) one task; returns results.json's content. `callbacks`: more
    `TrainerCallback`s (a caller's own hooks)."""
    import torch
    from transformers import PrinterCallback, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    from .distill import DistillationTrainer, TeacherCollator, check_teacher, teacher_outputs
    from .predictions import write_predictions
    from .progress import ConsoleProgress, SavedOnEveryRank

    quiet_libraries()
    task = get_task(config.task)
    finished = check_run_folder(config)
    if finished:
        log(f"{config.out}: this run is complete ({RESULTS_FILE}); nothing to do")
        return finished
    # Everything that can be wrong with the input is found here, before any compute.
    splits = load_task(task, config.data, with_test=config.predict)
    tokenizer = load_tokenizer(config.model)
    check_weights(config.model, "--model")
    if config.teacher:
        check_teacher(config.teacher, task)
    micro, accumulation = micro_batch_and_accumulation(config, world_size())
    log(f"{task.name}: resolved config\n{describe(config)}")
    if is_main_process():
        os.makedirs(config.out, exist_ok=True)
        atomic_write_bytes(os.path.join(config.out, RUN_CONFIG_FILE), (describe(config) + "\n").encode())

    checkpoint_dir = os.path.join(config.out, "checkpoints")
    by_steps = config.eval_every_steps > 0
    metric_for_best = ("matched_" if len(task.dev_splits) > 1 else "") + "main"
    args = TrainingArguments(
        output_dir=checkpoint_dir, learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        per_device_train_batch_size=micro, per_device_eval_batch_size=EVAL_BATCH,
        gradient_accumulation_steps=accumulation, num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        lr_scheduler_type="linear", warmup_steps=config.warmup_fraction,
        eval_strategy="steps" if by_steps else "epoch", save_strategy="steps" if by_steps else "epoch",
        eval_steps=config.eval_every_steps or None, save_steps=config.eval_every_steps or 500,
        save_total_limit=config.keep_checkpoints, load_best_model_at_end=True,
        metric_for_best_model=metric_for_best, greater_is_better=True,
        logging_strategy="steps", logging_steps=config.log_every_steps, logging_first_step=True,
        report_to="none", disable_tqdm=True, seed=config.seed, remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        # without it, on a machine with no GPU, ranks started by torchrun each train alone on the whole data
        # (accelerate starts the process group but the Trainer runs NOT_PARALLEL)
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every parameter is used: no extra pass over the graph per step
        **precision_flags(config.precision),
    )

    train = tokenized(splits["train"], tokenizer, task, "train", config.max_length)
    if config.teacher:
        with args.main_process_first(local=False, desc="teacher outputs"):  # rank 0 computes, the others read
            logits = teacher_outputs(config.teacher, task, splits["train"], fingerprint(splits["train"]),
                                     config.max_length, config.teacher_cache or os.path.join(config.out,
                                                                                             "teacher_cache"),
                                     args.device)
        train = train.add_column("teacher_logits", logits.tolist())
    dev = {split: tokenized(splits[split], tokenizer, task, split, config.max_length) for split in task.dev_splits}
    dev_sets = dev[task.dev_splits[0]] if len(dev) == 1 else {split.split("_")[1]: data for split, data in dev.items()}

    def compute_metrics(prediction) -> dict[str, float]:
        outputs = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        values = split_metrics(task, np.asarray(outputs), np.asarray(prediction.label_ids))
        return {**values, "main": main_metric(task, values)}

    callbacks = [ConsoleProgress(f"{task.name}{' (distilled)' if config.teacher else ''}"), SavedOnEveryRank(),
                 *callbacks]
    if is_main_process():
        from torch.utils.tensorboard import SummaryWriter

        callbacks.append(TensorBoardCallback(SummaryWriter(os.path.join(config.out, "tensorboard"))))
    trainer = DistillationTrainer(
        model=load_student(config.model, task, config.seed, config.implementation), args=args, train_dataset=train,
        eval_dataset=dev_sets,
        processing_class=tokenizer, data_collator=TeacherCollator(tokenizer), compute_metrics=compute_metrics,
        callbacks=callbacks, alpha=config.alpha, temperature=config.temperature, regression=task.is_regression)
    trainer.remove_callback(PrinterCallback)  # ConsoleProgress prints the same figures on one line, with an ETA
    resume = complete_checkpoint(checkpoint_dir)
    if resume:
        log(f"resuming from {resume}")
    try:
        train_output = trainer.train(resume_from_checkpoint=resume)
    except pickle.UnpicklingError as error:  # the Trainer reads its checkpoint's states with weights_only=True
        if resume and is_refused_pickle(error):
            raise refused_checkpoint(resume, error) from None
        raise

    metrics = {}  # the best model (load_best_model_at_end) on every dev set
    for name, data in (dev_sets.items() if isinstance(dev_sets, dict) else [(None, dev_sets)]):
        metrics.update(trainer.evaluate(data, metric_key_prefix=f"eval_{name}" if name else "eval"))
    test_outputs = {}
    for split in task.test_splits:
        if split in splits:
            data = tokenized(splits[split].remove_columns("label"), tokenizer, task, split, config.max_length)
            test_outputs[split] = (splits[split]["idx"], trainer.predict(data).predictions)
    results = {
        "task": task.name, "distilled": bool(config.teacher), "dev": dev_results(task, metrics),
        "best_checkpoint_step": int(trainer.state.best_global_step or trainer.state.global_step),
        "steps": int(trainer.state.global_step), "train_seconds": round(train_output.metrics["train_runtime"], 1),
        "dev_sizes": {split: len(splits[split]) for split in task.dev_splits}, "config": config.to_dict(),
    }
    if is_main_process():
        model = trainer.model
        with atomic_folder(os.path.join(config.out, "model")) as tmp_dir:
            model.save_pretrained(tmp_dir)
            tokenizer.save_pretrained(tmp_dir)
        if config.headless:
            with atomic_folder(os.path.join(config.out, "headless")) as tmp_dir:
                model.base_model.save_pretrained(tmp_dir)  # encoder + pooler, no classifier
                tokenizer.save_pretrained(tmp_dir)
        if test_outputs:
            results["predictions"] = write_predictions(task, test_outputs, os.path.join(config.out, "predictions"))
        atomic_write_bytes(os.path.join(config.out, RESULTS_FILE), (json.dumps(results, indent=1) + "\n").encode())
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # complete: model/ holds the best; optimizer states go
        shown = " ".join(f"{key} {value:.4f}" for key, value in results["dev"].items())
        log(f"{task.name}: dev {shown}; best model in {os.path.join(config.out, 'model')}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return results
