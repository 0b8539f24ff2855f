#!/usr/bin/env bash
# Makes the folder of wheels that a lent GPU machine lacks (no network, no package index there).
#
#   bash scripts/gpu_wheels.sh [DIR]      # DIR defaults to .whl (ignored through .git/info/exclude)
#
# Run it here, where pip reaches a package index. The GPU machine (see bench/gpu_check.sh) is x86_64,
# CPython 3.12, with torch, transformers, accelerate, pyarrow, tokenizers, safetensors, tensorboard, numpy,
# scipy, scikit-learn, pandas, pytest, hypothesis, msgpack, einops, ninja, py-cpuinfo, psutil, packaging,
# tqdm, filelock, fsspec, huggingface-hub, pyyaml and xxhash already installed. What the project's pretrain,
# finetune and test code imports beyond those, with their own missing requirements (Requires-Dist):
#   deepspeed (pinned in pyproject.toml) <- hjson, pydantic <- pydantic-core, annotated-types,
#                                                                typing-inspection
#   torch-optimizer (pretrain.optim)     <- pytorch-ranger
#   blingfire (data_prep.sentences, bench/bench_finetune.py)
#   datasets (finetune.data, tests)      <- dill, multiprocess
#   typing-extensions: there, but pydantic needs >= 4.14.1 and the machine's version is not on record (a newer
#                      one only adds names)
# Left out: the optional logging extras wandb and mlflow (pretrain.log_backends imports them only when a
# config names them; with their own requirements they would not fit the 64 MiB a call carries).
#
# Versions: DeepSpeed's from pyproject.toml; every other package at the version installed here, the
# environment the CPU tests pass in (scripts/install.sh --test), else the newest pip finds. One version of
# each: the folder is emptied first, since two versions of a package stop the install on the GPU machine.
# DeepSpeed has only a source distribution on PyPI; it is pure Python (its ops compile at run time), so its
# wheel is built here (--no-build-isolation: its setup.py imports the torch installed here).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
DEEPSPEED_SPEC=$(grep -o '"deepspeed[^"]*"' pyproject.toml | tr -d '"')
[[ "$DEEPSPEED_SPEC" == deepspeed==* ]] || { echo "gpu_wheels: no deepspeed==VERSION pin in pyproject.toml" >&2; exit 2; }
BINARY_PACKAGES=(hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions torch-optimizer
                 pytorch-ranger blingfire datasets dill multiprocess)
# manylinux tags pip matches exactly: the common ones, then the glibc versions recent wheels are built for
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1 manylinux_2_24 manylinux_2_31 \
           manylinux_2_34 manylinux_2_35; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done

# the version installed here, as NAME==VERSION, or NAME alone
pinned() {
    "$PYTHON" - "$1" <<'EOF'
import importlib.metadata as metadata, sys
name = sys.argv[1]
try:
    print(f"{name}=={metadata.version(name)}")
except metadata.PackageNotFoundError:
    print(name)
EOF
}

case "$DIR" in /*) ;; *) if [[ "$DIR" == .whl ]] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
    mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude; fi ;; esac
rm -rf "$DIR"
mkdir -p "$DIR"
pip() { PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip --disable-pip-version-check "$@"; }

specs=()
for name in "${BINARY_PACKAGES[@]}"; do specs+=("$(pinned "$name")"); done
echo "gpu_wheels: downloading ${specs[*]}" >&2
pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DIR" "${specs[@]}"
echo "gpu_wheels: building $DEEPSPEED_SPEC (pure Python, ops compiled at run time)" >&2
DS_BUILD_OPS=0 pip wheel --quiet --no-deps --no-build-isolation -w "$DIR" "$DEEPSPEED_SPEC" >/dev/null

# Every wheel must install on CPython 3.12 x86_64 and name one distribution once.
"$PYTHON" - "$DIR" <<'EOF'
import collections, os, sys
folder = sys.argv[1]
names = collections.Counter()
for wheel in sorted(os.listdir(folder)):
    if not wheel.endswith(".whl"):
        sys.exit(f"gpu_wheels: {folder}/{wheel} is not a wheel")
    name, _version, *_build, python, abi, platform = wheel[:-4].split("-")
    names[name.lower().replace("_", "-")] += 1
    if not (platform == "any" or "x86_64" in platform) or python not in ("py3", "cp312", "py312", "py2.py3"):
        sys.exit(f"gpu_wheels: {wheel} does not install on CPython 3.12 x86_64")
twice = [name for name, count in names.items() if count > 1]
if twice:
    sys.exit(f"gpu_wheels: more than one version of {twice}")
EOF
ls -1 "$DIR"
# What travels to the machine: the working tree's tracked and not-ignored files, and the carried wheels.
wheels=$(du -sb "$DIR" | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
mib() { awk -v bytes="$1" 'BEGIN { printf "%.1f MiB", bytes / 1048576 }'; }
echo "gpu_wheels: $(ls "$DIR" | wc -l) wheels, $(mib "$wheels") in $DIR; with the working tree ($(mib "$tree"))" \
     "$(mib $((wheels + tree))) of the 64 MiB a device call carries"
