"""The `dns` fixture of the conformance suites (the rig itself is dnsrig.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import uvloop
from dnsrig import Rig, Zone, kube_dns

from node_agent.mesh.model import Record, Snapshot
from node_agent.mesh.table import NameTable
from node_agent.resolve.cache import Cache
from node_agent.resolve.resolver import Resolver
from node_agent.settings import TableSettings, UpstreamSettings
from node_agent.upstream.client import Upstream
from tests.support.fakedns import FakeDNS


@pytest.fixture
def dns() -> Iterator[Callable[..., Rig]]:
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    made: list[tuple[FakeDNS, Upstream]] = []

    def make(records: Iterable[Record], *, zone: Zone | None = None, synced: bool = True, **settings: Any) -> Rig:
        table = NameTable(TableSettings(**settings))
        table.replace(Snapshot("conformance", "Kubernetes", [r for r in records if r.cluster == "Kubernetes"]))
        for cluster in sorted({r.cluster for r in records} - {"Kubernetes"}):
            table.replace(Snapshot("conformance", cluster, [r for r in records if r.cluster == cluster]))
        table.synced = synced
        fake = FakeDNS(kube_dns(zone or {}), host=f"127.0.0.{random.randrange(10, 250)}")
        runner.run(fake.start())
        up = Upstream(UpstreamSettings(servers=(fake.addr,), probe_interval=0, timeout=1.0))
        runner.run(up.start())
        made.append((fake, up))
        return Rig(runner, table, Resolver(table, Cache(), up), fake)

    yield make
    for fake, up in made:
        runner.run(up.close())
        runner.run(fake.close())
    runner.close()
