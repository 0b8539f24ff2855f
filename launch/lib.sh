# Shared shell functions of the launch scripts (sourced, not run).

EXIT_PREEMPTED=75

local_gpu_count() {
    local count
    count=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
    if [[ "$count" -gt 0 ]]; then echo "$count"; else echo 1; fi
}

descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

# Send a signal to the training ranks below a launcher: processes running `python [-u] -m pretrain ...`
# (the launchers' own command lines start with deepspeed's or torchrun's module instead).
signal_ranks() {
    local signal=$1 root=$2 pid cmdline
    for pid in $(descendants "$root"); do
        cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || continue
        if [[ "$cmdline" =~ ^[^\ ]*python[^\ ]*\ (-u\ )?-m\ pretrain\  ]]; then
            kill -"$signal" "$pid" 2>/dev/null
        fi
    done
}

# The processes of one node of an ssh job (launch/ssh_node.sh): those whose environment holds
# SQUEEZEBERT_JOB=<mark>, wherever they were reparented. A mark is unique to one run, so this never finds
# another job's processes, as matching command lines (`pkill -f`) would.
marked_processes() {
    grep -lsxzF -- "SQUEEZEBERT_JOB=$1" /proc/[0-9]*/environ | cut -d/ -f3
}

# SIGKILL every process of a mark, again until none is left (one may fork while the others are killed).
kill_marked() {
    local mark=$1 pids attempt
    for attempt in 1 2 3 4 5; do
        pids=$(marked_processes "$mark")
        [[ -z "$pids" ]] && return 0
        kill -KILL $pids 2>/dev/null
        sleep 0.2
    done
}

# The node's exit code from the launcher's code and the status file that the node's first rank writes
# once all ranks agree on the outcome (launchers do not pass on their ranks' exit codes faithfully:
# torchrun reports any failure as 1, and a rank that crashes while exiting after a complete checkpoint
# has lost nothing).
exit_code_from_status() {
    local launcher_code=$1 status_file=$2 state="" code
    [[ -f "$status_file" ]] && read -r state _ < "$status_file"
    case "$state" in
        complete) code=0 ;;
        preempted) code=$EXIT_PREEMPTED ;;
        *) return "$launcher_code" ;;  # no outcome recorded: the run failed (or an old trainer ran)
    esac
    if [[ "$launcher_code" -ne 0 && "$launcher_code" -ne "$code" ]]; then
        echo "launch: the ranks recorded '$state' in $status_file but the launcher exited $launcher_code" \
             "(a rank failed while exiting); the checkpoint is complete, so this counts as $code" >&2
    fi
    return "$code"
}

# An ssh job's exit code from its nodes' codes: 0 when every node completed; 75 when every node saved (or completed:
# the ranks agree on the outcome, so a mix only means the end was seen between saves); 2 when every node refused
# its input; otherwise 1 (a node failed or was lost).
job_exit_code() {
    local code all_complete=1 all_saved=1 all_bad_input=1
    for code in "$@"; do
        [[ "$code" -eq 0 ]] || all_complete=0
        [[ "$code" -eq 0 || "$code" -eq "$EXIT_PREEMPTED" ]] || all_saved=0
        [[ "$code" -eq 2 ]] || all_bad_input=0
    done
    if ((all_complete)); then echo 0
    elif ((all_saved)); then echo "$EXIT_PREEMPTED"
    elif ((all_bad_input)); then echo 2
    else echo 1
    fi
}

# What a batch job does after its nodes exit: done | requeue | fail.
#   decide_after_exit <exit code> <restarts so far> <max restarts after failures>
# <restarts so far> counts the earlier failures (failures_so_far), not the preemptions.
decide_after_exit() {
    local code=$1 restarts=${2:-0} max_restarts=${3:-3}
    if [[ "$code" -eq 0 ]]; then echo done
    elif [[ "$code" -eq "$EXIT_PREEMPTED" ]]; then echo requeue
    elif [[ "$restarts" -lt "$max_restarts" ]]; then echo requeue  # a node died: resume from the checkpoint
    else echo fail
    fi
}

# Failures (not preemptions) of this job so far, kept in a file across its requeues: SLURM_RESTART_COUNT
# counts every requeue, preemptions and the job's own time-limit requeues included, so it cannot bound the
# restarts after failures.
#   failures_so_far <failures file>            prints the count (0 when there is no file)
#   record_exit <exit code> <failures file>    counts the exit if it is a failure
failures_so_far() {
    local failures
    failures=$(cat "$1" 2>/dev/null || echo 0)
    [[ "$failures" =~ ^[0-9]+$ ]] || failures=0
    echo "$failures"
}

record_exit() {
    local code=$1 file=$2
    if [[ "$code" -ne 0 && "$code" -ne "$EXIT_PREEMPTED" ]]; then
        echo $(( $(failures_so_far "$file") + 1 )) > "$file"
    fi
}
