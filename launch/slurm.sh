#!/usr/bin/env bash
# Multi-node training under SLURM: one `accelerate launch` per node, each starting one process per GPU.
#
#   sbatch --nodes=4 launch/slurm.sh configs/imagenet.yaml [key=value ...]
#
# SLURM gives every node its rank (SLURM_NODEID) and the node list; the first node is the rendezvous
# host. The run directory must be on a file system all nodes share (checkpoints are written there by
# every rank). --resume is always passed: a requeued or resubmitted job continues from its latest
# checkpoint, a fresh one starts at step 0.
#
# Stopping early (preemption, or the time limit: --signal=TERM@120 asks 120 s before it): each node's
# launcher (torchrun under `accelerate launch`) forwards SIGTERM to its ranks; every rank finishes its
# step, the ranks agree at the next sync point (within `logging.every_steps` steps), a checkpoint is
# saved and each rank exits 143. The launcher waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (set to 100
# below; torch's default is 30) for that before it kills the ranks, then reports the signal itself:
# the job step ends with exit status 1 (torchrun's SignalException), not 143 — the README says the same.
# Torch releases older than this variable use a fixed 30 s; keep a checkpoint save well inside it.
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
# The launcher's grace period between forwarding SIGTERM and killing the ranks: inside the 120 s the
# --signal line leaves before the time limit.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}

# sed reads the whole list (head would close the pipe early: SIGPIPE, fatal under pipefail).
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
NUM_NODES=$SLURM_JOB_NUM_NODES
echo "nodes: $NUM_NODES × $GPUS_PER_NODE GPUs, rendezvous $MAIN_IP:$PORT" >&2

# One task per node; each expands its own SLURM_NODEID (hence the single quotes). Since Slurm 22.05 srun
# no longer inherits --cpus-per-task from sbatch: pass it, or every node's launcher gets one core.
srun --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 bash -c '
  exec "$0/bin/accelerate" launch \
    --config_file configs/accelerate/multinode.yaml \
    --num_machines "$1" --num_processes "$(( $1 * $2 ))" \
    --machine_rank "$SLURM_NODEID" --main_process_ip "$3" --main_process_port "$4" \
    launch/train.py --config "$5" --resume "${@:6}"
' "$PYTHON_ENV" "$NUM_NODES" "$GPUS_PER_NODE" "$MAIN_IP" "$PORT" "$CONFIG" "$@"
