# hotluks — the two commands of the README are `make demo` and `make check`.
# Both install everything first (system packages from Debian + bookworm-backports,
# then a project venv in .venv), so they work on a fresh Debian 12 machine as root.

PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo check test unit lint bench clean

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/hotluks demo

check: setup lint test

test:
	$(PY) -m pytest $(PYTEST_ARGS)

unit:
	$(PY) -m pytest tests $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: setup
	$(PY) bench/bench_luks.py
	$(PY) bench/bench_attach.py

clean:
	rm -rf .venv .mypy_cache .pytest_cache build *.egg-info
