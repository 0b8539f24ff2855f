#!/usr/bin/env bash
# Pretraining on one machine: every local GPU (or one CPU rank) under the deepspeed launcher.
#
#   bash launch/single_node.sh configs/squeezebert-paper.toml [--set key=value ...]
#
# Exit codes: 0 done, 75 preempted/saved (rerun the same command to continue), other: failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export CONFIG=${1:?usage: single_node.sh CONFIG [--set key=value ...]}
shift
NNODES=1 NODE_RANK=0 exec bash launch/run_node.sh "$@"
