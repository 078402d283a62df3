# gearqueue: the two commands a new user types are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench bench-quick clean

install:  ## set up everything for development (idempotent)
	./install.sh --dev

demo: install  ## a real projection through the queue, printed
	$(PY) scripts/demo.py

test: install  ## the whole suite: real broker, real R, real systemd
	$(VENV)/bin/ruff check lib listeners tests bench scripts
	$(VENV)/bin/python -m mypy  # lib and listeners: [tool.mypy] in pyproject.toml
	$(VENV)/bin/python -m pytest -q tests

bench: install  ## side-by-side benchmarks; figures in bench/results/
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) bench/run.py

bench-quick: install  ## the same in a few minutes, fewer repetitions
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) bench/run.py --quick

lint:
	$(VENV)/bin/ruff check lib listeners tests bench scripts

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
