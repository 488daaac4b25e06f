#!/usr/bin/env bash
# Slurm and munge for the real-cluster tests (tests/test_slurm.py starts munged, slurmctld and two slurmd
# on this machine). Debian's packages, the way tests/install_browser.sh installs Chromium: root and
# apt-get, and nothing to do when they are already there.
set -euo pipefail
PATH=$PATH:/usr/sbin
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_slurm: slurm-wlm and munge not found; install Debian's 'slurm-wlm' and 'munge' packages (as root) to run the Slurm tests" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
