# `sudo make demo` and `sudo make test` set up everything they need (scripts/setup.sh is idempotent).
PY := .venv/bin/python

.PHONY: setup demo test unit e2e lint bench clean uninstall kernels kernels-probe vagrant-check

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m node_agent.cli demo

# Unit tests need no root; end-to-end tests use the kernel (BPF, netns, cgroups) and real servers.
test: setup lint
	$(PY) -m pytest -q -ra tests

unit: setup
	$(PY) -m pytest -q tests/unit

# lint-imports checks the import rule (README "Layout"; contracts in pyproject.toml); --no-cache: the
# graph of the package builds in a fraction of a second, and no cache directory is left in the tree.
lint: setup
	.venv/bin/ruff check node_agent tests $(wildcard bench)
	.venv/bin/mypy node_agent tests $(wildcard bench)
	.venv/bin/lint-imports --no-cache

bench: setup
	$(PY) bench/run.py

# Debian's 5.10, 6.1 and 6.12 kernels in VMs, one at a time (scripts/kernels.sh): the BPF probe and
# the kernel-relevant e2e tests (an hour or more where VMs run under software emulation);
# kernels-probe is the probe alone, as CI runs it (a few minutes).
kernels: setup
	bash scripts/kernels.sh full

kernels-probe: setup
	bash scripts/kernels.sh probe

# The Vagrant VM end to end from a copy of this checkout: box, vagrant up (make test, make demo
# inside), destroy (scripts/vagrant-box.sh).
vagrant-check:
	bash scripts/vagrant-box.sh check

uninstall: setup
	$(PY) -m node_agent.cli uninstall

clean:
	rm -rf .venv *.egg-info .pytest_cache .mypy_cache .ruff_cache
