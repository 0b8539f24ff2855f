#!/usr/bin/env bash
# Pretraining on the nodes of a DeepSpeed hostfile, started from one machine over ssh: the preemptible form of
# `deepspeed --hostfile HOSTFILE --module pretrain ...`. Every node runs launch/ssh_node.sh (which runs
# launch/run_node.sh, as the no-ssh form does) over one ssh connection, which also carries this script's signals
# to the node: SIGTERM, SIGINT or SIGUSR1 here make every rank save at one step, and the job exits 75.
#
#   bash launch/ssh_job.sh HOSTFILE CONFIG [--set key=value ...]
#
# Exit codes: 0 complete; 75 preempted, a complete checkpoint saved (rerun the same command to continue);
# 1 failed (a node was lost or a rank failed: rerun to resume from the last complete checkpoint); 2 bad input.
# Needs passwordless ssh to every host and this checkout, CONFIG and the Python environment at the same paths on
# every node. Environment (all optional):
#   MASTER_ADDR    the first host's address (default: the HostName ssh connects to)   MASTER_PORT   29500
#   SSH_OPTIONS    more options for every ssh, e.g. "-F cluster_ssh_config" or "-p 2222"
#   LAUNCHER       deepspeed (default) | torchrun, on each node (launch/run_node.sh)
#   FAILURE_GRACE_SECONDS  after a node fails, how long the others have to end by themselves (30) before they
#                  are killed (a peer that stops answering would otherwise hold them for the collective timeout)
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

fail_input() { echo "ssh_job: error: $*" >&2; exit 2; }

[[ $# -ge 2 ]] || fail_input "usage: ssh_job.sh HOSTFILE CONFIG [--set key=value ...]"
hostfile=$1 config=$2
shift 2
[[ -f "$hostfile" ]] || fail_input "HOSTFILE $hostfile: no such file (lines of 'hostname slots=N')"
[[ -f "$config" ]] || fail_input "CONFIG $config: no such file"
hostfile=$(realpath "$hostfile") config=$(realpath "$config")

hosts=() slots=()
while read -r line || [[ -n "$line" ]]; do
    line=${line%%#*}
    [[ -z "${line// }" ]] && continue
    [[ "$line" =~ ^[[:space:]]*([^[:space:]]+)[[:space:]]+slots=([1-9][0-9]*)[[:space:]]*$ ]] ||
        fail_input "HOSTFILE $hostfile: '$line' is not 'hostname slots=N'"
    for host in "${hosts[@]}"; do
        [[ "$host" == "${BASH_REMATCH[1]}" ]] && fail_input "HOSTFILE $hostfile: $host is listed twice"
    done
    hosts+=("${BASH_REMATCH[1]}") slots+=("${BASH_REMATCH[2]}")
done < "$hostfile"
[[ ${#hosts[@]} -gt 0 ]] || fail_input "HOSTFILE $hostfile: no hosts (lines of 'hostname slots=N')"

read -ra ssh_command <<< "ssh -o BatchMode=yes ${SSH_OPTIONS:-}"
for host in "${hosts[@]}"; do  # before any node starts: a node that cannot start would leave the others waiting
    if ! error=$("${ssh_command[@]}" "$host" true 2>&1 < /dev/null | tr -s '\r\n' '  '); then
        fail_input "HOSTFILE $hostfile: cannot run a command on $host over ssh without a password" \
                   "(${error% }); set up passwordless ssh (SSH_OPTIONS for options)"
    fi
done

job_id="$(hostname -s)-$(date +%Y%m%d-%H%M%S)-$$-$RANDOM"  # unique to this run: it marks its processes
# What each node needs of this environment: the interpreter and its packages (the same paths on every node),
# run_node.sh's settings, and the libraries' own variables (DeepSpeed forwards the same prefixes over pdsh).
# The master is the first host at the address ssh connects to (its HostName where an ssh config names one).
MASTER_ADDR=${MASTER_ADDR:-$("${ssh_command[@]}" -G "${hosts[0]}" 2> /dev/null < /dev/null |
                            awk '$1 == "hostname" { print $2 }')}
[[ -n "$MASTER_ADDR" ]] ||
    fail_input "MASTER_ADDR: ssh -G ${hosts[0]} names no address for the first host; set MASTER_ADDR"
MASTER_PORT=${MASTER_PORT:-29500}
node_settings=(PATH="$PATH" CONFIG="$config" HOSTFILE="$hostfile" NNODES="${#hosts[@]}" MASTER_ADDR="$MASTER_ADDR"
               MASTER_PORT="$MASTER_PORT")
for name in $(compgen -e); do
    if [[ "$name" =~ ^(PYTHON|VIRTUAL_ENV$|LAUNCHER$|NCCL_|UCX_|OMP_NUM_THREADS$|CUDA_|HF_) ]]; then
        node_settings+=("$name=${!name}")
    fi
done

remote_command() {  # for the remote login shell: every word single-quoted
    local word quoted=()
    for word in "$@"; do quoted+=("'${word//\'/\'\\\'\'}'"); done
    echo "${quoted[*]}"
}

declare -A running  # ssh pid -> node rank, of the nodes still running
stop=""
tell_nodes() {
    local pid
    for pid in "${!running[@]}"; do echo "$1" >&"${order_fds[${running[$pid]}]}" 2>/dev/null; done
}
close_orders() {
    local fd
    for fd in "${order_fds[@]}"; do exec {fd}>&- 2>/dev/null; done
}
trap '' PIPE  # a node whose connection is gone: its order is lost, not this script
trap 'stop=TERM; tell_nodes TERM' TERM INT
trap 'stop=USR1; tell_nodes USR1' USR1

echo "ssh_job: job $job_id on ${hosts[*]}, master $MASTER_ADDR:$MASTER_PORT" >&2
[[ -n "$stop" ]] && { echo "ssh_job: stopped before the nodes started" >&2; exit "$EXIT_PREEMPTED"; }
# Each node's orders go down its ssh connection's standard input, a pipe that only this process writes: if this
# process dies, even by SIGKILL, every node reads the end of its input and saves.
orders=$(mktemp -d)
ssh_pids=() order_fds=()
for ((rank = 0; rank < ${#hosts[@]}; rank++)); do
    mkfifo "$orders/node$rank"
    "${ssh_command[@]}" "${hosts[rank]}" "cd $(remote_command "$PWD") && exec $(remote_command env \
        "${node_settings[@]}" NODE_RANK="$rank" GPUS_PER_NODE="${slots[rank]}" \
        bash "$here/ssh_node.sh" "$job_id" "$@")" < "$orders/node$rank" &
    ssh_pids+=($!)
done
for ((rank = 0; rank < ${#hosts[@]}; rank++)); do  # opened after every ssh started, so none holds another's
    exec {fd}> "$orders/node$rank"
    order_fds+=("$fd")
done
rm -rf "$orders"

for ((rank = 0; rank < ${#hosts[@]}; rank++)); do running[${ssh_pids[rank]}]=$rank; done
[[ -n "$stop" ]] && tell_nodes "$stop"  # a signal that came while the nodes were starting

codes=() grace_pid=""
while [[ ${#running[@]} -gt 0 ]]; do
    finished=""
    wait -n -p finished "${!running[@]}" $grace_pid
    code=$?
    [[ -z "${finished:-}" ]] && continue  # a trapped signal interrupted the wait (and unset `finished`)
    if [[ "$finished" == "$grace_pid" ]]; then
        echo "ssh_job: the other nodes did not end ${FAILURE_GRACE_SECONDS:-30} s after the failure: killing them" >&2
        tell_nodes KILL
        grace_pid=""
        continue
    fi
    rank=${running[$finished]}
    unset "running[$finished]"
    codes[rank]=$code
    fd=${order_fds[rank]}
    exec {fd}>&-
    if [[ $code -ne 0 && $code -ne $EXIT_PREEMPTED ]]; then
        [[ $code -eq 255 ]] && why="lost: its ssh connection ended" || why="exited $code"
        echo "ssh_job: node $rank (${hosts[rank]}) $why" >&2
        if [[ -z "$grace_pid" && ${#running[@]} -gt 0 && -z "${failed:-}" ]]; then
            (close_orders; exec sleep "${FAILURE_GRACE_SECONDS:-30}") & grace_pid=$!
        fi
        failed=1
    fi
done
[[ -n "$grace_pid" ]] && kill "$grace_pid" 2>/dev/null

outcome=$(job_exit_code "${codes[@]}")
case "$outcome" in
    0) echo "ssh_job: every node exited ${codes[*]}: complete" >&2 ;;
    75) echo "ssh_job: every node exited ${codes[*]}: preempted, a complete checkpoint is saved; rerun the same" \
             "command to continue" >&2 ;;
    2) echo "ssh_job: every node exited ${codes[*]}: bad input (the ranks' error is above)" >&2 ;;
    *) echo "ssh_job: the nodes exited ${codes[*]}: failed; rerun the same command to resume from the last" \
            "complete checkpoint" >&2 ;;
esac
exit "$outcome"
