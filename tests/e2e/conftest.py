"""Fixtures the end-to-end files share (the simulated node's own, `node` and `mesh`, come from
node_agent/testing/pytest_plugin.py, loaded by tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENTS = Path(__file__).parent / "clients"


@pytest.fixture(scope="session")
def gai(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/e2e/clients/gai.c linked statically against musl (scripts/setup.sh installs musl-tools):
    a getaddrinfo program with musl's stub resolver, whatever libc the node has."""
    cc = shutil.which("musl-gcc")
    if cc is None:
        if os.environ.get("CI"):
            pytest.fail("musl-gcc missing in CI: scripts/setup.sh installs musl-tools")
        pytest.skip("musl-gcc not installed (apt-get install musl-tools, or run scripts/setup.sh)")
    out = tmp_path_factory.mktemp("musl") / "gai"
    subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(out), str(CLIENTS / "gai.c")],
                   check=True, capture_output=True, text=True, timeout=60)
    return str(out)
