# The two quick-start commands are `make demo` and `make test` (see README.md).
.PHONY: setup demo test lint
setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/ipsec-mesh demo

test: setup
	.venv/bin/python -m pytest -q

# Type checking: strict for the IKE core (configuration in pyproject.toml).
lint: setup
	.venv/bin/python -m mypy
