"""A search-path answer carries its target's records, so a change to the target must flush it."""

from __future__ import annotations

import asyncio

from dnslib import QTYPE, DNSRecord

from node_agent.mesh.model import Change, Key, Pod, Service, Snapshot
from node_agent.mesh.table import NameTable
from node_agent.resolve.cache import Cache
from node_agent.resolve.resolver import Resolver
from node_agent.settings import TableSettings, UpstreamSettings
from node_agent.upstream.client import Upstream

POD_IP = "10.244.1.10"


def ask(resolver: Resolver, name: str) -> list[str]:
    data = DNSRecord.question(name).pack()
    reply = resolver.answer_fast(data, POD_IP, "udp") or asyncio.run(resolver.answer(data, POD_IP, "udp"))
    assert reply is not None
    return [str(rr.rdata) for rr in DNSRecord.parse(reply).rr if rr.rtype == QTYPE.A]


def test_target_change_flushes_search_path_answers() -> None:
    table = NameTable(TableSettings())
    table.synced = True
    db = Service("b", "db", cluster_ips=("10.96.2.20",))
    table.replace(Snapshot("test", "Kubernetes", [Pod("a", "client", (POD_IP,), uid="u1"), db]))
    # Port 9 on loopback: nothing here may go upstream (table answers only).
    resolver = Resolver(table, Cache(), Upstream(UpstreamSettings(servers=(("127.0.0.1", 9),))))
    # A pod in namespace a, ndots:5: glibc asks db.b.a.svc.cluster.local first.
    assert ask(resolver, "db.b.a.svc.cluster.local") == ["10.96.2.20"]
    assert ask(resolver, "db.b.a.svc.cluster.local") == ["10.96.2.20"]
    assert resolver.cache.stats.hits == 1  # it was cached
    moved = Service("b", "db", cluster_ips=("10.96.2.99",))
    resolver.flush(table.apply([Change(Key.of(moved), moved)]))
    assert ask(resolver, "db.b.a.svc.cluster.local") == ["10.96.2.99"]
