"""One GLUE run: check everything → tokenize → teacher outputs (cached) → transformers' Trainer (resuming
from its last complete checkpoint) → the best model, the test-server files and results.json.

What `--out` holds and how a rerun treats it: README, "Outputs" and "Resume and atomic outputs". The
contract kept here: every final file or folder is written atomically (`formats.files`) and `results.json`
last, so its presence means the run is complete; `run_config.json` (the settings and the inputs'
fingerprints) is written once every input is checked and removed by a start that fails before its first
checkpoint, so it binds `--out` to nothing; the same `--out` with other settings or inputs is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys

import numpy as np

from formats.errors import one_line, refused_pickle
from formats.files import atomic_folder, atomic_write_bytes

from .config import FinetuneConfig, FinetuneConfigError, describe
from .data import fingerprint, load_task
from .labels import contradiction, id2label_names, output_order
from .metrics import main_metric, split_metrics
from .model_folder import (
    ModelFolderError,
    check_weights,
    load_classifier,
    load_tokenizer,
    refused_checkpoint,
    resolve_model_folder,
)
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


def student_label_order(folder: str, task: Task) -> list[int] | None:
    """Where each of the task's labels sits among the outputs of the student's own classifier, when it has one
    of the task's size that names its labels; names that are not the task's are refused (`finetune.labels`)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as error:
        raise ModelFolderError(f"--model {folder}: unreadable config ({one_line(error, 160)})") from None
    if config.num_labels != task.num_labels:
        return None  # its classifier, if any, is replaced by one of the task's size
    names = id2label_names(config.id2label, config.num_labels)
    problem = contradiction(task, names)
    if problem:
        raise ModelFolderError(f"--model {folder}: a classifier for another task ({problem}); give a model "
                               f"finetuned on {task.name}, or its headless form to start a new classifier")
    return output_order(task, names)


def classifier_rows(model, num_labels: int):
    """The last linear layer with one output per label: the classifier (`classifier`, RoBERTa's
    `classifier.out_proj`)."""
    import torch

    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module.out_features == num_labels]
    return found[-1] if found else (None, None)


def load_student(folder: str, task: Task, seed: int, finetuned: bool = False, implementation: str = "auto"):
    """The model with the task's classifier, of the class `implementation` picks (`model_folder.classifier_class`):
    its own classifier when it has one of the task's size (rows reordered to the task's label order by name, as
    run_glue's `label_to_id`), else a fresh one (a head of another size is replaced; with `finetuned`, an
    error). Either way its config carries the task's `id2label`."""
    import torch
    from transformers import set_seed

    order = student_label_order(folder, task)
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
    name, classifier = classifier_rows(model, task.num_labels)
    if finetuned and (classifier is None or any(key.startswith(f"{name}.") for key in new)):
        raise ModelFolderError(f"--model {folder}: no classifier for {task.name} to evaluate (its classifier weights "
                               f"would be new: {', '.join(new[:4])}); --no-train needs a model finetuned on the task")
    if order and classifier is not None and not any(key.startswith(f"{name}.") for key in new):
        with torch.no_grad():  # output i becomes the task's label i
            classifier.weight.copy_(classifier.weight[order])
            if classifier.bias is not None:
                classifier.bias.copy_(classifier.bias[order])
        log(f"{folder}: its classifier's outputs reordered by label name to {task.name}'s {list(task.label_names)}")
    return model


def samples(config: FinetuneConfig, task: Task, splits: dict) -> dict:
    """The first `--max-{train,eval,predict}-samples` rows of each split (run_glue's trial runs)."""
    limits = {"train": config.max_train_samples, **{split: config.max_eval_samples for split in task.dev_splits},
              **{split: config.max_predict_samples for split in task.test_splits}}
    return {split: rows.select(range(min(limits[split], len(rows)))) if limits[split] else rows
            for split, rows in splits.items()}


def save_headless(model, folder: str) -> None:
    """The classifier's encoder and pooler, without the classifier and without its task's metadata: the
    config keeps transformers' defaults for `id2label`, `label2id` and `problem_type`, so run_glue's
    `from_pretrained(folder, num_labels=N)` makes a head of any task from it (STS-B's regression included)."""
    import copy

    base = model.base_model
    head_free = copy.deepcopy(base.config)
    defaults = type(head_free)()
    head_free.id2label, head_free.label2id, head_free.problem_type = defaults.id2label, defaults.label2id, None
    trained_config, base.config = base.config, head_free
    try:
        base.save_pretrained(folder)
    finally:
        base.config = trained_config


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


def has_saved_work(out: str) -> bool:
    """The folder holds something of a run to keep: its results, or a complete Trainer checkpoint."""
    checkpoints = os.path.join(out, "checkpoints")
    return os.path.isfile(os.path.join(out, RESULTS_FILE)) or (os.path.isdir(checkpoints) and any(
        os.path.isfile(os.path.join(checkpoints, name, TRAINER_STATE)) for name in os.listdir(checkpoints)))


def check_run_folder(config: FinetuneConfig, inputs: dict[str, str]) -> dict | None:
    """The finished results when this exact run (settings and inputs' fingerprints) is complete; an error when
    the folder holds another run with work saved. A start that saved nothing binds nothing: it is started over."""
    saved_config = os.path.join(config.out, RUN_CONFIG_FILE)
    if not os.path.isfile(saved_config):
        return None
    if not has_saved_work(config.out):
        log(f"{config.out}: a start that saved no checkpoint; starting over")
        return None
    with open(saved_config, encoding="utf-8") as handle:
        previous = json.load(handle)
    settings = config.run_settings()
    changed = sorted(key for key in settings if previous.get(key) != settings[key])
    if changed:
        raise FinetuneConfigError(f"--out {config.out}: holds a run with other settings ({', '.join(changed)}); "
                                  "use another --out, or --overwrite-output to start over")
    changed = sorted(key for key, value in inputs.items() if previous.get("inputs", inputs).get(key) != value)
    if changed:
        raise FinetuneConfigError(f"--out {config.out}: holds a run on other inputs ({', '.join(changed)} changed at "
                                  "the same paths); use another --out, or --overwrite-output to start over")
    results = os.path.join(config.out, RESULTS_FILE)
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as handle:
            return json.load(handle)
    return None


TEST_SPLITS = ("test", "test_matched", "test_mismatched", "ax")
RUN_FILES = ("checkpoints", "model", "headless", "predictions", "tensorboard", RESULTS_FILE, RUN_CONFIG_FILE)


def remove_run_files(out: str) -> None:
    """This project's run files in `out` (nothing else a user keeps there; the teacher cache stays)."""
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def input_fingerprints(splits: dict, model_dir: str, teacher_dir: str) -> dict[str, str]:
    """sha256s of what the run reads besides its settings: every split's content, the model's and the
    teacher's files. A finished run with other inputs at the same paths is not "nothing to do"."""
    from .distill import folder_fingerprint

    content = {split: fingerprint(rows) for split, rows in splits.items()}
    content.update({f"{split} ids": hashlib.sha256(repr(list(rows["idx"])).encode()).hexdigest()
                    for split, rows in splits.items() if split in TEST_SPLITS})  # the server files' row ids
    data = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    inputs = {"data": data, "model": folder_fingerprint(model_dir)}
    if teacher_dir:
        inputs["teacher"] = folder_fingerprint(teacher_dir)
    return inputs


POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "longformer")  # positions start at pad_token_id + 1


def check_max_length(max_length: int, folder: str, flag: str) -> None:
    """`--max-length` within the model's position embeddings (a longer batch would fail mid-run)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return
    if config.model_type in POSITION_OFFSET_MODELS:
        positions -= (config.pad_token_id or 0) + 1
    if max_length > positions:
        raise FinetuneConfigError(f"--max-length {max_length}: {flag} {folder} has {positions} positions; use "
                                  f"--max-length {positions} or less")


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
    from .distill import check_teacher

    quiet_libraries()
    task = get_task(config.task)
    # Everything that can be wrong with the input is found here, before anything is written.
    model_dir = resolve_model_folder(config.model, "--model")
    teacher_dir = resolve_model_folder(config.teacher, "--teacher") if config.teacher else ""
    splits = samples(config, task, load_task(task, config.data, with_test=config.predict, with_train=config.train))
    tokenizer = load_tokenizer(resolve_model_folder(config.tokenizer, "--tokenizer") if config.tokenizer
                               else model_dir, "--tokenizer" if config.tokenizer else "--model")
    check_weights(model_dir, "--model")
    student_label_order(model_dir, task)
    check_max_length(config.max_length, model_dir, "--model")
    if teacher_dir:
        check_teacher(teacher_dir, task)
        check_max_length(config.max_length, teacher_dir, "--teacher")
    micro, accumulation = micro_batch_and_accumulation(config, world_size())
    inputs = input_fingerprints(splits, model_dir, teacher_dir)
    if config.overwrite_output:
        if is_main_process():
            remove_run_files(config.out)
    else:
        finished = check_run_folder(config, inputs)
        if finished:
            log(f"{config.out}: this run is complete ({RESULTS_FILE}); nothing to do")
            return finished
    log(f"{task.name}: resolved config\n{describe(config)}")
    found_out = os.path.isdir(config.out)
    if is_main_process():
        os.makedirs(config.out, exist_ok=True)
        record = {**config.run_settings(), "inputs": inputs}
        atomic_write_bytes(os.path.join(config.out, RUN_CONFIG_FILE), (json.dumps(record, indent=1) + "\n").encode())
    try:
        return _train_and_write(config, task, splits, tokenizer, model_dir, teacher_dir, inputs, micro, accumulation,
                                callbacks)
    except BaseException:
        if is_main_process() and not has_saved_work(config.out):  # a failed start binds --out to nothing
            for name in (RUN_CONFIG_FILE, "tensorboard", "checkpoints"):
                path = os.path.join(config.out, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.exists(path):
                    os.remove(path)
            if not found_out and not os.listdir(config.out):
                os.rmdir(config.out)
        raise


def _train_and_write(config: FinetuneConfig, task: Task, splits: dict, tokenizer, model_dir: str, teacher_dir: str,
                     inputs: dict, micro: int, accumulation: int, callbacks: tuple) -> dict:
    """The run proper, once every input is checked and the run's record is written."""
    import torch
    from transformers import PrinterCallback, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    from .distill import DistillationTrainer, TeacherCollator, teacher_outputs
    from .predictions import write_predictions
    from .progress import ConsoleProgress, SavedOnEveryRank

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

    train = tokenized(splits["train"], tokenizer, task, "train", config.max_length) if config.train else None
    if config.teacher:
        with args.main_process_first(local=False, desc="teacher outputs"):  # rank 0 computes, the others read
            logits = teacher_outputs(teacher_dir, task, splits["train"], fingerprint(splits["train"]),
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
    student = load_student(model_dir, task, config.seed, finetuned=not config.train,
                           implementation=config.implementation)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=train, eval_dataset=dev_sets,
        processing_class=tokenizer, data_collator=TeacherCollator(tokenizer), compute_metrics=compute_metrics,
        callbacks=callbacks, alpha=config.alpha, temperature=config.temperature, regression=task.is_regression)
    trainer.remove_callback(PrinterCallback)  # ConsoleProgress prints the same figures on one line, with an ETA
    train_seconds = 0.0
    if config.train:
        resume = complete_checkpoint(checkpoint_dir)
        if resume:
            log(f"resuming from {resume}")
        try:
            train_seconds = trainer.train(resume_from_checkpoint=resume).metrics["train_runtime"]
        except pickle.UnpicklingError as error:  # the Trainer reads its checkpoint's states with weights_only=True
            if resume and refused_pickle(error):
                raise refused_checkpoint(resume, error) from None
            raise

    metrics = {}  # the best model (load_best_model_at_end), or --model as given, on every dev set
    for name, data in (dev_sets.items() if isinstance(dev_sets, dict) else [(None, dev_sets)]) if config.evaluate \
            else ():
        metrics.update(trainer.evaluate(data, metric_key_prefix=f"eval_{name}" if name else "eval"))
    test_outputs = {}
    for split in task.test_splits:
        if split in splits:
            data = tokenized(splits[split].remove_columns("label"), tokenizer, task, split, config.max_length)
            test_outputs[split] = (splits[split]["idx"], trainer.predict(data).predictions)
    results = {
        "task": task.name, "distilled": bool(config.teacher), "dev": dev_results(task, metrics) if metrics else {},
        "best_checkpoint_step": int(trainer.state.best_global_step or trainer.state.global_step),
        "steps": int(trainer.state.global_step), "train_seconds": round(train_seconds, 1),
        "dev_sizes": {split: len(splits[split]) for split in task.dev_splits}, "config": config.to_dict(),
        "inputs": inputs,
    }
    if is_main_process():
        model = trainer.model
        if config.train:  # --no-train: the model is --model, unchanged
            with atomic_folder(os.path.join(config.out, "model")) as tmp_dir:
                model.save_pretrained(tmp_dir)
                tokenizer.save_pretrained(tmp_dir)
        if config.headless:
            with atomic_folder(os.path.join(config.out, "headless")) as tmp_dir:
                save_headless(model, tmp_dir)
                tokenizer.save_pretrained(tmp_dir)
        if test_outputs:
            results["predictions"] = write_predictions(task, test_outputs, os.path.join(config.out, "predictions"))
        atomic_write_bytes(os.path.join(config.out, RESULTS_FILE), (json.dumps(results, indent=1) + "\n").encode())
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # complete: model/ holds the best; optimizer states go
        shown = " ".join(f"{key} {value:.4f}" for key, value in results["dev"].items())
        log(f"{task.name}: dev {shown or '(not evaluated)'}; " + (f"best model in {os.path.join(config.out, 'model')}"
                                                                   if config.train else f"model {model_dir}"))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return results
