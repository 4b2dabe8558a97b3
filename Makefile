# Two entry points, each doing its own set-up on a fresh machine:
#   make run   - the main job on embedded real data
#   make test  - ruff + pytest (what .ci/run calls)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared

.PHONY: setup run test lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

run: setup
	$(VENV)/bin/imis demo --shared $(SHARED) --out runs/demo
	@echo "the browser tool: $(VENV)/bin/imis serve $(SHARED)/data/btcv-demo/image  (then open http://127.0.0.1:8000/)"

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/pytest -q

format: setup
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
