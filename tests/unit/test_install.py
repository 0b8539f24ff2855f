"""scripts/install.sh replaces a DeepSpeed outside the pinned release, saying so, and leaves the pinned one
alone. Run with a stand-in interpreter that records what pip was asked to do (nothing is installed)."""

import os
import subprocess

from tests.conftest import ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$1" == "-c" ]]; then
    case "$2" in
        *'version(\"torch\")'*) exit "${TORCH_DIFFERS:-0}" ;;  # the installed torch against TORCH_SPEC
        *"print(torch.__version__)"*) echo "2.11.0+cu128"; exit 0 ;;
        *"import torch"*) exit 0 ;;
        *"version('deepspeed'))"*) echo "$INSTALLED_DEEPSPEED"; exit 0 ;;
        *) echo "torch 2.13.0 deepspeed $INSTALLED_DEEPSPEED"; exit 0 ;;
    esac
fi
echo "$*" >> "$PIP_LOG"
"""


def run_install(tmp_path, installed, **env_values):
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    log = tmp_path / "pip.log"
    env = {**os.environ, "PYTHON": str(python), "PIP_LOG": str(log), "INSTALLED_DEEPSPEED": installed, **env_values}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stderr, log.read_text().splitlines()


def test_a_deepspeed_outside_the_pin_is_replaced_with_a_line(tmp_path):
    stderr, calls = run_install(tmp_path, "0.14.0")
    assert "install: replacing deepspeed 0.14.0 with deepspeed==0.19.8, the release the tests cover" in stderr
    assert any("--no-build-isolation deepspeed==0.19.8" in call for call in calls)


def test_the_pinned_deepspeed_is_kept(tmp_path):
    stderr, calls = run_install(tmp_path, "0.19.8")
    assert "replacing" not in stderr and not any("deepspeed==" in call for call in calls)


def test_an_installed_torch_is_kept_with_a_line_when_it_is_not_the_pinned_one(tmp_path):
    """A cluster's torch is the build made for its driver: it is kept, never replaced by the pin."""
    stderr, calls = run_install(tmp_path, "0.19.8", TORCH_DIFFERS="1")
    assert "install: keeping the installed torch 2.11.0+cu128; the tests cover torch==2.13.0" in stderr
    assert not any("torch==" in call for call in calls)
    (tmp_path / "pinned").mkdir()
    stderr, calls = run_install(tmp_path / "pinned", "0.19.8")
    assert "keeping the installed torch" not in stderr and not any("torch==" in call for call in calls)
