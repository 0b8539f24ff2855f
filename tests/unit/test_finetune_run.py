"""finetune's precision choice on GPUs (torch's capability queries answered as each GPU answers them), and what
a run checks and records before and after it starts: length limits, a failed start, changed inputs."""

import os
import shutil

import pytest
import torch
from transformers import TrainerCallback

from finetune.config import FinetuneConfigError, build_config
from finetune.run import precision_flags, run_glue
from tests.conftest import ASSETS

GLUE = os.path.join(ASSETS, "glue")


def pretend_gpu(monkeypatch, name: str, native_bf16: bool) -> None:
    """A GPU as torch describes it: V100 and T4 report bf16 support only when emulation counts."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native_bf16 or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_auto_is_fp16_on_a_gpu_that_only_emulates_bf16(monkeypatch):
    pretend_gpu(monkeypatch, "Tesla V100-SXM2-32GB", native_bf16=False)
    assert precision_flags("auto") == {"bf16": False, "fp16": True}
    with pytest.raises(FinetuneConfigError, match="--precision bf16: Tesla V100-SXM2-32GB has no native bf16"):
        precision_flags("bf16")


def test_auto_is_bf16_on_a_gpu_with_native_bf16_and_fp32_on_a_cpu(monkeypatch):
    assert precision_flags("auto") == {"bf16": False, "fp16": False}  # this machine: no GPU
    pretend_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", native_bf16=True)
    assert precision_flags("auto") == {"bf16": True, "fp16": False}
    assert precision_flags("fp32") == {"bf16": False, "fp16": False}


def test_max_length_beyond_the_models_or_teachers_positions_is_one_line_before_anything_is_written(tmp_path, capsys):
    from finetune.__main__ import main
    from tests.unit.test_finetune_labels import tiny_classifier

    tiny_classifier(tmp_path / "model", ["LABEL_0", "LABEL_1"])  # 64 positions
    capsys.readouterr()
    out = tmp_path / "out"
    flags = ["glue", "--task", "rte", "--model", str(tmp_path / "model"), "--data", GLUE, "--out", str(out)]
    assert main([*flags, "--max-length", "65"]) == 2
    err = capsys.readouterr().err
    assert err == (f"finetune: error: --max-length 65: --model {tmp_path / 'model'} has 64 positions; use "
                   "--max-length 64 or less\n")
    assert not out.exists()
    tiny_classifier(tmp_path / "teacher", ["entailment", "not_entailment"], positions=32)
    capsys.readouterr()
    assert main([*flags, "--max-length", "48", "--teacher", str(tmp_path / "teacher")]) == 2
    assert f"--teacher {tmp_path / 'teacher'} has 32 positions" in capsys.readouterr().err
    assert not out.exists()


class FailAtStart(TrainerCallback):
    """A start that fails once the run's record is written (a crash in the first step, a full disk, Ctrl-C)."""

    def on_train_begin(self, args, state, control, **kwargs):
        raise RuntimeError("failed start")


def tiny_run(tmp_path, model, **settings):
    return build_config(("", {"task": "rte", "model": model, "data": GLUE, "out": str(tmp_path / "out"),
                              "max_steps": 1, "max_length": 32, "predict": False, "log_every_steps": 1000,
                              **settings}))


def test_a_failed_start_leaves_out_as_it_found_it_and_another_command_runs_there(tmp_path):
    from tests.unit.test_finetune_labels import tiny_classifier

    model = str(tmp_path / "model")
    tiny_classifier(model, ["LABEL_0", "LABEL_1"])
    with pytest.raises(RuntimeError, match="failed start"):
        run_glue(tiny_run(tmp_path, model, learning_rate=1e-3), callbacks=(FailAtStart(),))
    assert not (tmp_path / "out").exists()
    assert run_glue(tiny_run(tmp_path, model, learning_rate=2e-3))["steps"] == 1  # not "other settings"


def test_the_same_out_with_other_settings_is_refused_naming_them_and_nothing_there_changes(tmp_path):
    from tests.unit.test_finetune_labels import tiny_classifier

    model = str(tmp_path / "model")
    tiny_classifier(model, ["LABEL_0", "LABEL_1"])
    run_glue(tiny_run(tmp_path, model, learning_rate=1e-3))
    out = tmp_path / "out"
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    with pytest.raises(FinetuneConfigError, match=rf"^--out {out}: holds a run with other settings "
                                                  r"\(learning_rate, max_length\); use another --out, or "
                                                  r"--overwrite-output to start over$"):
        run_glue(tiny_run(tmp_path, model, learning_rate=2e-3, max_length=48))
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_changed_data_at_the_same_path_is_not_nothing_to_do_and_overwrite_output_starts_over(tmp_path, capsys):
    from tests.unit.test_finetune_labels import tiny_classifier

    model = str(tmp_path / "model")
    tiny_classifier(model, ["LABEL_0", "LABEL_1"])
    shutil.copytree(os.path.join(GLUE, "RTE"), tmp_path / "data" / "RTE")
    config = tiny_run(tmp_path, model, data=str(tmp_path / "data"))
    first = run_glue(config)
    assert run_glue(config) == first and "nothing to do" in capsys.readouterr().err
    train = tmp_path / "data" / "RTE" / "train.tsv"
    train.write_text(train.read_text().replace("\tentailment\n", "\tnot_entailment\n", 1))
    with pytest.raises(FinetuneConfigError, match=r"holds a run on other inputs \(data changed at the same paths\); "
                       "use another --out, or --overwrite-output to start over"):
        run_glue(config)
    again = run_glue(tiny_run(tmp_path, model, data=str(tmp_path / "data"), overwrite_output=True))
    assert again["inputs"]["data"] != first["inputs"]["data"] and again["inputs"]["model"] == first["inputs"]["model"]
    assert "nothing to do" not in capsys.readouterr().err


def hub_cache_with(cache, repo_id, source, revision="0123456789abcdef0123456789abcdef01234567"):
    """`source`'s files as huggingface_hub caches a download of `repo_id` (snapshots/<rev>/, refs/main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return str(repo / "snapshots" / revision)


def test_hub_ids_are_read_from_the_local_hub_cache_and_a_missing_one_names_the_download(tmp_path, monkeypatch,
                                                                                       capsys):
    """Offline: `--model org/name` is its cached snapshot (here it reaches the length check, which names the
    snapshot); `--teacher` too (its labels are checked); one not cached is one line saying what to download."""
    import huggingface_hub

    from finetune.__main__ import main
    from tests.conftest import ROOT
    from tests.unit.test_finetune_labels import tiny_classifier

    tiny_classifier(tmp_path / "model", ["LABEL_0", "LABEL_1"])
    tiny_classifier(tmp_path / "sst2", ["negative", "positive"])
    cache = tmp_path / "hub"
    snapshot = hub_cache_with(cache, "org/tiny-squeezebert", tmp_path / "model")
    teacher = hub_cache_with(cache, "org/sst2-teacher", tmp_path / "sst2")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flags = ["glue", "--task", "rte", "--model", "org/tiny-squeezebert", "--data", GLUE, "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert main([*flags, "--max-length", "65"]) == 2
    assert f"--model {snapshot} has 64 positions" in capsys.readouterr().err
    assert main([*flags, "--max-length", "64", "--teacher", "org/sst2-teacher"]) == 2
    assert f"--teacher {teacher}: its labels are ['negative', 'positive']" in capsys.readouterr().err
    # the real CLI, the cache named by the environment as a user names it
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "finetune", *flags, "--teacher", "org/not-downloaded"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": ROOT, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"finetune: error: --teacher org/not-downloaded: no such folder, and not in the local hub cache {cache}; "
        "download it first (`hf download org/not-downloaded`, or `huggingface-cli "
        "download org/not-downloaded`) or give a folder")
    assert not (tmp_path / "out").exists()


def test_sample_limits_and_evaluation_or_prediction_only_runs_on_a_finetuned_model(tmp_path):
    """run_glue's conveniences: --max-{train,eval,predict}-samples cut each split; --no-train evaluates the
    finetuned model as it is (the same dev figures as the run that made it) and --no-evaluate leaves only the
    predictions; a model without the task's classifier is refused for --no-train."""
    from finetune.model_folder import ModelFolderError
    from tests.unit.test_finetune_labels import tiny_classifier

    model = str(tmp_path / "model")
    tiny_classifier(model, ["LABEL_0", "LABEL_1"])
    limits = {"max_train_samples": 8, "max_eval_samples": 5, "max_predict_samples": 3}
    trained = run_glue(tiny_run(tmp_path, model, max_steps=0, epochs=1.0, batch_size=4, predict=True, **limits))
    assert trained["steps"] == 2 and trained["dev_sizes"] == {"validation": 5}
    assert (tmp_path / "out" / "predictions" / "RTE.tsv").read_text().count("\n") == 1 + 3
    finetuned = str(tmp_path / "out" / "model")
    evaluated = run_glue(build_config(("", {"task": "rte", "model": finetuned, "data": GLUE, "train": False,
                                            "out": str(tmp_path / "eval"), "max_length": 32, **limits})))
    assert evaluated["dev"] == pytest.approx(trained["dev"]) and evaluated["steps"] == 0
    assert sorted(os.listdir(tmp_path / "eval")) == ["predictions", "results.json", "run_config.json", "tensorboard"]
    predicted = run_glue(build_config(("", {"task": "rte", "model": finetuned, "data": GLUE, "train": False,
                                            "evaluate": False, "out": str(tmp_path / "predict"), "max_length": 32})))
    assert predicted["dev"] == {} and (tmp_path / "predict" / "predictions" / "RTE.tsv").is_file()
    tiny_classifier(tmp_path / "three", ["a", "b", "c"])
    with pytest.raises(ModelFolderError, match="no classifier for rte to evaluate"):
        run_glue(build_config(("", {"task": "rte", "model": str(tmp_path / "three"), "data": GLUE, "train": False,
                                    "out": str(tmp_path / "three_out"), "max_length": 32})))
    assert not (tmp_path / "three_out").exists()



def test_a_tokenizer_folder_apart_from_the_model(tmp_path, capsys):
    """`--tokenizer`: the model's folder holds no tokenizer files (weights and config only), another does."""
    from finetune.__main__ import main
    from tests.unit.test_finetune_labels import tiny_classifier

    tiny_classifier(tmp_path / "full", ["LABEL_0", "LABEL_1"])
    (tmp_path / "weights").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tmp_path / "full" / name, tmp_path / "weights" / name)
    flags = ["glue", "--task", "rte", "--model", str(tmp_path / "weights"), "--data", GLUE, "--max-steps", "1",
             "--max-length", "32", "--no-predict", "--log-every-steps", "1000"]
    capsys.readouterr()
    assert main([*flags, "--out", str(tmp_path / "without")]) == 2
    assert "no usable tokenizer files" in capsys.readouterr().err
    assert main([*flags, "--out", str(tmp_path / "with"), "--tokenizer", str(tmp_path / "full")]) == 0
    assert (tmp_path / "with" / "model" / "tokenizer.json").is_file()
