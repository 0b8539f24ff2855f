#!/usr/bin/env bash
# Installs the project and its dependencies with the right PyTorch for this machine.
#
#   bash scripts/install.sh          # the package
#   bash scripts/install.sh --test   # the package and the test tools (pytest, hypothesis, transformers)
#
# PyTorch is installed first and pinned (TORCH_SPEC, default torch==2.13.0): on a GPU node that is the
# CUDA build from PyPI; on a CPU-only machine with a local CPU wheel (pip find-links) it is that wheel;
# elsewhere set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU build. Left to another
# package's dependency resolution, an unpinned torch would pull several GB of CUDA packages.
# DeepSpeed builds from source and its setup.py imports torch: it is built against the torch installed
# here (--no-build-isolation), not against another torch downloaded into an isolated build environment.
set -euo pipefail
cd "$(dirname "$0")/.."
# The interpreter the README's commands then run (`python -m ...`), so packages land where they are used.
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# DeepSpeed as pyproject.toml pins it (the release the tests cover): one place states it.
DEEPSPEED_SPEC=$(grep -o '"deepspeed[^"]*"' pyproject.toml | tr -d '"')
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

pip_install() { PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

# A torch that is already installed is kept: on a cluster it is the build made for its CUDA driver, and
# replacing it would be worse than running on another release than the tests cover.
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    pip_install "$TORCH_SPEC" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
elif ! "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(f'torch=={m.version(\"torch\")}'.split('+')[0] != '$TORCH_SPEC')" 2>/dev/null; then
    echo "install: keeping the installed torch $("$PYTHON" -c "import torch; print(torch.__version__)"); the tests cover $TORCH_SPEC" >&2
fi
pip_install setuptools wheel ninja
installed=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('deepspeed'))" 2>/dev/null || true)
if [[ "deepspeed==$installed" != "$DEEPSPEED_SPEC" ]]; then
    [[ -n "$installed" ]] && echo "install: replacing deepspeed $installed with $DEEPSPEED_SPEC, the release the tests cover" >&2
    pip_install --no-build-isolation "$DEEPSPEED_SPEC"
fi
pip_install -e ".${extras}"
# The ssh form's tests (tests/integration/test_ssh_launch.py) start a real sshd and pdsh. CI runs as root on
# Debian, where apt-get provides them; elsewhere the tests say what is missing and are skipped.
if [[ -n "$extras" ]]; then
    missing=()
    [[ -x /usr/sbin/sshd ]] || command -v sshd > /dev/null || missing+=(openssh-server)
    command -v ssh-keygen > /dev/null || missing+=(openssh-client)
    command -v pdsh > /dev/null || missing+=(pdsh)
    if [[ ${#missing[@]} -gt 0 && $EUID -eq 0 ]] && command -v apt-get > /dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
              "${missing[@]}"; } || echo "install: apt-get could not install ${missing[*]}" >&2
    elif [[ ${#missing[@]} -gt 0 ]]; then
        echo "install: ${missing[*]} not installed (as root on Debian: apt-get install ${missing[*]}):" \
             "the ssh form's tests will be skipped" >&2
    fi
fi
echo "install: $("$PYTHON" -c "import importlib.metadata as m; print('torch', m.version('torch'), 'deepspeed', m.version('deepspeed'))")"
