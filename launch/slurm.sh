#!/usr/bin/env bash
# Training under Slurm: srun starts one training process (rank) per GPU on every node, one per node
# where the allocation has no GPUs, and the ranks form one torch.distributed group through Accelerate.
#
#   sbatch --nodes=4 --gpus-per-node=8 --cpus-per-task=64 launch/slurm.sh configs/imagenet.yaml [key=value ...]
#   sbatch --nodes=2 launch/slurm.sh configs/demo.yaml        # nodes without GPUs: one CPU rank per node
#
# Everything comes from the allocation:
# - ranks per node: SLURM_GPUS_ON_NODE (else the count in SLURM_GPUS_PER_NODE, else 1);
# - CPUs per rank: SLURM_CPUS_PER_TASK (the --cpus-per-task given to sbatch, per node) ÷ ranks per node,
#   also used as OMP_NUM_THREADS;
# - rendezvous: the first node's address as Slurm knows it (NodeAddr in `scontrol show node`), port
#   20000 + job id mod 20000, so two jobs sharing a first node do not collide (MAIN_PROCESS_PORT overrides).
# Submit from any directory: the script finds its repository from the path it was submitted with, and
# runs PYTHON_ENV (default: the repository's .venv). CONFIG is read from the submit directory, or from the
# repository when it is not there; relative paths inside it (run.out_dir, data.shards) are relative to the
# submit directory. The run directory must be on a file system every node sees.
#
# Stopping (docs/clusters.md has the whole table):
# - the time limit: 120 s before it Slurm sends SIGUSR1 (--signal below) to every process of the job
#   step; the ranks finish their step, agree at the next sync point, save a checkpoint and exit 138, and
#   this script requeues the job (`scontrol requeue`), which continues from that checkpoint. W&B's service
#   ignores SIGUSR1, so it finishes its upload. When the schedule is done the job exits 0.
# - `scontrol requeue`, `scancel` and preemption send SIGTERM to every process (W&B's service included)
#   and SIGKILL KillWait seconds later: the ranks save a checkpoint within that time and exit 143.
# - every attempt continues from the run's latest checkpoint: --resume is always passed.
#SBATCH --job-name=colorize
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out
set -euo pipefail

USAGE="usage: sbatch [options] launch/slurm.sh CONFIG.yaml [key=value ...]"
CONFIG=${1:?$USAGE}
shift
: "${SLURM_JOB_ID:?launch/slurm.sh runs as a Slurm batch job: $USAGE}"

# Slurm runs a copy of this script from its spool directory: the repository is found from the path it
# was submitted with (scontrol's Command, relative to the submit directory).
SCRIPT=$(scontrol show job "$SLURM_JOB_ID" | awk '/^ *Command=/ && !n++ { sub(/^ *Command=/, ""); print $1 }')
[[ $SCRIPT == /* ]] || SCRIPT=$SLURM_SUBMIT_DIR/$SCRIPT
REPO=$(cd "$(dirname "$SCRIPT")/.." && pwd)
PYTHON_ENV=${PYTHON_ENV:-$REPO/.venv}
[[ -f $CONFIG || ! -f $REPO/$CONFIG ]] || CONFIG=$REPO/$CONFIG

echo "=== $(date '+%F %T') job $SLURM_JOB_ID, attempt $((${SLURM_RESTART_COUNT:-0} + 1)), nodes $SLURM_JOB_NODELIST ==="

GPUS=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}
GPUS=${GPUS##*:} # "a100:8" → 8
RANKS_PER_NODE=$((GPUS > 0 ? GPUS : 1))
CPUS=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
if ((CPUS < RANKS_PER_NODE)); then
  echo "launch/slurm.sh: $RANKS_PER_NODE ranks per node need at least $RANKS_PER_NODE CPUs per node; submit with --cpus-per-task=N (N ≥ $RANKS_PER_NODE)" >&2
  exit 2
fi
CPUS_PER_RANK=$((CPUS / RANKS_PER_NODE))
FIRST_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p) # sed reads all: no SIGPIPE
MASTER_ADDR=$(scontrol show node "$FIRST_NODE" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
export MASTER_ADDR MASTER_PORT=${MAIN_PROCESS_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export WORLD_SIZE=$((SLURM_JOB_NUM_NODES * RANKS_PER_NODE)) LOCAL_WORLD_SIZE=$RANKS_PER_NODE
export OMP_NUM_THREADS=$CPUS_PER_RANK PYTHONUNBUFFERED=1
echo "$SLURM_JOB_NUM_NODES nodes × $RANKS_PER_NODE ranks ($GPUS GPUs and $CPUS CPUs per node), rendezvous $MASTER_ADDR:$MASTER_PORT" >&2

# One task per rank; each takes its rank from Slurm (single quotes: the task expands SLURM_PROCID and
# SLURM_LOCALID itself). --wait: when the first rank has exited, the others get
# 120 s (rank 0 exports the generator and finishes W&B after the checkpoint) before srun ends them.
set +e
srun --ntasks-per-node="$RANKS_PER_NODE" --cpus-per-task="$CPUS_PER_RANK" --wait=120 bash -c '
  export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID
  exec "$@"
' rank "$PYTHON_ENV/bin/python" "$REPO/launch/train.py" --config "$CONFIG" --resume "$@"
status=$?
set -e

case $status in
  0) echo "$(date '+%F %T') schedule done" ;;
  138)
    echo "$(date '+%F %T') stopped by the time-limit warning (SIGUSR1) after a checkpoint: requeueing job $SLURM_JOB_ID" >&2
    # Slurm ends this script on the requeue; the next attempt resumes from the checkpoint.
    scontrol requeue "$SLURM_JOB_ID" && sleep 60
    echo "launch/slurm.sh: the requeue was refused; submit the same command again to continue" >&2
    ;;
  143) echo "$(date '+%F %T') stopped by SIGTERM after a checkpoint; submit the same command again to continue" >&2 ;;
esac
exit "$status"
