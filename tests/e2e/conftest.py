from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from node_agent.testing import DEMO_MESH
from node_agent.testing.simnode import SimNode

MESH = DEMO_MESH


@pytest.fixture
def node() -> Iterator[SimNode]:
    with SimNode.create(pods=[("client", "a"), ("other", "b"), ("legacy", "a")]) as n:
        yield n
    assert not os.path.exists(n.cgroup), "the simulated node left its cgroup behind"


@pytest.fixture
def mesh() -> str:
    return MESH
