# gearqueue: the two commands a new user types are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast lint bench bench-quick clean

install:  ## set up everything for development (idempotent)
	./install.sh --dev

demo: install  ## a real projection through the queue, printed
	$(PY) scripts/demo.py

test: install  ## the whole suite: real broker, real R, real systemd (its run time is printed)
	$(VENV)/bin/ruff check lib listeners tests bench scripts
	$(VENV)/bin/python -m mypy  # lib and listeners: [tool.mypy] in pyproject.toml
	time $(VENV)/bin/python -m pytest -q --durations=15 tests
	# The consumer and client tests again, on the PostgreSQL job-state store (the
	# state-store suite runs on both backends in the line above already).
	time GEAR_TEST_STATE_BACKEND=postgresql $(VENV)/bin/python -m pytest -q \
		tests/test_echo_queue.py tests/test_call.py tests/test_in_process.py

test-fast: install  ## the fast tier only: no broker, R or systemd (tests not marked slow)
	$(VENV)/bin/ruff check lib listeners tests bench scripts
	time $(VENV)/bin/python -m pytest -q --durations=15 -m "not slow" tests

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
