#!/usr/bin/env bash
# Headless Chromium for the web-page test (tests/test_ui_browser.py). Debian's package, not a
# browser download by a test tool: this machine reaches package registries only.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: chromium not found; install Debian's 'chromium' package to run the browser test" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
