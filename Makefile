# The two quick-start commands are `make demo` and `make test` (see README.md).
.PHONY: setup demo test
setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/ipsec-mesh demo

test: setup
	.venv/bin/python -m pytest -q
