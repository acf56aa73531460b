"""node_agent.resolve.cache: hits are valid packets with the query's ID/spelling/flags, aged TTLs, EDNS per client."""

from __future__ import annotations

import pytest
from dnslib import CNAME, EDNS0, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSQuestion, DNSRecord

from node_agent.dns import wire
from node_agent.dns.wire import Query
from node_agent.resolve.cache import Cache
from node_agent.settings import CacheSettings

V = "view-a"


def mkq(
    name: str = "web.default.svc.cluster.local",
    qtype: str = "A",
    *,
    qid: int = 0x1234,
    edns: bool = False,
    do: bool = False,
    rd: bool = True,
    cd: bool = False,
) -> Query:
    rec = DNSRecord(DNSHeader(id=qid, rd=int(rd), cd=int(cd)), q=DNSQuestion(name, getattr(QTYPE, qtype)))
    if edns or do:
        rec.add_ar(EDNS0(udp_len=4096, flags="do" if do else ""))
    q = wire.parse_query(bytes(rec.pack()))
    assert type(q) is Query
    return q


def answer(
    q: Query,
    ips: tuple[str, ...] = ("10.0.0.1",),
    ttl: int = 300,
    *,
    rcode: int = 0,
    soa: tuple[int, int] | None = None,  # (SOA TTL, SOA MINIMUM)
    opt: bool = True,
    tc: bool = False,
    qid: int = 0x9999,
    extra_ttl: int | None = None,
) -> bytes:
    rec = DNSRecord(DNSHeader(id=qid, qr=1, ra=1, rd=1, rcode=rcode, tc=int(tc)))
    rec.add_question(DNSQuestion(wire.name_to_text(q.qname) or ".", q.qtype, q.qclass))
    for ip in ips:
        rec.add_answer(RR(wire.name_to_text(q.qname), QTYPE.A, rdata=A(ip), ttl=ttl))
    if soa is not None:
        rec.add_auth(RR("cluster.local", QTYPE.SOA, rdata=SOA("ns.dns", "host.dns", (1, 2, 3, 4, soa[1])), ttl=soa[0]))
    if extra_ttl is not None:
        rec.add_ar(RR("ns.dns", QTYPE.A, rdata=A("10.0.0.53"), ttl=extra_ttl))
    if opt:
        rec.add_ar(EDNS0(udp_len=1232, flags="do" if q.do else ""))
    return bytes(rec.pack())


def ttls(pkt: bytes) -> list[int]:
    r = DNSRecord.parse(pkt)
    return [rr.ttl for rr in r.rr + r.auth + r.ar if rr.rtype != QTYPE.OPT]


def test_hit_patches_id_rd_and_question() -> None:
    c = Cache()
    q = mkq(qid=1)
    assert c.put(V, q, answer(q), 100.0)
    q2 = mkq("WeB.DeFault.svc.CLUSTER.local", qid=0xBEEF, rd=False)
    out = c.get(V, q2, 100.2)
    assert out is not None
    r = DNSRecord.parse(out)
    assert r.header.id == 0xBEEF and r.header.qr and not r.header.rd and r.header.ra
    assert out[12 : 12 + len(q2.qname)] == q2.qname  # 0x20 spelling echoed
    assert [str(a.rdata) for a in r.rr] == ["10.0.0.1"]
    assert r.ar == []  # no EDNS in the query: no OPT in the answer, though upstream sent one
    assert c.stats.hits == 1 and c.stats.misses == 0
    out2 = c.get(V, mkq(qid=7, rd=True), 100.3)
    assert out2 is not None and DNSRecord.parse(out2).header.rd


def test_cd_copied_and_cd_answers_not_stored() -> None:
    c = Cache()
    q = mkq()
    c.put(V, q, answer(q), 0.0)
    out = c.get(V, mkq(cd=True), 0.0)
    assert out is not None and DNSRecord.parse(out).header.cd
    qcd = mkq("other.example", cd=True)
    assert not c.put(V, qcd, answer(qcd), 0.0)


@pytest.mark.parametrize("do", [False, True])
def test_edns_on_off(do: bool) -> None:
    c = Cache()
    q = mkq(edns=True, do=do)
    c.put(V, q, answer(q), 0.0)
    with_edns = DNSRecord.parse(c.get(V, mkq(edns=True, do=do, qid=5), 1.0) or b"")
    assert len(with_edns.ar) == 1 and with_edns.ar[0].rtype == QTYPE.OPT
    assert with_edns.ar[0].rclass == 1232 and bool(with_edns.ar[0].edns_do) == do
    assert with_edns.header.ar == 1 and len(with_edns.rr) == 1
    if not do:
        plain = c.get(V, mkq(qid=6), 1.0)
        assert plain is not None
        p = DNSRecord.parse(plain)
        assert p.ar == [] and p.header.ar == 0 and len(p.rr) == 1
    else:
        assert c.get(V, mkq(qid=6), 1.0) is None  # DO is part of the key


def test_edns_with_other_additional_records() -> None:
    c = Cache()
    q = mkq(edns=True)
    c.put(V, q, answer(q, extra_ttl=900), 0.0)
    for query in (mkq(edns=True), mkq()):
        r = DNSRecord.parse(c.get(V, query, 2.0) or b"")
        kinds = [rr.rtype for rr in r.ar]
        assert QTYPE.A in kinds and kinds.count(QTYPE.OPT) == (1 if query.edns else 0)
        assert r.header.ar == len(kinds)


def test_ttl_aging_and_expiry() -> None:
    c = Cache()
    q = mkq()
    c.put(V, q, answer(q, ttl=300, extra_ttl=1000), 1000.0)
    assert ttls(c.get(V, q, 1000.9) or b"") == [300, 1000]
    assert ttls(c.get(V, q, 1010.2) or b"") == [290, 990]
    assert ttls(c.get(V, q, 1299.5) or b"") == [1, 701]
    assert c.get(V, q, 1300.0) is None
    assert c.stats.misses == 1 and len(c) == 1  # kept for serve-stale


def test_ttl_clamps() -> None:
    c = Cache(settings=CacheSettings(min_ttl=60, max_ttl=600))
    q = mkq()
    c.put(V, q, answer(q, ttl=5, extra_ttl=100000), 0.0)
    assert ttls(c.get(V, q, 0.0) or b"") == [60, 600]
    assert c.get(V, q, 59.9) is not None and c.get(V, q, 60.0) is None
    c0 = Cache()
    q0 = mkq("zero.example")
    assert not c0.put(V, q0, answer(q0, ttl=0), 0.0)
    assert not c0.put(V, q0, answer(q0, ttl=0x80000000), 0.0)  # MSB set reads as 0 (RFC 2181)


def test_negative_caching_by_soa_minimum() -> None:
    c = Cache()
    q = mkq("missing.default.svc.cluster.local")
    nx = answer(q, ips=(), rcode=RCODE.NXDOMAIN, soa=(3600, 60))
    assert c.put(V, q, nx, 0.0)
    r = DNSRecord.parse(c.get(V, q, 10.0) or b"")
    assert r.header.rcode == RCODE.NXDOMAIN and [a.ttl for a in r.auth] == [50]
    assert c.get(V, q, 59.0) is not None and c.get(V, q, 60.0) is None
    # SOA TTL lower than MINIMUM wins; neg_ttl caps
    q2 = mkq("nodata.default.svc.cluster.local", "AAAA")
    c.put(V, q2, answer(q2, ips=(), soa=(30, 900)), 0.0)
    assert c.get(V, q2, 29.0) is not None and c.get(V, q2, 30.0) is None
    q3 = mkq("long.default.svc.cluster.local", "AAAA")
    c.put(V, q3, answer(q3, ips=(), soa=(86400, 86400)), 0.0)
    assert c.get(V, q3, 299.0) is not None and c.get(V, q3, 300.0) is None
    # no SOA: not cached by default, neg_ttl_nosoa when configured
    q4 = mkq("nosoa.example")
    assert not c.put(V, q4, answer(q4, ips=(), rcode=RCODE.NXDOMAIN), 0.0)
    c5 = Cache(settings=CacheSettings(neg_ttl_nosoa=10))
    assert c5.put(V, q4, answer(q4, ips=(), rcode=RCODE.NXDOMAIN), 0.0)
    assert c5.get(V, q4, 9.5) is not None and c5.get(V, q4, 10.0) is None


def test_servfail_briefly_and_never_stale() -> None:
    c = Cache()
    q = mkq()
    assert c.put(V, q, answer(q, ips=(), rcode=RCODE.SERVFAIL), 0.0)
    assert DNSRecord.parse(c.get(V, q, 4.0) or b"").header.rcode == RCODE.SERVFAIL
    assert c.get(V, q, 5.0) is None
    assert c.get_stale(V, q, 6.0) is None
    assert not Cache(settings=CacheSettings(servfail_ttl=0)).put(V, q, answer(q, rcode=RCODE.SERVFAIL), 0.0)


def test_uncacheable() -> None:
    c = Cache()
    q = mkq()
    assert not c.put(V, q, answer(q, tc=True), 0.0)
    assert not c.put(V, q, answer(q, rcode=RCODE.REFUSED), 0.0)
    assert not c.put(V, q, answer(mkq("other.example")), 0.0)  # question mismatch
    assert not c.put(V, q, answer(mkq(qtype="AAAA")), 0.0)
    assert not c.put(V, q, b"\x00" * 11, 0.0)
    assert not c.put(V, q, answer(q)[:-3], 0.0)
    assert c.stats.uncacheable == 6 and len(c) == 0


def test_views_are_separate() -> None:
    c = Cache()
    q = mkq()
    c.put("a", q, answer(q, ips=("1.1.1.1",)), 0.0)
    c.put("b", q, answer(q, ips=("2.2.2.2",)), 0.0)
    assert str(DNSRecord.parse(c.get("a", q, 0.0) or b"").rr[0].rdata) == "1.1.1.1"
    assert str(DNSRecord.parse(c.get("b", q, 0.0) or b"").rr[0].rdata) == "2.2.2.2"
    assert c.get("c", q, 0.0) is None


def test_put_replaces() -> None:
    c = Cache()
    q = mkq()
    c.put(V, q, answer(q, ips=("1.1.1.1",)), 0.0)
    c.put(V, q, answer(q, ips=("2.2.2.2",)), 1.0)
    assert len(c) == 1 and str(DNSRecord.parse(c.get(V, q, 1.0) or b"").rr[0].rdata) == "2.2.2.2"
    assert c.stats.entries == 1


def test_lru_by_entries() -> None:
    c = Cache(max_entries=2)
    qa, qb, qc = mkq("a.example"), mkq("b.example"), mkq("c.example")
    c.put(V, qa, answer(qa), 0.0)
    c.put(V, qb, answer(qb), 0.0)
    assert c.get(V, qa, 1.0) is not None  # a is now recently used
    c.put(V, qc, answer(qc), 2.0)
    assert c.get(V, qb, 2.0) is None
    assert c.get(V, qa, 2.0) is not None and c.get(V, qc, 2.0) is not None
    assert c.stats.evictions == 1 and c.stats.entries == 2 and len(c) == 2


def test_lru_by_bytes() -> None:
    probe = Cache()
    q0 = mkq("n0.example")
    probe.put(V, q0, answer(q0), 0.0)
    one = probe.stats.bytes
    c = Cache(max_bytes=one * 3 + one // 2)
    for i in range(10):
        qi = mkq(f"n{i}.example")
        c.put(V, qi, answer(qi), float(i))
    assert len(c) == 3 and c.stats.bytes <= one * 3 + one // 2 and c.stats.evictions == 7
    assert [c.get(V, mkq(f"n{i}.example"), 10.0) is not None for i in range(10)] == [False] * 7 + [True] * 3


def test_flush_names() -> None:
    c = Cache()
    for view in ("a", "b"):
        for name in ("web.default.svc.cluster.local", "db.default.svc.cluster.local"):
            for t in ("A", "AAAA"):
                q = mkq(name, t)
                c.put(view, q, answer(q), 0.0)
        qd = mkq("web.default.svc.cluster.local", do=True)
        c.put(view, qd, answer(qd), 0.0)
    assert len(c) == 10
    assert c.flush_names({"WEB.default.svc.cluster.local."}) == 6
    assert len(c) == 4
    assert c.get("a", mkq("web.default.svc.cluster.local"), 0.0) is None
    assert c.get("b", mkq("db.default.svc.cluster.local", "AAAA"), 0.0) is not None
    assert c.flush_names({"nothing.here"}) == 0
    assert c.flush_names(["db.default.svc.cluster.local"]) == 4
    assert len(c) == 0 and c.stats.bytes == 0 and c._names == {}


def test_flush_wildcard_names_every_name_under_the_suffix() -> None:
    c = Cache()
    for name in ("a.example.com", "x.y.example.com", "example.com", "a.example.org", "badexample.com"):
        q = mkq(name)
        c.put(V, q, answer(q), 0.0)
    assert c.flush_names({"*.Example.com"}) == 2  # under it; not the apex, not a longer label
    assert c.get(V, mkq("example.com"), 0.0) is not None
    assert c.get(V, mkq("badexample.com"), 0.0) is not None
    assert c.get(V, mkq("x.y.example.com"), 0.0) is None


def test_serve_stale() -> None:
    c = Cache(settings=CacheSettings(max_stale=3600))
    q = mkq()
    c.put(V, q, answer(q, ttl=60), 0.0)
    fresh = c.get_stale(V, q, 10.0)
    assert fresh is not None and ttls(fresh) == [50] and c.stats.stale_served == 0
    assert c.get(V, q, 100.0) is None
    stale_edns = DNSRecord.parse(c.get_stale(V, mkq(qid=76, edns=True), 100.0) or b"")
    assert [a.ttl for a in stale_edns.rr] == [30] and stale_edns.ar[0].rtype == QTYPE.OPT
    assert c.get_stale(V, mkq(do=True), 100.0) is None  # DO=1 is another key
    stale = c.get_stale(V, mkq(qid=77), 100.0)
    assert stale is not None
    r = DNSRecord.parse(stale)
    assert r.header.id == 77 and [a.ttl for a in r.rr] == [30] and r.ar == [] and c.stats.stale_served == 2
    assert c.get_stale(V, q, 60.0 + 3601.0) is None and len(c) == 0


def test_prefetch_marked_once() -> None:
    c = Cache(settings=CacheSettings(prefetch_hits=3))
    q = mkq()
    c.put(V, q, answer(q, ttl=100), 0.0)
    for t in (1.0, 2.0, 3.0, 50.0):
        c.get(V, q, t)
    assert c.prefetch_queue == []
    assert c.get(V, q, 91.0) is not None
    assert len(c.prefetch_queue) == 1 and c.prefetch_queue[0][0] == V and c.prefetch_queue[0][1].key == q.key
    c.get(V, q, 92.0)
    c.get(V, q, 95.5)
    assert len(c.take_prefetches()) == 1 and c.prefetch_queue == [] and c.stats.prefetches == 1
    # refreshed entry can prefetch again
    c.put(V, q, answer(q, ttl=100), 96.0)
    for t in (97.0, 98.0, 190.0, 191.0):
        c.get(V, q, t)
    assert len(c.take_prefetches()) == 1


def test_unpopular_entries_are_not_prefetched() -> None:
    c = Cache(settings=CacheSettings(prefetch_hits=5))
    q = mkq()
    c.put(V, q, answer(q, ttl=10), 0.0)
    assert c.get(V, q, 9.5) is not None
    assert c.prefetch_queue == []
    for _ in range(4):
        c.get(V, q, 9.6)
    assert len(c.prefetch_queue) == 1


def test_truncating_a_hit() -> None:
    c = Cache()
    q = mkq()
    c.put(V, q, answer(q, ips=tuple(f"10.1.0.{i}" for i in range(60))), 0.0)
    out = c.get(V, q, 0.0)
    assert out is not None and len(out) > wire.udp_limit(q)
    t = wire.truncate(out, wire.udp_limit(q))
    r = DNSRecord.parse(t)
    assert r.header.tc and r.header.id == q.id and len(t) <= 512


def test_sweep_and_clear() -> None:
    c = Cache(settings=CacheSettings(max_stale=10))
    q1, q2 = mkq("one.example"), mkq("two.example")
    c.put(V, q1, answer(q1, ttl=5), 0.0)
    c.put(V, q2, answer(q2, ttl=500), 0.0)
    assert c.sweep(100.0) == 1 and len(c) == 1
    c.clear()
    assert len(c) == 0 and c.stats.bytes == 0 and c.stats.entries == 0


@pytest.mark.parametrize("edns", [False, True])
def test_render_formats_the_filling_query_without_counting_a_hit(edns: bool) -> None:
    c = Cache()
    q = mkq("Web.Default.svc.cluster.local", qid=0x4242, edns=edns)
    assert c.render(V, q) is None
    assert c.put(V, q, answer(q, qid=0x9999), 50.0)
    out = c.render(V, q)
    assert out is not None
    r = DNSRecord.parse(out)
    assert r.header.id == 0x4242 and out[12 : 12 + len(q.qname)] == q.qname
    assert [str(a.rdata) for a in r.rr] == ["10.0.0.1"]
    assert (len(r.ar) == 1) is edns  # OPT only for an EDNS client
    assert c.stats.hits == 0 and c.stats.misses == 0
    assert out == c.get(V, q, 50.0)  # byte for byte what a hit would send


# ---- rotation of address RRsets (CoreDNS loadbalance's round robin, on the hit path) -------------


def _order(pkt: bytes, rtype: int = QTYPE.A) -> list[str]:
    return [str(rr.rdata) for rr in DNSRecord.parse(pkt).rr if rr.rtype == rtype]


def test_address_records_rotate_per_answer_and_every_record_leads_once_per_cycle() -> None:
    c = Cache()
    q = mkq()
    ips = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
    assert c.put(V, q, answer(q, ips), now=0)
    orders = [_order(c.get(V, q, now=0.1) or b"") for _ in range(8)]
    rotations = [list(ips[k:] + ips[:k]) for k in range(len(ips))]
    for o in orders:
        assert o in rotations  # a rotation of the stored order: nothing lost, duplicated or reordered
    firsts = [o[0] for o in orders]
    assert sorted(firsts) == sorted(ips * 2), firsts  # each address leads exactly twice in 8 answers
    assert orders[0] != orders[1]


def test_rotation_survives_ttl_aging_and_edns() -> None:
    c = Cache()
    q = mkq(edns=True)
    assert c.put(V, q, answer(q, ("10.0.0.1", "10.0.0.2", "10.0.0.3"), ttl=100), now=0)
    a = c.get(V, q, now=5.5)
    b = c.get(V, q, now=7.5)
    assert a is not None and b is not None
    ra, rb = DNSRecord.parse(a), DNSRecord.parse(b)
    assert [rr.ttl for rr in ra.rr] == [95] * 3 and [rr.ttl for rr in rb.rr] == [93] * 3
    assert _order(a) != _order(b) and sorted(_order(a)) == sorted(_order(b))
    assert ra.ar[0].rtype == QTYPE.OPT and rb.ar[0].rtype == QTYPE.OPT


def test_only_the_address_run_rotates_behind_a_cname_and_authority_stays() -> None:
    c = Cache()
    q = mkq("www.example.org")
    rec = DNSRecord(DNSHeader(id=1, qr=1, ra=1, rd=1), q=DNSQuestion("www.example.org", QTYPE.A))
    rec.add_answer(RR("www.example.org", QTYPE.CNAME, rdata=CNAME("edge.example.net"), ttl=60))
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        rec.add_answer(RR("edge.example.net", QTYPE.A, rdata=A(ip), ttl=60))
    rec.add_auth(RR("example.net", QTYPE.SOA, rdata=SOA("ns.example.net", "h.example.net", (1, 2, 3, 4, 5)), ttl=60))
    assert c.put(V, q, bytes(rec.pack()), now=0)
    seen = set()
    for _ in range(3):
        r = DNSRecord.parse(c.get(V, q, now=0.5) or b"")
        assert r.rr[0].rtype == QTYPE.CNAME and str(r.rr[0].rdata) == "edge.example.net."
        assert all(str(rr.rname) == "edge.example.net." for rr in r.rr[1:])
        assert str(r.auth[0].rname) == "example.net."
        seen.add(tuple(str(rr.rdata) for rr in r.rr[1:]))
    assert len(seen) == 3


def test_ordered_answers_do_not_rotate() -> None:
    c = Cache()
    q = mkq()
    ips = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    assert c.put(V, q, answer(q, ips), now=0, rotate=False)
    assert {tuple(_order(c.get(V, q, now=0.1) or b"")) for _ in range(4)} == {ips}



# ---- what the kernel answer path sees (kernel/answerpath.py) ---------------------------------------


def test_take_hot_lists_entries_that_reached_two_hits_or_were_stored_once_each() -> None:
    c = Cache()
    q, r = mkq(), mkq("other.example.org")
    c.put(V, q, answer(q), 0.0)
    assert c.take_hot() == []  # untracked: nothing is kept for anyone
    c.track_hot = True
    c.put(V, r, answer(r), 0.0)
    c.get(V, q, 1.0)
    assert [(view, ck, raw.hits) for view, ck, raw in c.take_hot()] == [(V, r.ck, 0)]  # stored
    c.get(V, q, 2.0)  # the second hit
    c.get(V, q, 3.0)
    c.get(V, q, 4.0)
    hot = c.take_hot()
    assert [(view, ck) for view, ck, _ in hot] == [(V, q.ck)] and hot[0][2].hits == 4  # newest state
    assert c.take_hot() == []
    # Hits counted elsewhere (the exact-repeat memo's, folded) cross the mark too.
    c.get(V, r, 5.0)
    e = c.last
    assert e is not None
    c.add_hits(e, 3)
    assert [ck for _, ck, _ in c.take_hot()] == [r.ck] and c.stats.hits == 5 + 3
    # A replaced entry is listed again (the kernel's copy must follow it); a dropped one is not.
    c.put(V, q, answer(q, ("10.0.0.2",)), 6.0)
    c.flush_names(["other.example.org"])
    assert [ck for _, ck, _ in c.take_hot()] == [q.ck]


def test_kernel_hits_count_and_prefetch_a_name_only_the_kernel_answers() -> None:
    c = Cache(settings=CacheSettings(prefetch_hits=3))
    q = mkq(edns=True, do=True)
    c.put(V, q, answer(q, ttl=100), 0.0)
    assert c.kernel_hits(V, q.ck, 5, 50.0) is False  # popular, not in its window yet
    assert c.stats.hits == 5 and c.prefetch_queue == []
    assert c.kernel_hits(V, q.ck, 1, 91.0) is True  # the last 10 % of its TTL: refresh it
    view, pq = c.take_prefetches()[0]
    assert view == V and (pq.key, pq.qtype, pq.qclass, pq.do, pq.cd, pq.ck) == (q.key, 1, 1, True, False, q.ck)
    assert c.kernel_hits(V, q.ck, 1, 92.0) is False and c.stats.prefetches == 1  # once per entry
    assert c.kernel_hits(V, mkq("gone.example.org").ck, 2, 92.0) is False and c.stats.hits == 9


def test_every_flush_calls_the_hooks_first() -> None:
    c = Cache()
    q = mkq()
    c.put(V, q, answer(q), 0.0)
    seen: list[object] = []
    c.on_flush = lambda names: seen.append(("flush", names, len(c)))
    c.on_clear = lambda: seen.append(("clear", len(c)))
    c.flush_names(n for n in ["web.default.svc.cluster.local", "*.example.org"])
    c.put(V, q, answer(q), 0.0)
    c.clear()
    assert seen == [("flush", ["web.default.svc.cluster.local", "*.example.org"], 1), ("clear", 1)]


def test_take_hot_in_parts_never_returns_an_entry_flushed_meanwhile() -> None:
    c = Cache()
    c.track_hot = True
    names = [f"n{i}.example.org" for i in range(5)]
    for name in names:
        q = mkq(name)
        c.put(V, q, answer(q), 0.0)
    assert [wire.name_to_text(ck[:-5]) for _, ck, _ in c.take_hot(2)] == names[:2]
    c.flush_names([names[2]])  # a table change between two takes
    assert [wire.name_to_text(ck[:-5]) for _, ck, _ in c.take_hot(10)] == names[3:]
