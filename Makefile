# Two commands for a fresh machine with Python 3.11: `make run` and `make test`.
# `make run` installs the runtime only; `make test` and `make lint` add the dev tools.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev lint clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
		{ echo "fluxgate needs Python >= 3.11 (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# runtime only (what `fluxgate serve` needs)
$(BIN)/fluxgate: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

# runtime + test and lint tools
# ...and the worker extra (torch==2.13.0, diffusers) for the worker tests: a machine without
# that torch build still gets the dev tools (the worker tests then skip and say why; CI
# sets FLUXGATE_REQUIRE_WORKER_TESTS=1 so that they fail instead)
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e '.[dev,worker]' || \
		echo "warning: the worker extra could not be installed; worker tests will skip" >&2
	@touch $(BIN)/fluxgate $@

install: $(BIN)/fluxgate

install-dev: $(VENV)/.dev-installed

run: install
	$(BIN)/fluxgate serve $(ARGS)

# the tests mostly wait on servers and upstreams: 3 workers even on 2 cores (TEST_WORKERS=0: one);
# loadgroup keeps each `xdist_group` (the worker tests) in one process
TEST_WORKERS ?= 3

test: install-dev
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

lint: install-dev
	$(BIN)/ruff check gateway adapters billing worker tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy gateway adapters billing worker

clean:
	rm -rf $(VENV)
