# hotluks — the two commands of the README are `make demo` and `make check`.
# Both install everything first (system packages from Debian + bookworm-backports,
# then a project venv in .venv), so they work on a fresh Debian 12 machine as root.

PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo check test unit unit-oldest lint bench clean

# The oldest dependency versions pyproject.toml allows (what Debian 12 ships).
OLDEST := cryptography==38.0.4 lxml==4.9.2 numpy==1.24.2 qemu.qmp==0.0.3

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/hotluks demo

check: setup lint unit-oldest test

test:
	$(PY) -m pytest $(PYTEST_ARGS)

unit:
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The unit suite against the oldest allowed versions, in its own venv (.venv-oldest).
unit-oldest:
	test -x .venv-oldest/bin/python || python3 -m venv .venv-oldest
	.venv-oldest/bin/pip install -q $(OLDEST) "setuptools==66.1.1" wheel pytest pytest-mock hypothesis "jsonschema>=4.18" libvirt-python
	.venv-oldest/bin/pip install -q --no-deps --no-build-isolation -e .
	# two tests derive argon2 keys, which need cryptography >= 44 (argon2i: >= 47); with 38.0.4 such
	# keyslots are refused (tests/core/test_packaging_unit.py checks that refusal)
	.venv-oldest/bin/python -m pytest tests -q -p no:cacheprovider \
	    --deselect tests/luks/test_kdf.py::test_kdf_dispatch_and_parameters \
	    --deselect tests/luks/test_cli_parts.py::test_detached_luks2_header_summary $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: setup
	$(PY) bench/bench_luks.py
	$(PY) bench/bench_attach.py

clean:
	rm -rf .venv .venv-oldest .mypy_cache .pytest_cache build *.egg-info
