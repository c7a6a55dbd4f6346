# `make demo` and `make test` each create or refresh .venv, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= build/demo

.PHONY: venv demo test lint bench clean system-deps

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
	$(VENV)/bin/fxpga report $(OUT)/digits.fxq -o $(OUT)/report.html
	$(VENV)/bin/fxpga compile $(OUT)/digits.fxq --lanes 8 --check 2 -o $(OUT)/engine
	$(VENV)/bin/fxpga simulate $(OUT)/digits.fxq --lanes 8 --samples 100

# Icarus Verilog (simulation tests) and Chromium (the report's rendering test) are Debian
# packages: installed here when running as root, else their tests skip
system-deps:
	@missing=""; command -v iverilog >/dev/null 2>&1 || missing="iverilog"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq $$missing; \
	  else echo "note: missing$$missing (apt-get install$$missing); their tests skip"; fi; fi

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check fxpga tests bench
	$(PY) -m pytest -n auto --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check fxpga tests bench
	$(VENV)/bin/ruff format --check fxpga tests bench

bench: $(STAMP)
	$(PY) bench/quant.py
	$(PY) bench/fit.py
	$(PY) bench/mlperf.py
	$(PY) bench/engine.py
	$(PY) bench/sim.py
	$(PY) bench/boards.py

clean:
	rm -rf build .pytest_cache
