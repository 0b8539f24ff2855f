"""A wheel install, not the editable one: built from a copy of the sources, installed into a fresh virtual
environment, and run from a folder with no checkout in it (as in a container image or a cluster's shared
environment). The model presets and the demo's config must come from the installed package."""

import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT, SAMPLE

RUN_CONFIG = """
model = "squeezebert-tiny"
precision = "fp32"

[[phases]]
name = "phase1"
shards = "shards/seq128"
steps = 2
global_batch = 8
micro_batch = 4

[checkpoint]
dir = "checkpoints"

[logging]
dir = "runs"
eval_every_steps = 0
"""


def in_the_checkout(path: str) -> bool:
    """A sys.path entry of the checkout's sources (its root, a folder in it), not the packages of an environment
    that happens to live inside it (CI's `.ci-venv/.../site-packages`)."""
    root, real = os.path.realpath(ROOT), os.path.realpath(path)
    if real == root:
        return True
    return real.startswith(root + os.sep) and os.path.basename(real) not in ("site-packages", "dist-packages")


def environment_like_this_one(venv) -> str:
    """A virtual environment made from this interpreter that sees the packages of the environment running the
    tests (a venv, a conda environment or the base interpreter), the project's checkout excepted; returns its
    python. `--system-site-packages` would not do: from inside a venv it gives the base interpreter's packages,
    not the venv's. A .pth file in the new site-packages adds this interpreter's sys.path entries as site
    directories (their own .pth files read, as at this interpreter's start), after the venv's own packages, so
    the wheel installed there is the project that imports."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    left_out = {os.path.realpath(p) for p in [os.getcwd(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)] if p}
    entries = [p for p in sys.path if p and os.path.isdir(p) and os.path.realpath(p) not in left_out
               and not in_the_checkout(p)]
    with open(os.path.join(site_packages, "environment_running_the_tests.pth"), "w", encoding="utf-8") as handle:
        # one line, run by `exec` in site.py's scope: no comprehension, which would not see `site`
        handle.write(f"import site; list(map(site.addsitedir, {entries!r}))\n")
    return python


def test_a_wheel_install_runs_both_stages_with_no_checkout(tmp_path):
    sources = tmp_path / "sources"
    shutil.copytree(ROOT, sources, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "demo_out", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(sources)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("squeezebert_pretrain-*.whl")
    shutil.rmtree(sources)  # nothing of the checkout is left to find
    venv = tmp_path / "venv"
    python = environment_like_this_one(venv)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed", str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    def run(*args):
        result = subprocess.run([python, *args], cwd=work, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    where = run("-c", "import pretrain, data_prep; print(pretrain.__file__); print(data_prep.__file__)")
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout
    corpus = shutil.copytree(SAMPLE, work / "corpus")
    run("-m", "data_prep", "vocab", "--source", str(corpus), "--out", "vocab", "--vocab-size", "4000")
    run("-m", "data_prep", "shards", "--source", str(corpus), "--vocab", "vocab", "--out", "shards",
        "--seq-len", "128", "--num-proc", "1", "--quiet")
    (work / "run.toml").write_text(RUN_CONFIG)
    trained = run("-m", "pretrain", "train", "--config", "run.toml")
    assert "training complete" in trained.stderr
    run("-m", "pretrain", "export", "--checkpoint", "checkpoints", "--out", "export")
    assert (work / "export" / "config.json").is_file()
    demo_config = run("-c", "from pretrain.model import PRESETS; print((PRESETS / 'demo.toml').read_text())")
    assert "[[phases]]" in demo_config.stdout
    # the finetuning task presets are read by name from the installed package
    preset = run("-c", "from finetune.config import task_preset; import finetune; print(finetune.__file__); "
                 "print(task_preset('rte'))")
    assert preset.stdout.startswith(str(venv)) and "'epochs': 10" in preset.stdout, preset.stdout
