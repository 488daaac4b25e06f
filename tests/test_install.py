"""`make install` is quiet: setuptools' "Editable installation" notice does not reach the terminal.

The Makefile's own install line is read with `make -n`; its environment settings are applied to the
same call pip makes to build the editable wheel (setuptools' `build_editable` hook, through pip's hook
caller, which re-emits the backend's warnings in the calling process), without installing anything.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from _train_helpers import REPO

BUILD_EDITABLE = """
import sys, tempfile
from pip._vendor.pyproject_hooks import BuildBackendHookCaller
with tempfile.TemporaryDirectory() as out:
    print(BuildBackendHookCaller(sys.argv[1], "setuptools.build_meta").build_editable(out))
"""


def install_line_env() -> dict[str, str]:
    """The `NAME=value` settings in front of the Makefile's `pip install -e` line."""
    dry = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "install"], cwd=REPO, capture_output=True, text=True, check=True
    )
    line = next(line for line in dry.stdout.splitlines() if "pip install" in line and " -e " in line)
    settings = {}
    for token in shlex.split(line):
        if "=" not in token or token.startswith("-"):
            break
        name, value = token.split("=", 1)
        settings[name] = value
    return settings


def test_the_editable_build_prints_no_setuptools_notice():
    env = {**os.environ, **install_line_env()}
    result = subprocess.run(
        [sys.executable, "-c", BUILD_EDITABLE, str(REPO)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith(".whl")
    assert "Editable installation" not in result.stdout + result.stderr
