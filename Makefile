# `make demo` and `make test` each create or refresh .venv, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= build/demo

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(OUT)
	$(VENV)/bin/fxpga quantize digits-cnn --data digits -o $(OUT)/digits.fxq
	$(VENV)/bin/fxpga eval $(OUT)/digits.fxq --data digits
	$(VENV)/bin/fxpga compile $(OUT)/digits.fxq --lanes 8 --check 2 -o $(OUT)/engine

test: $(STAMP)
	$(VENV)/bin/ruff check fxpga tests bench
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check fxpga tests bench
	$(VENV)/bin/ruff format --check fxpga tests bench

bench: $(STAMP)
	$(PY) bench/quant.py
	$(PY) bench/engine.py

clean:
	rm -rf build .pytest_cache
