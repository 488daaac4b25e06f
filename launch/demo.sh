#!/usr/bin/env bash
# make demo: photos → shards → train (both phases) → colourise held-out photos → report.
#
#   bash launch/demo.sh [DEMO_DIR=demo-data] [RUN_DIR=runs/demo]
#
# Runs on the GPU when one is present, on the CPU otherwise (≤ 15 min on 2 cores). Idempotent: photos
# and shards are kept when present, and training resumes from its latest checkpoint (a finished run
# trains no further), so a second `make demo` only re-colourises and re-reports.
set -euo pipefail

DEMO_DIR=${1:-demo-data}
RUN_DIR=${2:-runs/demo}
BIN=${VENV:-.venv}/bin
PHOTOS=$DEMO_DIR/photos
HELDOUT=$DEMO_DIR/heldout
SHARDS=$DEMO_DIR/shards

# 1. The demo photos (crops of photographs shipped with scikit-image) and held-out test photos.
if [ -n "$(ls -A "$PHOTOS" 2>/dev/null)" ] && [ -n "$(ls -A "$HELDOUT" 2>/dev/null)" ]; then
  echo "demo photos: present in $PHOTOS"
else
  "$BIN/colorize-shards" demo-images "$PHOTOS" --heldout "$HELDOUT"
fi

# 2. Shards (train + val split, DALI indexes, manifest); the builder resumes/skips a finished build.
if [ -f "$SHARDS/manifest.json" ]; then
  echo "demo shards: present in $SHARDS"
else
  "$BIN/colorize-shards" build "$PHOTOS" "$SHARDS" --shard-samples 64 --val-fraction 0.1 --quiet
fi

# 3. Train: one GPU when there is one, else one CPU process.
if "$BIN/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  ACCEL=configs/accelerate/1gpu.yaml
else
  ACCEL=configs/accelerate/cpu1.yaml
fi
echo "training with $ACCEL (outputs in $RUN_DIR)"
"$BIN/colorize-train" --config_file "$ACCEL" --config configs/demo.yaml \
  run.name="$(basename "$RUN_DIR")" run.out_dir="$(dirname "$RUN_DIR")" data.shards="$SHARDS" --resume

# 4. Colourise the held-out photos with the exported generator (grey | colour side by side too).
# --size 256: predict at the resolution the demo trained at (full-resolution L is kept either way).
"$BIN/colorize" "$HELDOUT" --weights "$RUN_DIR/generator.safetensors" --side-by-side --size 256 \
  --out "$RUN_DIR/colorized"

# 5. Did it learn? NoGAN L1 first tenth vs last tenth, val ab-L1 vs the grey baseline.
"$BIN/python" launch/demo_report.py "$RUN_DIR"
