"""scripts/install.sh's decisions, run for real: every check the script makes (`import torch`, the installed
torch against TORCH_SPEC, the installed DeepSpeed against the pin) runs in a real interpreter, that of a fresh
virtual environment made without pip, in which torch and DeepSpeed are what the test puts there: nothing, or a
stand-in package with its distribution metadata (`importlib.metadata` reads it as it reads a real install).
Only `python -m pip` is taken over: its arguments are recorded and nothing is downloaded."""

import os
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import ROOT

PINNED_TORCH = "torch==2.13.0"  # install.sh's default TORCH_SPEC

# The interpreter install.sh is given (its PYTHON): the environment's own, except that pip only records.
RECORDING_PYTHON = """#!/usr/bin/env bash
if [[ "$1" == "-m" && "$2" == "pip" ]]; then
    echo "${*:3}" >> "$PIP_LOG"
    exit 0
fi
exec "$ENVIRONMENT_PYTHON" "$@"
"""


def pinned_deepspeed():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as handle:
        return next(line.split('"deepspeed==')[1].split('"')[0] for line in handle if '"deepspeed==' in line)


def environment(tmp_path, **installed):
    """A virtual environment without pip and without the system's packages, holding a stand-in for each of
    `installed` ({name: version}): an importable package with `__version__` and its `.dist-info`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    relative = os.path.relpath(sysconfig.get_path("purelib"), sysconfig.get_path("data"))
    site = venv / relative
    for name, version in installed.items():
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return venv / "bin" / "python"


def run_install(tmp_path, environment_python, **env_values):
    python = tmp_path / "python"
    python.write_text(RECORDING_PYTHON)
    python.chmod(0o755)
    log = tmp_path / "pip.log"
    log.write_text("")
    env = {key: value for key, value in os.environ.items() if key not in ("TORCH_SPEC", "TORCH_INDEX_URL")}
    env.update(PYTHON=str(python), ENVIRONMENT_PYTHON=str(environment_python), PIP_LOG=str(log), **env_values)
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install.sh")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stderr, log.read_text().splitlines()


def test_the_stand_ins_are_what_the_environment_reports(tmp_path):
    """What the script's checks see: the stand-ins' versions, and no torch where none was put."""
    python = environment(tmp_path, torch="2.11.0+cu128")
    probe = "import importlib.metadata as m, torch; print(torch.__version__, m.version('torch'))"
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.split() == \
        ["2.11.0+cu128", "2.11.0+cu128"]
    bare = environment(tmp_path / "bare")
    assert subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode != 0


def test_a_deepspeed_outside_the_pin_is_replaced_with_a_line(tmp_path):
    stderr, calls = run_install(tmp_path, environment(tmp_path, torch="2.13.0", deepspeed="0.14.0"))
    pin = pinned_deepspeed()
    assert f"install: replacing deepspeed 0.14.0 with deepspeed=={pin}, the release the tests cover" in stderr
    assert any(f"--no-build-isolation deepspeed=={pin}" in call for call in calls)


def test_the_pinned_deepspeed_is_kept(tmp_path):
    stderr, calls = run_install(tmp_path, environment(tmp_path, torch="2.13.0", deepspeed=pinned_deepspeed()))
    assert "replacing" not in stderr and not any("deepspeed==" in call for call in calls)


@pytest.mark.parametrize("installed, kept_with_a_line", [
    ("2.11.0+cu128", True),  # a cluster's own build, another release
    ("2.13.0+cu128", False),  # the pinned release in a CUDA build: the local part is not a difference
    ("2.13.0", False),
    ("2.13.1", True),
])
def test_an_installed_torch_is_kept_with_a_line_when_it_is_not_the_pinned_release(tmp_path, installed,
                                                                                  kept_with_a_line):
    """A cluster's torch is the build made for its driver: it is kept, never replaced by the pin."""
    stderr, calls = run_install(tmp_path, environment(tmp_path, torch=installed, deepspeed=pinned_deepspeed()))
    line = f"install: keeping the installed torch {installed}; the tests cover {PINNED_TORCH}"
    assert (line in stderr) == kept_with_a_line, stderr
    assert not any("torch==" in call for call in calls), calls


def test_without_torch_the_pinned_one_is_installed_first_from_the_index_given(tmp_path):
    python = environment(tmp_path)
    stderr, calls = run_install(tmp_path, python)
    assert calls[0].endswith(f"--disable-pip-version-check {PINNED_TORCH}"), calls
    assert "keeping the installed torch" not in stderr
    assert any(f"--no-build-isolation deepspeed=={pinned_deepspeed()}" in call for call in calls)  # none there
    stderr, calls = run_install(tmp_path, python, TORCH_SPEC="torch==2.12.0",
                                TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu")
    assert calls[0].endswith("torch==2.12.0 --index-url https://download.pytorch.org/whl/cpu"), calls
