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

.PHONY: install test test-gpu demo bench clean

install: $(STAMP)

# Reinstall only when the project's dependency list changes, so a second `make install` is instant.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(PIP_QUIET); exit $${PIPESTATUS[0]}
	$(PY) -m pip install -q -e '.[ui,dev]' 2>&1 | $(PIP_QUIET); exit $${PIPESTATUS[0]}
	bash launch/install_browser.sh
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-gpu: install
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

demo: install
	bash launch/demo.sh $(DEMO_DIR) $(DEMO_RUN)

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs .pytest_cache
