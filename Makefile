# Two commands for a fresh clone: `make demo` and `make test`.
# Both create the virtualenv in .venv/ on first use (and again when the lock changes), installing
# exactly the versions in locks/dev.txt (pip --require-hashes), then the project itself.
# `make test` also installs the system packages the suite uses (scripts/install_prereqs.sh);
# `make demo` installs the one it needs (espeak-ng, for the keyword-spotting set).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := locks/dev.txt
STAMP := $(VENV)/.installed

export FLWR_TELEMETRY_ENABLED := 0

.PHONY: demo test prereqs lint check-lock lock protos check-protos bench clean

# The lock check runs first and needs only the standard library: a dependency changed in
# pyproject.toml without `make lock` stops here, before anything is installed.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) scripts/lock.py --check
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) scripts/lock.py --verify-env dev
	touch $(STAMP)

# The demo's keyword-spotting set is synthesized with espeak-ng: the one system package it needs.
demo: $(STAMP)
	bash scripts/install_prereqs.sh espeak-ng
	$(VENV)/bin/edgefleet demo

prereqs:
	bash scripts/install_prereqs.sh

test: prereqs $(STAMP) lint
	$(PY) -m pytest

lint: check-lock $(STAMP) check-protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	PYTHONPATH=.:agent:coordinator $(VENV)/bin/lint-imports

check-lock:
	$(PYTHON) scripts/lock.py --check

# The one way to change dependency versions: edit pyproject.toml, then `make lock` (needs the
# package index) and commit locks/. pip-tools runs from its own virtualenv, not the project's.
lock:  # keeps current pins; `make lock UPGRADE=--upgrade` takes the newest allowed
	test -x .venv-lock/bin/pip-compile || ($(PYTHON) -m venv .venv-lock && \
		.venv-lock/bin/pip install --quiet --disable-pip-version-check 'pip-tools==7.6.2')
	.venv-lock/bin/python scripts/lock.py --pip-compile $(CURDIR)/.venv-lock/bin/pip-compile $(UPGRADE)

check-protos: $(STAMP)
	$(PY) scripts/gen_protos.py --check

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

bench: $(STAMP)
	$(PY) -m benchmarks.fleet_load

clean:
	rm -rf $(VENV) .venv-lock .edgefleet .pytest_cache .mypy_cache .ruff_cache
