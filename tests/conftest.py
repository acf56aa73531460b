"""Shared fixtures. End-to-end tests (tests/e2e) need root, BPF and cgroup v2; they skip with the
reason when those are missing, so `pytest tests/unit` works anywhere."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

# In CI the fuzz tests replay a fixed sequence of examples (plus the corpus), so a landing never hangs
# on a brand-new random find; developers' runs explore new examples every time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def kernel_ready() -> str | None:
    """None when end-to-end tests can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (BPF, netns, cgroups)"
    try:
        from node_agent.kernel.cgroups import cgroup2_mount

        cgroup2_mount()
    except Exception as e:
        return str(e)
    for tool in ("ip", "dnsmasq", "dig", "getent", "bpftool"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} not installed (run scripts/setup.sh)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = kernel_ready()
    for item in items:
        if "tests/e2e" in str(item.fspath) or item.get_closest_marker("root"):
            item.add_marker(pytest.mark.root)
            if why and not os.environ.get("CI"):
                item.add_marker(pytest.mark.skip(reason=why))
