#!/usr/bin/env bash
# One node of a pretraining job: starts the launcher for this node's ranks, forwards preemption signals
# to the ranks, and exits with what happened:
#   0   training complete
#   75  preempted (or the run's step budget spent): a complete checkpoint is saved; rerun to continue
#   *   a failure (the launcher's code, or 1)
#
#   CONFIG=configs/squeezebert-paper.toml bash launch/run_node.sh [--set key=value ...]
#
# Environment (all optional but CONFIG; under SLURM, launch/slurm_env.sh fills them in):
#   LAUNCHER       deepspeed (default) | torchrun
#   NNODES         number of nodes (1)         NODE_RANK     this node, 0..NNODES-1 (0)
#   GPUS_PER_NODE  ranks on this node (every GPU; on a machine without GPUs, 1 CPU rank)
#   MASTER_ADDR    node 0's address (127.0.0.1) MASTER_PORT   a free TCP port on it (29500)
#   HOSTFILE       the `deepspeed --hostfile` of the nodes (made here for the no-ssh form if unset)
#   PRETRAIN_STATUS_FILE  where this node's first rank writes `complete <step>` / `preempted <step>` (made here if unset)
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

: "${CONFIG:?set CONFIG to a run config, e.g. configs/squeezebert-paper.toml}"
LAUNCHER=${LAUNCHER:-deepspeed}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(local_gpu_count)}
PYTHON=${PYTHON:-python3}
export PRETRAIN_STATUS_FILE=${PRETRAIN_STATUS_FILE:-$(mktemp -t pretrain-status.XXXXXX)}
rm -f "$PRETRAIN_STATUS_FILE"

overrides=()
for argument in "$@"; do overrides+=("$argument"); done

case "$LAUNCHER" in
    deepspeed)
        if [[ "$NNODES" -gt 1 ]]; then
            if [[ -z "${HOSTFILE:-}" ]]; then  # the no-ssh form only needs the node count and slots
                HOSTFILE=$(mktemp -t hostfile.XXXXXX)
                for ((node = 0; node < NNODES; node++)); do echo "node-$node slots=$GPUS_PER_NODE"; done > "$HOSTFILE"
            fi
            command=(deepspeed --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" --num_nodes "$NNODES"
                     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
        else
            command=(deepspeed --num_gpus "$GPUS_PER_NODE" --master_port "$MASTER_PORT")
        fi
        command+=(--module pretrain train --config "$CONFIG" "${overrides[@]}")
        ;;
    torchrun)
        command=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK"
                 --nproc_per_node "$GPUS_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
                 -m pretrain train --config "$CONFIG" "${overrides[@]}")
        ;;
    *) echo "run_node.sh: LAUNCHER=$LAUNCHER: choose deepspeed or torchrun" >&2; exit 2 ;;
esac

echo "run_node.sh: node $NODE_RANK/$NNODES, $GPUS_PER_NODE ranks, master $MASTER_ADDR:$MASTER_PORT: ${command[*]}" >&2
"${command[@]}" &
launcher_pid=$!
# SIGTERM/SIGUSR1 (a batch system's warning) go to the ranks, which agree on a step, save and exit 75;
# the launchers themselves are left alone so they can collect their ranks.
trap 'signal_ranks USR1 "$launcher_pid"' TERM USR1
launcher_code=0
while true; do
    wait "$launcher_pid"
    launcher_code=$?
    kill -0 "$launcher_pid" 2>/dev/null || break  # wait returned because of a trapped signal: wait again
done
exit_code_from_status "$launcher_code" "$PRETRAIN_STATUS_FILE"
