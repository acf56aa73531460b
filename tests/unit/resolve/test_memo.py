"""The exact-repeat memo in front of the cache: same answers as the cache would give, counted right,
never outliving the cache entry, the second (TTL aging) or the pod behind the client address."""

from __future__ import annotations

import asyncio

from dnslib import QTYPE, DNSRecord

from node_agent.mesh.model import Change, Key, Pod, Record, Service, Snapshot
from node_agent.mesh.table import NameTable
from node_agent.resolve.cache import Cache
from node_agent.resolve.resolver import Resolver
from node_agent.settings import TableSettings, UpstreamSettings
from node_agent.upstream.client import Upstream

POD = "10.244.1.10"


def rig() -> tuple[Resolver, list[float]]:
    table = NameTable(TableSettings())
    table.synced = True
    table.replace(Snapshot("t", "Kubernetes", [Pod("a", "client", (POD,), uid="u1"),
                                               Service("a", "web", cluster_ips=("10.96.1.10",))]))
    now = [1000.2]
    # Port 9 on loopback: table answers only, nothing goes upstream.
    r = Resolver(table, Cache(), Upstream(UpstreamSettings(servers=(("127.0.0.1", 9),))), clock=lambda: now[0])
    return r, now


def raw(r: Resolver, qid: int, name: str = "web.a.svc.cluster.local", client: str = POD,
        qtype: str = "A") -> bytes | None:
    """The reply's octets, as the responder would send them over UDP."""
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    data = bytes(q.pack())
    return r.answer_fast(data, client, "udp") or asyncio.run(r.answer(data, client, "udp"))


def ask(r: Resolver, qid: int, name: str = "web.a.svc.cluster.local", client: str = POD) -> DNSRecord | None:
    out = raw(r, qid, name, client)
    return DNSRecord.parse(out) if out else None


def test_repeats_answered_with_their_own_id_and_counted() -> None:
    r, _ = rig()
    first = ask(r, 1)
    assert first is not None and r.cache.stats.misses == 1
    for qid in range(2, 12):
        rec = ask(r, qid)
        assert rec is not None and rec.header.id == qid
        assert [str(rr.rdata) for rr in rec.rr] == ["10.96.1.10"] and rec.rr[0].ttl == first.rr[0].ttl
    r.fold()
    assert r.cache.stats.hits == 10
    assert sum(r.stats.answers.values()) == 11


def test_ttl_ages_across_seconds() -> None:
    r, now = rig()
    ttl0 = ask(r, 1).rr[0].ttl  # type: ignore[union-attr]
    ask(r, 2)
    now[0] += 3
    assert ask(r, 3).rr[0].ttl == ttl0 - 3  # type: ignore[union-attr]


def test_a_table_change_is_seen_at_once() -> None:
    r, _ = rig()
    ask(r, 1)
    ask(r, 2)
    moved = Service("a", "web", cluster_ips=("10.96.9.9",))
    r.flush(r.table.apply([Change(Key.of(moved), moved)]))
    assert [str(rr.rdata) for rr in ask(r, 3).rr] == ["10.96.9.9"]  # type: ignore[union-attr]


def test_a_pod_gone_is_refused_at_once() -> None:
    r, _ = rig()
    ask(r, 1)
    ask(r, 2)
    gone = Pod("a", "client", (POD,), uid="u1")
    r.table.apply([Change(Key.of(gone), None)])
    r.forget_clients()  # what the agent does on every pod change
    rec = ask(r, 3)
    assert rec is not None and rec.header.rcode == 5  # REFUSED


def test_qtype_other_spelling_and_other_client_are_not_confused() -> None:
    r, _ = rig()
    ask(r, 1)
    ask(r, 2)
    rec = ask(r, 3, name="WEB.a.svc.cluster.local")
    assert str(rec.q.qname) == "WEB.a.svc.cluster.local."  # type: ignore[union-attr]
    q = DNSRecord.question("web.a.svc.cluster.local", "AAAA")
    out = r.answer_fast(bytes(q.pack()), POD, "udp") or asyncio.run(r.answer(bytes(q.pack()), POD, "udp"))
    assert out is not None and DNSRecord.parse(out).rr == [] and DNSRecord.parse(out).q.qtype == QTYPE.AAAA
    assert ask(r, 4, client="10.244.1.99").header.rcode == 5  # type: ignore[union-attr]


def test_a_reply_does_not_depend_on_the_spelling_that_filled_the_cache() -> None:
    """Names the reply shares with the question point at it, whoever's spelling filled the cache: a
    hit reads as the asker spelled it (as CoreDNS answers with the query's name), and the reply is
    as short (a name written out in another case would cost its length in every record)."""
    for name, qtype, answered in (("web.a.svc.cluster.local", "A", True), ("web.a.svc.cluster.local", "AAAA", False),
                                  ("nope.a.svc.cluster.local", "A", False)):
        asked = name.replace("a.svc", "A.sVc")
        replies = set()
        for filler in (name, name.upper()):
            r, _ = rig()
            raw(r, 7, filler, qtype=qtype)
            reply = raw(r, 7, asked, qtype=qtype)
            assert reply is not None
            replies.add(reply)
        assert len(replies) == 1, (name, qtype, [x.hex() for x in replies])
        rec = DNSRecord.parse(replies.pop())
        # An answer's owner is the question; NODATA's and NXDOMAIN's SOA is owned by the zone, a suffix.
        assert [str(rr.rname) for rr in rec.rr] == ([asked + "."] if answered else []), (name, qtype)
        assert [str(rr.rname) for rr in rec.auth] == ([] if answered else ["cluster.local."]), (name, qtype)


def test_multi_address_answers_rotate_for_exact_repeats_too() -> None:
    """The memo would replay one order for a second; entries whose address records rotate bypass it,
    so a client asking the same question again gets the next rotation (CoreDNS loadbalance)."""
    r, _ = rig()
    from node_agent.mesh.model import Endpoint, EndpointSlice

    eps = tuple(Endpoint((f"10.244.1.{i}",)) for i in range(20, 24))
    recs: list[Record] = [Service("a", "kafka", cluster_ips=("None",)), EndpointSlice("a", "kafka-x", "kafka", eps)]
    r.table.apply([Change(Key.of(x), x) for x in recs])
    orders = []
    for qid in range(1, 9):
        rec = ask(r, qid, "kafka.a.svc.cluster.local")
        assert rec is not None
        orders.append([str(rr.rdata) for rr in rec.rr])
    assert all(sorted(o) == sorted(a for e in eps for a in e.addresses) for o in orders)
    firsts = [o[0] for o in orders[1:5]]  # four hits in a row: each address leads once
    assert sorted(firsts) == sorted(a for e in eps for a in e.addresses), orders
    r.fold()
    assert r.cache.stats.hits == 7 and sum(r.stats.answers.values()) == 8


def test_a_full_memo_starts_again_without_losing_counts() -> None:
    r, _ = rig()
    names = [f"s{i}" for i in range(5)]
    r.table.apply([Change(Key.of(s), s) for s in (Service("a", n, cluster_ips=(f"10.96.2.{i}",))
                                                   for i, n in enumerate(names))])
    r.memo.limit = 2
    asked = 0
    for _ in range(4):
        for n in names:
            for _rep in range(3):
                asked += 1
                rec = ask(r, asked, f"{n}.a.svc.cluster.local")
                assert rec is not None and rec.header.id == asked and len(rec.rr) == 1
            assert len(r.memo) <= 2
    r.fold()
    assert sum(r.stats.answers.values()) == asked
    assert r.cache.stats.hits + r.cache.stats.misses == asked and r.cache.stats.misses == len(names)


def test_a_stale_line_is_counted_before_the_cache_sees_the_query() -> None:
    """The cache decides prefetch by an entry's hits: repeats the memo served must reach the entry
    before the next query goes to the cache."""
    r, now = rig()
    ask(r, 1)  # a miss: the table's answer goes into the cache
    ask(r, 2)  # a cache hit, remembered
    e = r.cache.last
    assert e is not None
    before = e.hits
    for qid in range(3, 7):
        ask(r, qid)  # 4 repeats, in the memo only
    assert e.hits == before
    now[0] += 1.0  # the next second: the line is stale
    ask(r, 7)
    assert e.hits == before + 4 + 1
