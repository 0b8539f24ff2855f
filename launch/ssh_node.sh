#!/usr/bin/env bash
# One node of an ssh job: launch/ssh_job.sh starts this on every node over ssh. It runs launch/run_node.sh for
# the node and takes its orders from its standard input, which is the ssh connection to the job's launcher:
#   a line TERM or USR1   passed to run_node.sh: the ranks agree on a step, save, and exit 75
#   a line KILL           this node's processes of the job end at once (another node failed)
#   end of input          the launcher or the connection is gone: as TERM, so nothing trains on unseen
# Whatever of the job is left when run_node.sh exits (ranks of a launcher that died) is killed, found by the mark
# SQUEEZEBERT_JOB=<job id>/node<rank> in its environment: another job is never touched, even one started with
# the same command (DeepSpeed's own clean-up, `pkill -f <command>`, would end it).
#
#   CONFIG=... NNODES=... NODE_RANK=... [run_node.sh's other variables] bash launch/ssh_node.sh JOB_ID [--set ...]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

job_id=${1:?usage: ssh_node.sh JOB_ID [--set key=value ...] (started by launch/ssh_job.sh)}
shift
mark="$job_id/node${NODE_RANK:-0}"

# Only run_node.sh and what it starts carry the mark, not this script (it must outlive the sweep).
SQUEEZEBERT_JOB="$mark" bash "$here/run_node.sh" "$@" < /dev/null &
node_pid=$!

exec 3<&0  # a background list reads /dev/null unless given its input explicitly
{
    while read -r order; do
        case "$order" in
            TERM|USR1) kill -"$order" "$node_pid" 2>/dev/null ;;
            KILL) kill_marked "$mark" ;;
        esac
    done
    kill -TERM "$node_pid" 2>/dev/null
} <&3 &
orders_pid=$!
exec 3<&-

wait "$node_pid"
code=$?
kill "$orders_pid" 2>/dev/null
kill_marked "$mark"
exit "$code"
