"""Shared fixtures. End-to-end tests (tests/e2e) need root, BPF and cgroup v2; they skip with the
reason when those are missing, so `pytest tests/unit` works anywhere."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# The simulated node's fixtures (`node`, `mesh`) for tests/e2e. Loaded here, not in tests/e2e/conftest.py:
# pytest refuses `pytest_plugins` in a conftest below the top when it collects the whole suite
# (`pytest tests`), since a plugin is global once loaded.
pytest_plugins = ["node_agent.testing.pytest_plugin"]

# In CI the fuzz tests replay a fixed sequence of examples (plus the corpus), so a landing never hangs
# on a brand-new random find; developers' runs explore new examples every time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Imported here, once pytest_plugins has loaded it (with its asserts rewritten).
    from node_agent.testing.pace import slowdown
    from node_agent.testing.pytest_plugin import kernel_ready

    why = kernel_ready()
    # The per-test timeout (pyproject's, for tests that set none) holds on the reference machine;
    # an end-to-end test is mostly agent starts, so where those are slower (a VM under software
    # emulation) it grows with them, as the tests' own bounds do.
    default = float(config.getini("timeout") or 0)
    slow: float | None = None
    for item in items:
        if "tests/e2e" in str(item.fspath) or item.get_closest_marker("root"):
            item.add_marker(pytest.mark.root)
            if why and not os.environ.get("CI"):
                item.add_marker(pytest.mark.skip(reason=why))
            elif default and item.get_closest_marker("timeout") is None:
                slow = slowdown() if slow is None else slow
                if slow > 1:
                    item.add_marker(pytest.mark.timeout(default * slow))
