#!/usr/bin/env bash
# For clusters that forbid requeue: submit N jobs chained with --dependency=afterany, each running the
# same command. A job that finds the schedule done exits at once; one that is preempted or reaches its
# time limit leaves a complete checkpoint for the next.
#
#   bash launch/slurm_chain.sh 10 configs/squeezebert-paper.toml [--set key=value ...] [-- sbatch options]
#
# Arguments after `--` go to every `sbatch` (for example `-- --nodes 4 --time 12:00:00`). The jobs run
# with NO_REQUEUE=1: a preempted job ends and the next one in the chain continues from its checkpoint.
set -euo pipefail
count=${1:?usage: slurm_chain.sh N CONFIG [--set key=value ...] [-- sbatch options]}
shift
job_args=()
while [[ $# -gt 0 && "$1" != "--" ]]; do job_args+=("$1"); shift; done
[[ $# -gt 0 ]] && shift  # the --
sbatch_args=("$@")
previous=""
for ((job = 0; job < count; job++)); do
    dependency=()
    [[ -n "$previous" ]] && dependency=(--dependency="afterany:$previous")
    # ${a[@]+"${a[@]}"}: an empty array under `set -u` on bash before 4.4
    previous=$(sbatch --parsable --no-requeue ${dependency[@]+"${dependency[@]}"} \
               --export=ALL,MAX_RESTARTS=0,NO_REQUEUE=1 ${sbatch_args[@]+"${sbatch_args[@]}"} \
               launch/slurm_pretrain.sbatch ${job_args[@]+"${job_args[@]}"})
    echo "submitted job $previous ${dependency[*]+${dependency[*]}}"
done
