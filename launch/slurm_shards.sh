#!/usr/bin/env bash
# A shard build split over a SLURM job array: array task K of N builds part K/N into one shared OUT.
#
#   sbatch --array=1-16 launch/slurm_shards.sh /data/ILSVRC2012_img_train.tar /shared/imagenet-shards [build options]
#
# Every task plans the same global shuffle and split (a pure function of the source listing and the
# options, whatever N) and writes only its own shards, so SRC must be readable and OUT writable by
# every node (a shared file system), and every task must get the same build options. The last task
# to finish checks every part and writes OUT/manifest.json; if tasks were lost, rerun them (a requeued
# or resubmitted task resumes: its finished shards are kept) or run `colorize-shards merge OUT` once
# they have all finished. Any array range works (1-16, 0-15): K counts from the range's first index.
#SBATCH --job-name=colorize-shards
#SBATCH --array=1-8
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --requeue
#SBATCH --output=slurm-shards-%A_%a.out
set -euo pipefail

SRC=${1:?usage: sbatch --array=1-N launch/slurm_shards.sh SRC OUT [colorize-shards build options]}
OUT=${2:?usage: sbatch --array=1-N launch/slurm_shards.sh SRC OUT [colorize-shards build options]}
shift 2
PYTHON_ENV=${PYTHON_ENV:-.venv}

K=$(( SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN + 1 ))
N=$SLURM_ARRAY_TASK_COUNT
echo "part $K/$N of $SRC → $OUT on $(hostname), ${SLURM_CPUS_PER_TASK:-?} cores" >&2
exec "$PYTHON_ENV/bin/colorize-shards" build "$SRC" "$OUT" --part "$K/$N" \
  --workers "${SLURM_CPUS_PER_TASK:-$(nproc)}" --quiet "$@"
