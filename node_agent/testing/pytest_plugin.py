"""pytest fixtures for tests that run the agent on a simulated node (opt-in, as pyroute2's fixtures are).

Load it from the suite's top-level conftest.py (pytest accepts `pytest_plugins` nowhere else)::

    pytest_plugins = ["node_agent.testing.pytest_plugin"]

Fixtures:

- ``mesh``: the path of the demo mesh (a static source of Services, ServiceEntries, pods).
- ``node``: a fresh SimNode (node netns, kube-dns as dnsmasq, pods ``client`` and ``legacy`` in
  namespace ``a`` and ``other`` in ``b``), torn down after the test, which fails if the node's cgroup
  is left behind. Start the agent on it with ``node.start_agent(mesh)``.

``node`` needs root, cgroup v2 and the tools scripts/setup.sh installs; where they are missing it
skips with the reason (``kernel_ready()``), except under CI, where a missing piece is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from node_agent.testing import DEMO_MESH
from node_agent.testing.simnode import SimNode

NODE_PODS = (("client", "a"), ("other", "b"), ("legacy", "a"))  # (pod, namespace) of the `node` fixture
TOOLS = ("ip", "dnsmasq", "dig", "getent", "bpftool")


def kernel_ready() -> str | None:
    """None when a simulated node can be built here, else why not."""
    if os.geteuid() != 0:
        return "needs root (BPF, netns, cgroups)"
    try:
        from node_agent.kernel.cgroups import cgroup2_mount

        cgroup2_mount()
    except Exception as e:
        return str(e)
    for tool in TOOLS:
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} not installed (run scripts/setup.sh)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root, kernel BPF and network namespaces")


@pytest.fixture
def mesh() -> str:
    """The demo mesh's static source file."""
    return DEMO_MESH


@pytest.fixture
def node() -> Iterator[SimNode]:
    """A simulated node with three pods; removed after the test."""
    why = kernel_ready()
    if why and not os.environ.get("CI"):
        pytest.skip(why)
    with SimNode.create(pods=list(NODE_PODS)) as n:
        yield n
    assert not os.path.exists(n.cgroup), "the simulated node left its cgroup behind"
