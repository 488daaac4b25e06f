#!/usr/bin/env bash
# Multi-node training under SLURM: one `accelerate launch` per node, each starting one process per GPU.
#
#   sbatch --nodes=4 launch/slurm.sh configs/imagenet.yaml [key=value ...]
#
# SLURM gives every node its rank (SLURM_NODEID) and the node list; the first node is the rendezvous
# host. The run directory must be on a file system all nodes share (checkpoints are written there by
# every rank). --resume is always passed: a requeued job continues from its latest checkpoint, a fresh
# one starts at step 0. On SIGTERM (preemption, time limit) every rank finishes its step, a checkpoint is
# saved, and the job exits 143.
#SBATCH --job-name=colorize
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch launch/slurm.sh CONFIG.yaml [key=value ...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PORT=${MAIN_PROCESS_PORT:-29500}
PYTHON_ENV=${PYTHON_ENV:-.venv}

MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
NUM_NODES=$SLURM_JOB_NUM_NODES
echo "nodes: $NUM_NODES × $GPUS_PER_NODE GPUs, rendezvous $MAIN_IP:$PORT" >&2

# One task per node; each expands its own SLURM_NODEID (hence the single quotes).
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '
  exec "$0/bin/accelerate" launch \
    --config_file configs/accelerate/multinode.yaml \
    --num_machines "$1" --num_processes "$(( $1 * $2 ))" \
    --machine_rank "$SLURM_NODEID" --main_process_ip "$3" --main_process_port "$4" \
    launch/train.py --config "$5" --resume "${@:6}"
' "$PYTHON_ENV" "$NUM_NODES" "$GPUS_PER_NODE" "$MAIN_IP" "$PORT" "$CONFIG" "$@"
