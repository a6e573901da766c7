# Two entry points for users: `make demo` and `make test`. Both set up the environment first;
# the set-up is idempotent, so a second run installs nothing and starts at once.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.davpt-seg-ready
PYTEST_ARGS ?=

.PHONY: setup test demo clean-venv

setup: $(SETUP_STAMP)

# Re-run the set-up only when its inputs change (it is idempotent anyway, but this keeps a
# second `make test` from spending even the seconds of its checks).
$(SETUP_STAMP): setup.py tools/setup_env.sh
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

test: $(SETUP_STAMP)
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

demo: $(SETUP_STAMP)
	$(PYTHON) tools/demo.py

clean-venv:
	rm -rf $(VENV)
