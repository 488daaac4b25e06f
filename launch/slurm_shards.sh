#!/usr/bin/env bash
# A shard build split over a Slurm job array: array task K builds part K of N into one shared OUT.
#
#   sbatch --array=1-16 --cpus-per-task=32 --mem=32G launch/slurm_shards.sh SRC OUT --parts 16 [build options]
#   sbatch --array=3,7 --cpus-per-task=32 --mem=32G launch/slurm_shards.sh SRC OUT --parts 16 [build options]
#
# N is given (--parts) and K is the array index, so any subset of 1…N can run, or be rerun alone (the
# second line reruns parts 3 and 7 after they were lost), in any array job and with any step
# (--array=1-16:2). Every task plans the same global shuffle and split and writes only its own shards,
# so SRC must be readable and OUT writable by every node (a shared file system), and every task must get
# the same build options. The last part to finish checks every part and writes OUT/manifest.json;
# `colorize-shards merge OUT` does it by hand. A requeued or rerun task resumes: its finished shards are
# kept. Decode workers: SLURM_CPUS_PER_TASK (else all cores of the node). Give --mem: without it one
# task takes a whole node's memory. Submit from any directory: SRC and OUT are relative to it, and the
# repository (and its .venv, or PYTHON_ENV) is found from the path the script was submitted with.
#SBATCH --job-name=colorize-shards
#SBATCH --ntasks=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-shards-%A_%a.out
set -euo pipefail

USAGE="usage: sbatch --array=1-N [options] launch/slurm_shards.sh SRC OUT --parts N [colorize-shards build options]"
SRC=${1:?$USAGE}
OUT=${2:?$USAGE}
shift 2
[[ ${1:-} == --parts && ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "$USAGE" >&2; exit 2; }
N=$2
shift 2
K=${SLURM_ARRAY_TASK_ID:?launch/slurm_shards.sh runs as a Slurm job array: $USAGE}
if ((K < 1 || K > N)); then
  echo "launch/slurm_shards.sh: array index $K is outside the parts 1…$N; submit with --array=1-$N (or a subset)" >&2
  exit 2
fi

# Slurm runs a copy of this script from its spool directory: the repository is found from the path it
# was submitted with (scontrol's Command, relative to the submit directory; an array job lists one
# Command per task, all the same).
SCRIPT=$(scontrol show job "$SLURM_JOB_ID" | awk '/^ *Command=/ && !n++ { sub(/^ *Command=/, ""); print $1 }')
[[ $SCRIPT == /* ]] || SCRIPT=$SLURM_SUBMIT_DIR/$SCRIPT
REPO=$(cd "$(dirname "$SCRIPT")/.." && pwd)
PYTHON_ENV=${PYTHON_ENV:-$REPO/.venv}

echo "=== $(date '+%F %T') job ${SLURM_ARRAY_JOB_ID}_$K, attempt $((${SLURM_RESTART_COUNT:-0} + 1)), part $K/$N of $SRC → $OUT on $(hostname), ${SLURM_CPUS_PER_TASK:-all} cores ==="
exec "$PYTHON_ENV/bin/colorize-shards" build "$SRC" "$OUT" --part "$K/$N" \
  --workers "${SLURM_CPUS_PER_TASK:-$(nproc)}" --quiet "$@"
