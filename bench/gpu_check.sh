#!/usr/bin/env bash
# The device check: the one command to run on a lent GPU machine (one H100 or H200, no network), 8 minutes at most.
#
#   bash bench/gpu_check.sh [--parts NAME,...] [--budget-s S]   # on the GPU, with .whl/ carried
#   bash bench/gpu_check.sh --dry-run                          # on a CPU: tiny sizes, about a minute
#
# Before a GPU session, where pip reaches a package index: `bash scripts/gpu_wheels.sh` makes .whl/ (DeepSpeed and
# the other packages the machine lacks, ~46 MiB); the device call carries it: command `bash bench/gpu_check.sh`,
# carry [".whl"], timeout_s 560 (the check ends by itself within 8 minutes). On the machine:
#   1. the wheels in .whl/ are installed into /tmp/site (PYTHONPATH), unless --dry-run;
#   2. the GPU-marked tests: python -m pytest -m gpu tests/gpu (log: $OUT/pytest_gpu.log);
#   3. bench/gpu_check.py (see its docstring): bf16 through the engine, host syncs of a train step, step timings
#      (samples/s, MFU, peak memory) against transformers' SqueezeBERT, finetuning and inference against BERT,
#      compiled steps; one table last, every figure in $OUT/gpu_check.json (log: $OUT/gpu_check.log).
# Other arguments go to bench/gpu_check.py. Where $OUT is unset, the files go to bench/out/. Exit status: 0 when
# everything passed, 1 when a test or a table row FAILED, 2 when no CUDA device is there without --dry-run.
set -uo pipefail
cd "$(dirname "$0")/.."
TOTAL_S=${GPU_CHECK_TOTAL_S:-470}  # 8 minutes, less a margin for the table and the files' way back
PYTEST_S=150
PYTHON=${PYTHON:-python3}
DRY_RUN=0
for arg in "$@"; do [[ "$arg" == --dry-run ]] && DRY_RUN=1; done
OUT_DIR=${OUT:-bench/out}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

if [[ $DRY_RUN == 0 ]] && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: error: torch sees no CUDA device here; on a CPU run: bash bench/gpu_check.sh --dry-run" >&2
    exit 2
fi
if [[ $DRY_RUN == 0 ]] && compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu_check: installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "gpu_check: installing the wheels failed; the parts that need them will say so" >&2
    fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true

# The GPU-marked tests (skipped, each with its reason, on a CPU).
timeout "$PYTEST_S" "$PYTHON" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT_DIR/pytest_gpu.log"
pytest_status=${PIPESTATUS[0]}
[[ $pytest_status == 124 ]] && echo "gpu_check: the GPU-marked tests ran past ${PYTEST_S} s" | tee -a "$OUT_DIR/pytest_gpu.log"

budget=$((TOTAL_S - SECONDS))
"$PYTHON" bench/gpu_check.py --budget-s "$budget" --out "$OUT_DIR/gpu_check.json" \
    --pytest-log "$OUT_DIR/pytest_gpu.log" --pytest-status "$pytest_status" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
check_status=${PIPESTATUS[0]}
[[ $pytest_status == 0 || $pytest_status == 5 ]] || check_status=$((check_status > 1 ? check_status : 1))
exit "$check_status"
