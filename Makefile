# Entry points for users: `make demo` and `make test` (and `make lint`). Each sets up the
# environment first; the set-up is idempotent, so a second run installs nothing.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.davpt-seg-ready
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint demo clean-venv

# Always runs (idempotent: seconds when nothing is missing), so that a switch such as
# `MMCV_OPS=compiled make setup` takes effect on an environment that is already set up.
setup:
	VENV=$(VENV) bash tools/misc/setup_env.sh
	touch $(SETUP_STAMP)

# test, demo and lint re-run the set-up only when its inputs change, which keeps a second
# `make test` from spending even the seconds of its checks.
$(SETUP_STAMP): setup.py tools/misc/setup_env.sh tools/misc/setup_mmcv.sh
	VENV=$(VENV) bash tools/misc/setup_env.sh
	touch $@

test: $(SETUP_STAMP)
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

# Without the tests that run the tools in subprocesses (marked slow).
test-fast: $(SETUP_STAMP)
	$(PYTHON) -m pytest tests -m "not slow" $(PYTEST_ARGS)

lint: $(SETUP_STAMP)
	$(PYTHON) -m ruff check .

demo: $(SETUP_STAMP)
	$(PYTHON) tools/misc/demo.py

clean-venv:
	rm -rf $(VENV)
