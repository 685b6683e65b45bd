# The two quick-start commands are `make demo` and `make test` (see README.md).
.PHONY: setup demo test test-fast lint
setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/ipsec-mesh demo

test: setup
	.venv/bin/python -m pytest -q

# The in-memory and loopback tiers (no namespaces, no charon, no VM): minutes, for the edit loop.
test-fast: setup
	.venv/bin/python -m pytest -q tests/unit tests/agent tests/operator tests/chart

# Lint (ruff: pyflakes, import order, bugbear) and types (mypy, strict for the IKE core);
# configuration in pyproject.toml. `.ci/run` runs this before the tests.
lint: setup
	.venv/bin/python -m ruff check operator sidecar tests bench scripts
	.venv/bin/python -m mypy
