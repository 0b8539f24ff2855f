# Derives the launch environment from SLURM's variables (sourced by the sbatch scripts and by each task).
#   MASTER_ADDR  the first host of the allocation        MASTER_PORT  20000 + job id mod 20000
#   NNODES       nodes of the allocation                 NODE_RANK    this task's node (SLURM_NODEID)
#   GPUS_PER_NODE  SLURM_GPUS_ON_NODE, else the GPUs nvidia-smi sees, else 1
# A variable already set is kept, so any of them can be forced from outside.

: "${SLURM_JOB_ID:?slurm_env.sh: not inside a SLURM job (SLURM_JOB_ID is unset)}"
if [[ -z "${MASTER_ADDR:-}" ]]; then
    MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is unset}" | head -n 1)
fi
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
NNODES=${NNODES:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l)}
    [[ "$GPUS_PER_NODE" -gt 0 ]] || GPUS_PER_NODE=1
fi
export MASTER_ADDR MASTER_PORT NNODES NODE_RANK GPUS_PER_NODE
