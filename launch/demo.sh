#!/usr/bin/env bash
# make demo: build the models and print their summary (grows into the full demo as training lands).
set -euo pipefail
.venv/bin/python -m launch.summary
