# Two commands for a fresh clone: `make demo` and `make test`.
# Both create the virtualenv in .venv/ on first use (and again when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= coordinator,compress,federated,agent-onnx,agent-torch,agent-mcu,docker,dev
STAMP := $(VENV)/.installed

export FLWR_TELEMETRY_ENABLED := 0

.PHONY: demo test lint protos check-protos bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgefleet demo

test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP) check-protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

check-protos: $(STAMP)
	$(PY) scripts/gen_protos.py --check

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

bench: $(STAMP)
	$(PY) -m benchmarks.fleet_load

clean:
	rm -rf $(VENV) .edgefleet .pytest_cache .mypy_cache .ruff_cache
