# `sudo make demo` and `sudo make test` set up everything they need (scripts/setup.sh is idempotent).
PY := .venv/bin/python

.PHONY: setup demo test unit e2e lint bench clean uninstall

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m node_agent.cli demo

# Unit tests need no root; end-to-end tests use the kernel (BPF, netns, cgroups) and real servers.
test: setup lint
	$(PY) -m pytest -q -ra tests

unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	.venv/bin/ruff check node_agent tests $(wildcard bench)
	.venv/bin/mypy node_agent

bench: setup
	$(PY) bench/run.py

uninstall: setup
	$(PY) -m node_agent.cli uninstall

clean:
	rm -rf .venv *.egg-info .pytest_cache .mypy_cache .ruff_cache
