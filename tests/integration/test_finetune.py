"""`finetune` end to end on tiny models: it learns a task made from the shipped Wikipedia text, a distilled
student follows its teacher, a killed run resumes, the chain runs in a real process, and bad input is one line
before any compute."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from finetune.config import build_config
from finetune.demo import make_document_task
from finetune.run import run_glue
from tests.conftest import ASSETS, ROOT, SAMPLE
from tests.integration.test_trainer import wait_for

GLUE = os.path.join(ASSETS, "glue")
FAST = {"log_every_steps": 1000, "max_length": 48, "batch_size": 16, "warmup_fraction": 0.0}


@pytest.fixture(scope="session")
def student(vocab_dir, tmp_path_factory):
    """A tiny SqueezeBERT written by the project's own export (random weights, the fixture vocabulary)."""
    from pretrain.model import ModelConfig
    from pretrain.model_files import export_headless
    from pretrain.pretraining_model import SqueezeBertForPretraining

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=6000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=128)
    folder = str(tmp_path_factory.mktemp("student") / "export")
    export_headless(SqueezeBertForPretraining(config), folder, vocab_dir)
    return folder


def bert_classifier(folder, vocab_dir, num_labels, seed=1):
    """A tiny BERT classifier whose tokenizer differs from the student's (the first 3000 pieces of its vocabulary)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    os.makedirs(folder, exist_ok=True)
    pieces = open(os.path.join(vocab_dir, "vocab.txt"), encoding="utf-8").read().split("\n")[:3000]
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(pieces) + "\n")
    tokenizer = BertTokenizerFast(os.path.join(folder, "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(vocab_size=3000, hidden_size=48, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=96,
                                                     num_labels=num_labels, max_position_embeddings=128))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def wiki_task(tmp_path_factory):
    """Which of two Wikipedia articles a sentence is from (finetune.demo's task), in SST-2's columns."""
    documents = []
    for name in sorted(os.listdir(SAMPLE)):
        text = open(os.path.join(SAMPLE, name), encoding="utf-8").read()
        documents += [doc for doc in re.split(r"<doc[^>]*>|</doc>", text) if doc.strip()]
    folder = str(tmp_path_factory.mktemp("wiki_task"))
    counts = make_document_task(documents, folder, max_per_class=300)
    assert counts == {"train": 480, "validation": 60, "test": 60}
    return folder


def probabilities(folder, texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
        return model(**batch).logits.softmax(-1).numpy()


@pytest.fixture(scope="module")
def trained_on_wiki(student, wiki_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("wiki_run") / "run"
    results = run_glue(build_config(("", {**FAST, "task": "sst2", "model": student, "data": wiki_task,
                                          "out": str(out), "epochs": 2.0, "learning_rate": 4e-3})))
    return out, results


def test_a_tiny_model_learns_a_task_from_the_wikipedia_text(trained_on_wiki):
    out, results = trained_on_wiki
    assert results["dev"]["accuracy"] >= 0.75, results["dev"]  # chance: 0.5; 0.85 here
    assert (out / "predictions" / "SST-2.tsv").read_text().count("\n") == 61
    assert not (out / "checkpoints").exists() and (out / "tensorboard").is_dir()


def test_a_distilled_student_agrees_with_its_teacher_more(trained_on_wiki, student, wiki_task, tmp_path):
    """The teacher is the model the test above trained (right often, not always). Two students start from
    the same weights with another seed (classifier, data order): one distilled from the teacher (alpha 0:
    the teacher's soft targets only), one trained on the labels. The distilled one follows the teacher: its
    output distributions are much closer to the teacher's (KL 0.2-0.4 of the other's over the task's 600
    texts in three sessions, whose vocabularies differ), and it picks the teacher's class more often."""
    teacher = str(trained_on_wiki[0] / "model")
    for name, extra in (("distilled", {"teacher": teacher, "alpha": 0.0, "temperature": 1.0}), ("labels", {})):
        run_glue(build_config(("", {**FAST, "task": "sst2", "model": student, "data": wiki_task, "seed": 7,
                                    "out": str(tmp_path / name), "epochs": 2.0, "learning_rate": 4e-3,
                                    "predict": False, **extra})))
    rows = [json.loads(line) for name in ("train", "validation", "test")
            for line in open(os.path.join(wiki_task, f"{name}.jsonl"))]
    texts = [row["sentence"] for row in rows]
    of_teacher = probabilities(teacher, texts)
    of_students = {name: probabilities(str(tmp_path / name / "model"), texts) for name in ("distilled", "labels")}
    # how far each student's output distribution is from the teacher's, KL(teacher || student), and how often
    # it picks the teacher's class
    divergence = {name: float(np.mean(np.sum(of_teacher * (np.log(of_teacher) - np.log(p)), axis=-1)))
                  for name, p in of_students.items()}
    agreement = {name: float(np.mean(p.argmax(-1) == of_teacher.argmax(-1))) for name, p in of_students.items()}
    print(f"KL(teacher || student): {divergence}; agreement with the teacher's class: {agreement}")
    assert 0.2 < of_teacher.argmax(-1).mean() < 0.8  # the teacher is not a constant
    assert divergence["distilled"] < 0.75 * divergence["labels"], divergence
    assert agreement["distilled"] > agreement["labels"], agreement  # 0.973-0.987 against 0.958-0.963 here


class StopAt:
    """A TrainerCallback that ends the process's training abruptly at a step, as a kill would."""

    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(student, tmp_path, capsys):
    settings = {**FAST, "task": "rte", "model": student, "data": GLUE, "out": str(tmp_path / "run"), "batch_size": 8,
                "max_steps": 6, "eval_every_steps": 2, "learning_rate": 1e-3}
    with pytest.raises(KeyboardInterrupt):
        run_glue(build_config(("", settings)), callbacks=(StopAt(5),))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "model").exists()
    (checkpoints / "checkpoint-6").mkdir()  # a save cut short: no trainer_state.json
    (checkpoints / "checkpoint-6" / "model.safetensors").write_bytes(b"partial")
    capsys.readouterr()
    results = run_glue(build_config(("", settings)))
    err = capsys.readouterr().err
    assert "removing the incomplete checkpoint" in err and "resuming from" in err and "checkpoint-4" in err
    assert results["steps"] == 6 and (tmp_path / "run" / "model" / "config.json").is_file()
    again = run_glue(build_config(("", settings)))  # complete: nothing is redone
    assert again == results and "nothing to do" in capsys.readouterr().err


def test_a_sigkilled_process_resumes_when_rerun(student, tmp_path):
    """The real thing: `python -m finetune glue` killed with SIGKILL once its first checkpoint is written, then
    the same command: it resumes from that checkpoint and completes; nothing final was there before."""
    import signal

    command = [sys.executable, "-m", "finetune", "glue", "--task", "rte", "--model", student, "--data", GLUE,
               "--out", str(tmp_path / "run"), "--batch-size", "8", "--max-steps", "40", "--eval-every-steps", "2",
               "--max-length", "48", "--learning-rate", "1e-3"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(tmp_path / "run" / "checkpoints" / "checkpoint-2" / "trainer_state.json", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "model").exists()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 40


def run_finetune(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "finetune", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, **kwargs)


def test_the_chain_end_to_end(student, vocab_dir, tmp_path):
    """MNLI distilled -> headless -> RTE distilled, beside both without distillation, in one real process."""
    mnli_teacher = bert_classifier(str(tmp_path / "mnli_teacher"), vocab_dir, 3)
    rte_teacher = bert_classifier(str(tmp_path / "rte_teacher"), vocab_dir, 2)
    out = tmp_path / "chain"
    result = run_finetune("chain", "--model", student, "--data", GLUE, "--out", out, "--mnli-teacher", mnli_teacher,
                          "--task", f"rte={rte_teacher}", "--set", "epochs=1", "--set", "max_length=64",
                          "--set", "learning_rate=1e-3", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loads with only classifier.bias, classifier.weight new" in result.stderr
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["tasks"]) == {"mnli", "rte"}
    assert set(summary["tasks"]["mnli"]) == set(summary["tasks"]["rte"]) == {"with", "without"}
    assert set(summary["tasks"]["mnli"]["with"]["dev"]) == {"accuracy_matched", "accuracy_mismatched", "score"}
    assert summary["tasks"]["rte"]["with"]["model"] == str(out / "mnli" / "headless")
    table = (out / "results.md").read_text()
    assert "| MNLI | accuracy_mismatched |" in table and "| RTE | accuracy |" in table
    from transformers import SqueezeBertForSequenceClassification

    _, info = SqueezeBertForSequenceClassification.from_pretrained(str(out / "mnli" / "headless"), num_labels=2,
                                                                   output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert sorted(os.listdir(out / "mnli" / "predictions")) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"]
    assert (out / "rte" / "predictions" / "RTE.tsv").read_text().startswith("index\tprediction\n0\t")
    for teacher in ("mnli", "rte"):
        assert any(name.endswith(".npy") for name in os.listdir(out / teacher / "teacher_cache"))


def test_data_parallel_under_torchrun(student, tmp_path):
    """Two ranks split each global batch: the steps are those of one process (40 RTE rows, batch 16, 2 epochs:
    3 + 3), the best model is the same on both ranks (they wait for rank 0's save), and rank 0 alone speaks."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(20000 + os.getpid() % 20000),
                             "-m", "finetune", "glue", "--task", "rte", "--model", student, "--data", GLUE,
                             "--out", tmp_path / "run", "--epochs", "2", "--max-length", "48"],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 6 and results["best_checkpoint_step"] in (3, 6)
    assert result.stderr.count("finetune: rte: dev accuracy") == 1
    assert "Could not locate the best model" not in result.stderr


def one_line_error(result):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_bad_input_is_one_line_before_any_compute(student, vocab_dir, tmp_path, capsys):
    from finetune.__main__ import main

    assert "unknown task" in one_line_error(run_finetune("glue", "--task", "squad", "--model", student, "--out",
                                                         tmp_path / "a"))
    def fails(extra, message):
        out = tmp_path / "out"
        code = main(["glue", "--task", "rte", "--model", student, "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        # one line, the error's, and nothing else: no traceback, no warning, no progress before it
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("finetune: error:") and message in lines[0], (extra, err)
        assert not out.exists()  # nothing was started

    broken = tmp_path / "broken" / "RTE"
    broken.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (broken / "train.tsv").write_text(header + "0\ta\tb\tentailment\n")
    fails(["--data", str(broken.parent)], "the validation split of rte is missing")
    (broken / "dev.tsv").write_text(header + "0\ta\tb\tperhaps\n")
    fails(["--data", str(broken.parent)], "label 'perhaps' is outside the labels of rte")
    (broken / "dev.tsv").write_text("index\tsentence1\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    fails(["--data", str(broken.parent)], "no column ['sentence2']")
    fails(["--data", GLUE, "--teacher", bert_classifier(str(tmp_path / "three"), vocab_dir, 3)],
          "it has 3 labels, rte has 2")
    fails(["--data", GLUE, "--batch-size", "16", "--micro-batch", "5"], "--batch-size 16 does not divide")
    fails(["--data", GLUE, "--alpha", "1.5"], "--alpha 1.5: must be within [0, 1]")
    fails(["--data", GLUE, "--teacher", str(tmp_path / "nowhere")], "no config.json")


class Payload:
    """Unpickling it creates a file: what a pickle from elsewhere can do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def with_pickled_weights(folder, copy_to, marker, keep_safetensors):
    """A copy of a model folder whose weights are also (or only) a `pytorch_model.bin` that creates `marker`
    when unpickled: the real tensors, plus the payload."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(folder, copy_to)
    weights = load_file(os.path.join(copy_to, "model.safetensors"))
    torch.save({**weights, "payload": Payload(str(marker))}, os.path.join(copy_to, "pytorch_model.bin"))
    if not keep_safetensors:
        os.remove(os.path.join(copy_to, "model.safetensors"))
    return str(copy_to)


def test_a_model_whose_only_weights_are_a_pickle_that_runs_code_is_refused_in_one_line(student, tmp_path):
    """The real CLI, before any compute; the same file with tensors only (an older export) still loads."""
    from finetune.model_folder import check_weights, load_classifier

    marker = tmp_path / "payload-ran"
    model = with_pickled_weights(student, tmp_path / "model", marker, keep_safetensors=False)
    err = one_line_error(run_finetune("glue", "--task", "rte", "--model", model, "--data", GLUE, "--out",
                                      tmp_path / "out"))
    assert f"--model {model}: pytorch_model.bin refused: it holds more than tensors" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    from safetensors.torch import load_file

    torch.save(load_file(os.path.join(student, "model.safetensors")), os.path.join(model, "pytorch_model.bin"))
    check_weights(model)
    load_classifier(model, num_labels=2)


def test_a_pickle_beside_safetensors_is_never_read_and_the_run_works(student, vocab_dir, tmp_path):
    """transformers prefers model.safetensors, and the project says so (`use_safetensors`): student and teacher
    both carry a payload beside their safetensors, and a distilled run completes from the safe files."""
    marker = tmp_path / "payload-ran"
    model = with_pickled_weights(student, tmp_path / "model", marker, keep_safetensors=True)
    teacher = with_pickled_weights(bert_classifier(str(tmp_path / "teacher_src"), vocab_dir, 2), tmp_path / "teacher",
                                   marker, keep_safetensors=True)
    results = run_glue(build_config(("", {**FAST, "task": "rte", "model": model, "teacher": teacher, "data": GLUE,
                                          "out": str(tmp_path / "out"), "max_steps": 1, "predict": False})))
    assert results["steps"] == 1 and not marker.exists()


def test_a_teacher_whose_only_weights_are_a_pickle_is_refused_before_any_compute(student, vocab_dir, tmp_path,
                                                                                 capsys):
    from finetune.__main__ import main

    marker = tmp_path / "payload-ran"
    teacher = with_pickled_weights(bert_classifier(str(tmp_path / "teacher_src"), vocab_dir, 2), tmp_path / "teacher",
                                   marker, keep_safetensors=False)
    code = main(["glue", "--task", "rte", "--model", student, "--teacher", teacher, "--data", GLUE, "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"finetune: error: --teacher {teacher}: pytorch_model.bin refused" in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_pickle_in_a_trainer_checkpoint_stops_the_resume_in_one_line(student, tmp_path, capsys):
    """The Trainer reads a checkpoint's optimizer, scheduler and RNG states with `weights_only=True`; a payload
    there (a shared or copied --out) is refused in one line that says how to go on."""
    from finetune.__main__ import main

    flags = ["--task", "rte", "--model", student, "--data", GLUE, "--out", str(tmp_path / "run"), "--batch-size", "8",
             "--max-steps", "4", "--eval-every-steps", "2", "--max-length", "48", "--no-predict"]
    settings = {**FAST, "task": "rte", "model": student, "data": GLUE, "out": str(tmp_path / "run"), "batch_size": 8,
                "max_steps": 4, "eval_every_steps": 2, "predict": False}
    with pytest.raises(KeyboardInterrupt):
        run_glue(build_config(("", settings)), callbacks=(StopAt(3),))
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    marker = tmp_path / "payload-ran"
    torch.save({"python": Payload(str(marker))}, checkpoint / "rng_state.pth")
    capsys.readouterr()
    code = main(["glue", *flags, "--log-every-steps", "1000", "--warmup-fraction", "0"])
    err = capsys.readouterr().err
    assert code == 2 and f"finetune: error: {checkpoint}: refused: a file of this checkpoint holds more than " \
        "tensors, and unpickling it would run io.open; remove" in err, err
    assert not marker.exists()


def test_ctrl_c_is_one_line_and_exit_130_and_the_same_command_resumes(tmp_path):
    """SIGINT (what Ctrl-C sends) once the first checkpoint is written: no traceback, exit 130, and a line
    saying how to go on; the same command then resumes from that checkpoint."""
    import signal

    from tests.unit.test_finetune_labels import tiny_classifier

    tiny_classifier(tmp_path / "model", ["LABEL_0", "LABEL_1"])
    command = [sys.executable, "-m", "finetune", "glue", "--task", "rte", "--model", str(tmp_path / "model"),
               "--data", GLUE, "--out", str(tmp_path / "out"), "--batch-size", "4", "--max-steps", "12",
               "--eval-every-steps", "2", "--max-length", "32", "--no-predict", "--no-evaluate"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    wait_for(tmp_path / "out" / "checkpoints" / "checkpoint-2" / "trainer_state.json", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "finetune: interrupted; run the same command again to resume from the last complete checkpoint")
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["steps"] == 12
