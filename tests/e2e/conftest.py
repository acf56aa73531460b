from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import resources

import pytest

from node_agent.simnode import SimNode

MESH = str(resources.files("node_agent") / "data" / "demo-mesh.yaml")


@pytest.fixture
def node() -> Iterator[SimNode]:
    with SimNode.create(pods=[("client", "a"), ("other", "b"), ("legacy", "a")]) as n:
        yield n
    assert not os.path.exists(n.cgroup), "the simulated node left its cgroup behind"


@pytest.fixture
def mesh() -> str:
    return MESH
