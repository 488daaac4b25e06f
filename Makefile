# The two commands a newcomer needs are `make demo` and `make test`; both install first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-data
DEMO_RUN ?= runs/demo
PYTEST_ARGS ?=
# This machine's pip config names local mirrors that may be absent; hide only those warnings.
PIP_QUIET := { grep -v 'is neither a file nor a directory' || true; }

.PHONY: install test test-fast test-gpu lint demo clean gpu-kit gpu-check mutation

install: $(STAMP)

# Reinstall only when the project's dependency list changes, so a second `make install` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(PIP_QUIET); exit $${PIPESTATUS[0]}
	$(PY) -m pip install -q -e '.[ui,dev]' 2>&1 | $(PIP_QUIET); exit $${PIPESTATUS[0]}
	bash tests/install_browser.sh
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit-test loop: everything but the tests marked slow (whole training runs, several processes)
# and the browser test. `make test` stays the full suite CI runs.
test-fast: install
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

# Lint (ruff: pyflakes, pycodestyle, isort, bugbear, pyupgrade), format check, and types (mypy).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-gpu: install
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

# Mutation testing with cosmic-ray (tests/mutation.py; not part of CI: hours on 2 cores, hence nice).
# Each module's mutants meet only that module's fast tests; MUTATE="lab gan" picks modules.
MUTATE ?=
mutation: install
	nice -n 19 $(PY) tests/mutation.py $(MUTATE)

demo: install
	bash launch/demo.sh $(DEMO_DIR) $(DEMO_RUN)

# The device check (README "GPU check"); neither target installs anything. Both use .venv/bin/python
# when one exists, else python3 (the GPU machine has python3 with torch, no .venv and no network).
# gpu-kit runs here (needs pip and network): the cp312 wheels the GPU machine lacks, packed as
# .gpu-kit/part1…N (≤ 60 MiB each, git-ignored) + manifest.json; wheels are cached in .gpu-kit/wheels.
# gpu-check runs there; without CUDA it is a dry run.
GPU_PY = $(shell test -x $(PY) && echo $(PY) || echo python3)
OUT ?= runs/gpucheck
gpu-kit:
	$(GPU_PY) -m launch.gpucheck.kit build

gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PY) -m launch.gpucheck.check --out $(OUT)

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs .pytest_cache
