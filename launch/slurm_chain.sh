#!/usr/bin/env bash
# For clusters that forbid requeue: submit N jobs chained with --dependency=afterany, each running the
# same command. A job that finds the schedule done exits at once; one that is preempted or reaches its
# time limit leaves a complete checkpoint for the next.
#
#   bash launch/slurm_chain.sh 10 configs/squeezebert-paper.toml [--set key=value ...] [-- sbatch options]
set -euo pipefail
count=${1:?usage: slurm_chain.sh N CONFIG [--set ...]}
shift
previous=""
for ((job = 0; job < count; job++)); do
    dependency=${previous:+--dependency=afterany:$previous}
    previous=$(sbatch --parsable --no-requeue ${dependency} --export=ALL,MAX_RESTARTS=0 \
               launch/slurm_pretrain.sbatch "$@")
    echo "submitted job $previous ${dependency}"
done
