# Set-up: `make demo` runs the embedded default end to end; `make test` runs the tests.
# Both install into .venv first when needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export TF_CPP_MIN_LOG_LEVEL ?= 2
# glibc malloc on transparent huge pages: less kernel time for XLA's per-step CPU buffers (adaptation/host_env.py).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: install test lint demo bench

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: install
	$(PY) -m adaptation.demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q tests

# Benchmarks (DESIGN.md §5): prints a table, writes bench.json. BENCH_ARGS: e.g. --gpu, --parts matmul,train.
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check adaptation tasks tests
