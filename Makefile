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
# setuptools' "Editable installation" notice (our flat layout of six top-level packages gets its import
# finder, not a path entry) says nothing to act on; pip re-emits it as a warning, filtered by message.
EDITABLE_QUIET := PYTHONWARNINGS='ignore:Editable installation'

.PHONY: install test test-fast test-gpu lint demo clean gpu-kit gpu-check gpu-rehearse mutation

# Slurm and munge for the real-cluster tests (root + apt-get; instant when already installed).
install: $(STAMP)
	@bash tests/install_slurm.sh

# Reinstall only when the project's dependency list changes, so a second `make install` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(PIP_QUIET); exit $${PIPESTATUS[0]}
	$(EDITABLE_QUIET) $(PY) -m pip install -q -e '.[ui,dev]' 2>&1 | $(PIP_QUIET); exit $${PIPESTATUS[0]}
	bash tests/install_browser.sh
	touch $(STAMP)

# Two workers (pytest-xdist): most slow tests wait on child processes, servers and signals, so two
# run side by side on 2 cores. A file's tests stay on one worker (its module fixtures — the Slurm
# cluster, the S3 server — start once). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

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

# Mutation testing with cosmic-ray (tests/mutation.py, docs/mutation.md): not part of CI, minutes to tens of
# minutes per module on 2 cores, hence nice.
# Each module's mutants meet only that module's fast tests; MUTATE="lab gan" picks modules.
MUTATE ?=
mutation: install
	nice -n 19 $(PY) tests/mutation.py $(MUTATE)

demo: install
	bash launch/demo.sh $(DEMO_DIR) $(DEMO_RUN)

# The GPU check (docs/gpu-check.md); none of these installs anything. They use .venv/bin/python when
# one exists, else python3. gpu-kit runs here (pip and network): the cp312 wheels the air-gapped GPU
# node lacks, packed as .gpu-kit/part1-3 (git-ignored; wheels cached in .gpu-kit/wheels), the code
# stamp, each device call's bytes (fails over 60 MiB) and the three calls to make. On the node each
# call runs `python3 -m launch.gpucheck.check N --out $OUT` itself (the node has no make); gpu-check
# runs the same three commands one after the other where the GPU and DALI are at hand. gpu-rehearse
# runs the three calls on a CPU stand-in of the node (also a slow test).
GPU_PY = $(shell test -x $(PY) && echo $(PY) || echo python3)
OUT ?= runs/gpucheck
gpu-kit:
	$(GPU_PY) -m launch.gpucheck.plan

gpu-check:
	for n in 1 2 3; do PYTHONUNBUFFERED=1 $(GPU_PY) -m launch.gpucheck.check $$n --out $(OUT)/$$n || exit; done

gpu-rehearse:
	$(GPU_PY) -m launch.gpucheck.rehearse

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs .pytest_cache
