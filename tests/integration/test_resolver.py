"""Part 7, upstream faults, in process: the agent's own pieces (NameTable, Cache, Upstream, Resolver,
Responder) wired as the agent wires them, the responder on 127.0.0.1, and tiny fake upstreams on
127.0.0.x random ports that die, go silent, crawl, or send garbage.

Clients are this node's "pods" 127.0.0.2 / 127.0.0.3 (namespace a, ndots 5) and the node (127.0.0.1).
The resolver gets a clock with an offset, so expiring entries costs no waiting.
Every figure is printed (pytest -s).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvloop
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from node_agent.mesh.model import Pod, Record, Service, Snapshot
from node_agent.mesh.table import NameTable
from node_agent.resolve.cache import Cache
from node_agent.resolve.resolver import Resolver
from node_agent.serve.responder import Responder
from node_agent.settings import CacheSettings, ListenSettings, ResolverSettings, TableSettings, UpstreamSettings
from node_agent.testing.pace import python_pace
from node_agent.upstream.client import Upstream
from tests.support.fakedns import FakeDNS, Reply
from tests.support.netutil import free_port

POD_A, POD_B, NODE = "127.0.0.2", "127.0.0.3", "127.0.0.1"

Handler = Callable[[DNSRecord, bool], Reply]


# ------------------------------------------------------------------------------------ fake upstream


def FakeUpstream(handler: Handler,  # noqa: N802 - reads like the class it makes
                 delay: Callable[[DNSRecord], float] = lambda r: 0.0) -> FakeDNS:
    """tests/support/fakedns.py's server on a random 127.0.0.x, with a (request, over_tcp) handler."""
    return FakeDNS(lambda req, raw, tcp, peer: handler(req, tcp), delay, host=f"127.0.0.{random.randrange(10, 250)}")


def reply_a(req: DNSRecord, *ips: str, ttl: int = 10, tc: bool = False) -> bytes:
    rep = req.reply()
    rep.header.tc = int(tc)
    for ip in ips:
        rep.add_answer(RR(req.q.qname, QTYPE.A, rdata=A(ip), ttl=ttl))
    return rep.pack()


def a_for_all(ip: str = "192.0.2.1", ttl: int = 10) -> Handler:
    return lambda req, tcp: reply_a(req, ip, ttl=ttl)


# ------------------------------------------------------------------------------------- the agent


@dataclass
class Rig:
    table: NameTable
    cache: Cache
    upstream: Upstream
    resolver: Resolver
    responder: Responder
    port: int
    offset: list[float] = field(default_factory=lambda: [0.0])

    def advance(self, seconds: float) -> None:
        self.offset[0] += seconds

    def drained(self) -> bool:
        return (self.upstream.stats.inflight == 0 and not self.responder.pending
                and not self.resolver._prefetching and not self.upstream._pending)

    async def close(self) -> None:
        await self.responder.close()
        await self.upstream.close()




async def make_rig(servers: list[tuple[str, int]], *, upstream: dict[str, Any] | None = None,
                   cache: dict[str, Any] | None = None, resolver: dict[str, Any] | None = None,
                   listen: dict[str, Any] | None = None) -> Rig:
    table = NameTable(TableSettings(node_ips=(NODE,)))
    table.replace(Snapshot("test", "Kubernetes", [
        Pod("a", "client", (POD_A,), uid="u-a"),
        Pod("a", "other", (POD_B,), uid="u-b"),
        Service("a", "web", cluster_ips=("10.96.1.10",)),
    ]))
    table.synced = True
    c = Cache(settings=CacheSettings(**(cache or {})))
    up = Upstream(UpstreamSettings(servers=tuple(servers), **{"probe_interval": 0, **(upstream or {})}))
    offset = [0.0]
    res = Resolver(table, c, up, ResolverSettings(**(resolver or {})),
                   clock=lambda: time.monotonic() + offset[0])
    port = free_port()
    resp = Responder(ListenSettings(address=NODE, port=port, **(listen or {})), res)
    await up.start()
    await resp.start()
    return Rig(table, c, up, res, resp, port, offset)


def run(fn: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    """Under uvloop, as the agent runs."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(asyncio.wait_for(fn(), timeout))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ the clients


def query(name: str, qtype: str = "A", edns: int | None = None) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        from dnslib import EDNS0

        q.add_ar(EDNS0(udp_len=edns))
    return q


async def ask_udp(port: int, packet: bytes, src: str = POD_A, timeout: float = 5.0) -> tuple[DNSRecord, float]:
    """One query over UDP from `src`; (reply, seconds)."""
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        s.bind((src, 0))
        s.connect((NODE, port))
        t0 = time.perf_counter()
        await loop.sock_sendall(s, packet)
        while True:
            data = await asyncio.wait_for(loop.sock_recv(s, 65535), timeout)
            if data[:2] == packet[:2]:
                return DNSRecord.parse(data), time.perf_counter() - t0
    finally:
        s.close()


async def ask_tcp(port: int, packet: bytes, src: str = POD_A, timeout: float = 5.0) -> DNSRecord:
    reader, writer = await asyncio.open_connection(NODE, port, local_addr=(src, 0))
    try:
        writer.write(struct.pack("!H", len(packet)) + packet)
        (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), timeout))
        return DNSRecord.parse(await asyncio.wait_for(reader.readexactly(n), timeout))
    finally:
        writer.close()


def ips(rec: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in rec.rr if rr.rtype == QTYPE.A]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


# ------------------------------------------------------------------------------------------ tests


def test_upstreams_dead_stale_for_cached_servfail_fast_for_others_nothing_piles_up() -> None:
    """Every upstream dead (ports closed, ICMP unreachable, like a kube-dns whose pods are gone):
    expired cached names are answered stale with TTL 30 (RFC 8767), also through the server-side
    search path; other names get SERVFAIL at once, not after timeout x attempts; no state piles up."""

    async def body() -> None:
        ups = [await FakeUpstream(a_for_all("192.0.2.1", ttl=10)).start() for _ in range(2)]
        # A long timeout: a failure that waited for it (10 s) stays far above the fast-fail bound
        # below even where that bound grows with a slow machine's pace.
        rig = await make_rig([u.addr for u in ups], upstream={"timeout": 5.0, "attempts": 2})
        try:
            warm = ["ext.example.", "Mixed.Case.example.", "example.org.a.svc.cluster.local."]
            for name in warm:
                rec, _ = await ask_udp(rig.port, query(name).pack())
                assert rec.header.rcode == RCODE.NOERROR and "192.0.2.1" in ips(rec), (name, rec)
            for u in ups:
                await u.close()
            rig.advance(120)  # past every TTL (10 upstream, 30 table)
            for name in warm:
                rec, dt = await ask_udp(rig.port, query(name).pack())
                assert rec.header.rcode == RCODE.NOERROR and "192.0.2.1" in ips(rec), (name, rec)
                assert {rr.ttl for rr in rec.rr} == {30}, rec  # RFC 8767 stale TTL
                print(f"stale served for {name} in {dt * 1000:.2f} ms, TTLs {sorted({rr.ttl for rr in rec.rr})}")
            assert rig.resolver.stats.stale_answers >= 2 and rig.cache.stats.stale_served >= 3

            # Uncached names: SERVFAIL, fast. One at a time first, then 300 distinct ones at once.
            seq = []
            for i in range(50):
                rec, dt = await ask_udp(rig.port, query(f"q{i}.nowhere.example.").pack())
                assert rec.header.rcode == RCODE.SERVFAIL, rec
                seq.append(dt)
            print(f"dead upstreams: uncached -> SERVFAIL in p50 {pct(seq, .5) * 1000:.2f} ms, "
                  f"p99 {pct(seq, .99) * 1000:.2f} ms (one at a time)")
            # ICMP unreachable fails an attempt at once: two attempts cost two loopback round trips.
            # 50 ms is 200x under the 10 s (timeout x attempts) a timeout-based failure would take.
            assert pct(seq, 0.99) < 0.05
            times: list[float] = []
            t0 = time.perf_counter()
            results = await asyncio.gather(*[ask_udp(rig.port, query(f"n{i}.nowhere.example.").pack())
                                             for i in range(300)])
            wall = time.perf_counter() - t0
            for rec, dt in results:
                assert rec.header.rcode == RCODE.SERVFAIL, rec
                times.append(dt)
            bound = 5.0 * 2  # timeout x attempts
            print(f"dead upstreams: 300 uncached -> SERVFAIL, p50 {pct(times, .5) * 1000:.1f} ms, "
                  f"max {max(times) * 1000:.1f} ms, all in {wall * 1000:.0f} ms (timeout x attempts = {bound} s)")
            # 300 at once queue behind each other on one event loop (the test's clients share it):
            # 1 s on the reference machine, as many times more as Python is slower here, and still
            # under the 10 s a timeout-based failure would take.
            assert max(times) < 1.0 * python_pace(), max(times)
            await asyncio.sleep(0.05)
            assert rig.drained(), (rig.upstream.stats.inflight, rig.responder.pending)
            assert rig.upstream.stats.inflight == 0
            st = rig.upstream.stats.servers
            kinds = {n: {k: v for k, v in s.failures.items() if v} for n, s in st.items()}
            print(f"upstream failures by kind: {kinds}")
        finally:
            await rig.close()

    run(body)


def test_upstreams_silent_stale_and_servfail_within_the_bound_and_inflight_is_capped() -> None:
    """Every upstream a black hole (no ICMP, no answer): nothing can be faster than the configured
    timeout x attempts for a name we have never seen, but that bound must hold, stale must still be
    served, concurrent misses must not grow beyond max_inflight, and all of it drains to zero."""

    async def body() -> None:
        silent = [False]

        def handler(req: DNSRecord, tcp: bool) -> Reply:
            return None if silent[0] else reply_a(req, "192.0.2.7", ttl=5)

        ups = [await FakeUpstream(handler).start() for _ in range(2)]
        timeout, attempts = 0.3, 2
        bound = timeout * attempts
        rig = await make_rig([u.addr for u in ups], upstream={"timeout": timeout, "attempts": attempts,
                                                              "max_inflight": 64})
        try:
            rec, _ = await ask_udp(rig.port, query("cached.example.").pack())
            assert ips(rec) == ["192.0.2.7"]
            silent[0] = True
            rig.advance(60)
            rec, dt = await ask_udp(rig.port, query("cached.example.").pack())
            assert ips(rec) == ["192.0.2.7"] and {rr.ttl for rr in rec.rr} == {30}, rec
            print(f"silent upstreams: stale answer after {dt * 1000:.0f} ms (timeout x attempts = {bound:.1f} s)")
            # The bound plus 0.3 s of scheduling on the reference machine, as many times more as
            # Python is slower here (the clients and the resolver share one event loop).
            assert dt < bound + 0.3 * python_pace()

            # 300 distinct misses at once: max_inflight (64) bounds what waits; the rest SERVFAIL at once.
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, rig.upstream.stats.inflight)
                    await asyncio.sleep(0.005)

            w = asyncio.ensure_future(watch())
            t0 = time.perf_counter()
            results = await asyncio.gather(*[ask_udp(rig.port, query(f"s{i}.void.example.").pack())
                                             for i in range(300)])
            wall = time.perf_counter() - t0
            w.cancel()
            times = [dt for rec, dt in results]
            assert all(rec.header.rcode == RCODE.SERVFAIL for rec, _ in results)
            overload = rig.upstream.stats.overload
            print(f"silent upstreams: 300 uncached -> SERVFAIL, p50 {pct(times, .5) * 1000:.0f} ms, "
                  f"max {max(times) * 1000:.0f} ms, wall {wall:.2f} s; in flight peaked at {peak} "
                  f"(max_inflight 64), {overload} refused by the bound at once")
            assert peak <= 64 and overload >= 300 - 64
            assert max(times) < bound + 0.3 * python_pace()  # never more than the bound (+ scheduling)
            await asyncio.sleep(0.05)
            assert rig.drained() and rig.upstream.stats.inflight == 0
            for s in rig.upstream.stats.servers.values():
                assert s.inflight == 0
        finally:
            await rig.close()
            for u in ups:
                await u.close()

    run(body)


def test_slow_upstream_does_not_slow_cache_hits() -> None:
    """Upstream takes 2 s for some names: while 100 such misses hang, cache and table hits from two
    pods and the node are answered in well under a few ms."""

    async def body() -> None:
        up = await FakeUpstream(a_for_all("192.0.2.9", ttl=300),
                                delay=lambda r: 2.0 if str(r.q.qname).lower().startswith("slow") else 0.0).start()
        rig = await make_rig([up.addr], upstream={"timeout": 5.0})
        try:
            hits = ["fast.example.", "web.a.svc.cluster.local.", "web."]  # upstream, table, short name
            for name in hits:
                for src in (POD_A, POD_B, NODE):
                    await ask_udp(rig.port, query(name).pack(), src=src)
            misses = [asyncio.ensure_future(ask_udp(rig.port, query(f"slow{i}.example.").pack(), timeout=6))
                      for i in range(100)]
            await asyncio.sleep(0.1)
            assert rig.upstream.stats.inflight == 100
            lat: list[float] = []
            t_end = time.monotonic() + 1.5
            n = 0
            while time.monotonic() < t_end and n < 3000:
                for src in (POD_A, POD_B, NODE):
                    rec, dt = await ask_udp(rig.port, query(hits[n % 3]).pack(), src=src)
                    assert rec.header.rcode == RCODE.NOERROR and ips(rec), rec
                    lat.append(dt)
                n += 1
            hung = sum(1 for m in misses if not m.done())
            print(f"slow upstream (2 s): {len(lat)} hits while {hung} misses hung: p50 "
                  f"{pct(lat, .5) * 1000:.3f} ms, p99 {pct(lat, .99) * 1000:.3f} ms, max {max(lat) * 1000:.2f} ms")
            assert hung == 100
            # Milliseconds on the reference machine, as many times more as Python is slower here
            # (a VM under software emulation: 3-6x); a hit waiting on the upstream would take 2 s.
            pace = python_pace()
            assert pct(lat, 0.99) < 0.005 * pace and pct(lat, 0.5) < 0.002 * pace
            done = await asyncio.gather(*misses)
            assert all(ips(rec) == ["192.0.2.9"] for rec, _ in done)
            slow_t = [dt for _, dt in done]
            print(f"slow misses answered in {min(slow_t):.2f}-{max(slow_t):.2f} s")
            assert min(slow_t) >= 1.9
            await asyncio.sleep(0.05)
            assert rig.drained()
        finally:
            await rig.close()
            await up.close()

    run(body)


def test_garbage_wrong_ids_and_oversize_answers_from_upstream() -> None:
    """An upstream that first sends garbage, a wrong ID, a wrong question and a non-response, then the
    answer: the answer is taken. An upstream that truncates over UDP: TC -> TCP upstream, and a client
    over UDP gets TC then the whole answer over TCP. An answer larger than the EDNS size we advertised
    (a broken upstream): taken, and fitted to each client."""

    async def body() -> None:
        big = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(120)]  # ~1.9 KB answer

        def handler(req: DNSRecord, tcp: bool) -> Reply:
            name = str(req.q.qname).lower()
            good = reply_a(req, "192.0.2.33")
            if name.startswith("noisy"):
                wrong_id = bytearray(good)
                wrong_id[0] ^= 0xFF
                other_q = reply_a(DNSRecord.question("evil.example.", "A"), "6.6.6.6")
                other_q = good[:2] + other_q[2:]  # right ID, wrong question
                not_resp = bytearray(good)
                not_resp[2] &= 0x7F  # QR=0
                return [b"\x00", b"garbage" * 30, bytes(wrong_id), other_q, bytes(not_resp), good]
            if name.startswith("trunc"):
                return reply_a(req, *big) if tcp else reply_a(req, tc=True)
            if name.startswith("oversize"):
                return reply_a(req, *big)  # over UDP, beyond the 1232 we advertised
            return good

        up = await FakeUpstream(handler).start()
        rig = await make_rig([up.addr], upstream={"timeout": 1.0})
        try:
            rec, dt = await ask_udp(rig.port, query("noisy.example.").pack())
            srv = rig.upstream.stats.servers[f"{up.host}:{up.port}"]
            print(f"noisy upstream: answer taken in {dt * 1000:.1f} ms after {srv.ignored_replies} bad datagrams")
            assert ips(rec) == ["192.0.2.33"] and srv.ignored_replies >= 4
            assert dt < 1.0  # before the upstream timeout (1 s): not a timeout-and-retry

            for name in ("trunc.example.", "oversize.example."):
                rec, _ = await ask_udp(rig.port, query(name).pack())  # no EDNS: 512 bytes max
                # as many whole records as fit in 512 octets (wire.truncate), TC set
                assert rec.header.tc == 1 and 0 < len(rec.rr) < len(big) and set(ips(rec)) <= set(big), rec
                rec, _ = await ask_udp(rig.port, query(name, edns=4096).pack())  # capped at 1232
                assert rec.header.tc == 1, rec
                full = await ask_tcp(rig.port, query(name).pack())
                assert full.header.tc == 0 and sorted(ips(full)) == sorted(big), name
            print(f"TC->TCP upstream: {up.tcp_count} TCP queries; clients got TC over UDP and all "
                  f"{len(big)} records over TCP; truncated answers {rig.resolver.stats.truncated}")
            assert up.tcp_count == 1 and srv.failures["truncated_retry"] >= 0
            await asyncio.sleep(0.05)
            assert rig.drained()
        finally:
            await rig.close()
            await up.close()

    run(body)


def test_search_path_answer_follows_a_service_that_appears() -> None:
    """A pod of namespace a resolving "web2.b" (ndots 5) first asks web2.b.a.svc.cluster.local. While
    no Service web2 exists in b, the table answers CNAME web2.b. (an external name) + upstream's
    NXDOMAIN, and the cache keeps it. Once the Service is created, the agent flushes the names the
    table reports changed (web2.b.svc.cluster.local, b.svc.cluster.local, ...): the search-path
    answer must now lead to the Service, as the direct name does. (Aliases, commit 1f44e25, cover
    the opposite direction: a target that is a table name and changes.)"""

    async def body() -> None:
        def nx(req: DNSRecord, tcp: bool) -> Reply:
            rep = req.reply()
            rep.header.rcode = RCODE.NXDOMAIN
            from dnslib import SOA

            rep.add_auth(RR(".", QTYPE.SOA, rdata=SOA("a.root.", "n.root.", (1, 2, 3, 4, 60)), ttl=60))
            return rep.pack()

        up = await FakeUpstream(nx).start()
        rig = await make_rig([up.addr])
        try:
            from node_agent.mesh.model import Change, Key

            rec, _ = await ask_udp(rig.port, query("web2.b.a.svc.cluster.local.").pack())
            assert rec.header.rcode == RCODE.NXDOMAIN, rec
            svc = Service("b", "web2", cluster_ips=("10.96.5.5",))
            rig.resolver.flush(rig.table.apply([Change(Key.of(svc), svc)]))
            rec, _ = await ask_udp(rig.port, query("web2.b.svc.cluster.local.").pack())
            assert ips(rec) == ["10.96.5.5"], rec  # the direct name: right at once
            rec, _ = await ask_udp(rig.port, query("web2.b.a.svc.cluster.local.").pack())
            print(f"search-path answer after Service web2.b appeared: {RCODE.get(rec.header.rcode)} "
                  f"{ips(rec)} (want NOERROR ['10.96.5.5'])")
            assert ips(rec) == ["10.96.5.5"], rec
        finally:
            await rig.close()
            await up.close()

    run(body)


def test_slow_upstream_serves_stale_after_the_client_timeout_then_refreshes() -> None:
    """RFC 8767: an expired name whose upstream has become slow (3 s) is answered stale after
    stale_answer_timeout (here 0.5 s) instead of making the pod wait; the slow answer, when it lands,
    refreshes the cache."""

    async def body() -> None:
        slow = [False]
        answer_ip = ["192.0.2.1"]

        def handler(req: DNSRecord, tcp: bool) -> Reply:
            return reply_a(req, answer_ip[0], ttl=10)

        up = await FakeUpstream(handler, delay=lambda r: 3.0 if slow[0] else 0.0).start()
        rig = await make_rig([up.addr], upstream={"timeout": 5.0}, resolver={"stale_answer_timeout": 0.5})
        try:
            rec, _ = await ask_udp(rig.port, query("stale.example.").pack())
            assert ips(rec) == ["192.0.2.1"]
            rig.advance(20)  # expired
            slow[0], answer_ip[0] = True, "192.0.2.2"
            rec, dt = await ask_udp(rig.port, query("stale.example.").pack())
            print(f"slow upstream: stale answer after {dt * 1000:.0f} ms")
            # stale after 0.5 s; the slow upstream's own answer would take 3 s
            assert ips(rec) == ["192.0.2.1"] and rec.rr[0].ttl == 30
            assert 0.45 <= dt < min(0.5 + 0.5 * python_pace(), 2.5)
            await asyncio.sleep(3.0)  # the upstream answer lands and refreshes the cache
            rec, dt = await ask_udp(rig.port, query("stale.example.").pack())
            assert ips(rec) == ["192.0.2.2"] and dt < 0.05 * python_pace()  # a cache hit, not the 3 s upstream
        finally:
            await rig.close()
            await up.close()

    run(body)


def test_prefetch_refreshes_table_answers_from_the_table_across_ttls() -> None:
    """A popular table answer is prefetched near the end of its TTL. The refresh must be what a miss
    would produce now: a mesh name from the table, never kube-dns's view of it (which here answers
    every name with 192.0.2.1, as a public DNS would for istio.io). Four TTLs, every kind of table
    answer, each a cache hit after the first (the prefetch really happened)."""
    from node_agent.mesh.model import Change, Endpoint, EndpointSlice, Key, ServiceEntry

    async def body() -> None:
        # The external half's TTL outlives the test: a search-path answer lives as long as the shorter
        # of its CNAME (30 s) and the external records it carries.
        up = await FakeUpstream(a_for_all("192.0.2.1", ttl=600)).start()
        rig = await make_rig([up.addr])
        try:
            records: list[Record] = [
                ServiceEntry("a", "istio", ("istio.io",), uid="se-1", resolution="DNS"),
                Service("a", "kafka", cluster_ips=("None",)),
                EndpointSlice("a", "kafka-x", "kafka", (Endpoint(("10.244.1.21",), hostname="kafka-0"),
                                                         Endpoint(("10.244.1.22",), hostname="kafka-1"))),
            ]
            rig.table.apply([Change(Key.of(r), r) for r in records])
            vip = rig.table.vip_of("istio.io", "a")
            assert vip
            want: dict[str, tuple[int, list[str]]] = {  # name -> (rcode, addresses)
                "istio.io.": (RCODE.NOERROR, [a for a in vip if ":" not in a]),
                "web.a.svc.cluster.local.": (RCODE.NOERROR, ["10.96.1.10"]),
                "kafka.a.svc.cluster.local.": (RCODE.NOERROR, ["10.244.1.21", "10.244.1.22"]),
                "kafka-1.kafka.a.svc.cluster.local.": (RCODE.NOERROR, ["10.244.1.22"]),
                "example.org.a.svc.cluster.local.": (RCODE.NOERROR, ["192.0.2.1"]),  # search path -> CNAME
                "nope.a.svc.cluster.local.": (RCODE.NXDOMAIN, []),
            }

            async def check() -> None:
                for name, (rcode, addrs) in want.items():
                    rec, _ = await ask_udp(rig.port, query(name).pack())
                    assert (rec.header.rcode, sorted(ips(rec))) == (rcode, addrs), (name, rec)
                    if name.startswith("example.org"):
                        assert rec.rr[0].rtype == QTYPE.CNAME and str(rec.rr[0].rdata) == "example.org.", rec

            async def drain() -> None:
                for _ in range(200):
                    if rig.drained():
                        return
                    await asyncio.sleep(0.01)
                raise AssertionError("prefetches did not finish")

            for _ in range(3):
                await check()  # three hits make each entry popular
            for cycle in range(4):
                rig.advance(28 if cycle == 0 else 25)  # inside the last 10 % of each entry's 30 s
                await check()  # these hits queue the prefetches
                await drain()
                rig.advance(3)  # past the expiry of the entries that were prefetched
                misses = rig.cache.stats.misses
                for _ in range(3):
                    await check()
                assert rig.cache.stats.misses == misses, f"cycle {cycle}: refreshed entries must hit"
            assert rig.cache.stats.prefetches >= 4 * len(want)
            asked = {str(r.q.qname).lower() for r in up.udp}
            assert asked == {"example.org."}, f"only the search path's external half goes upstream: {asked}"
        finally:
            await rig.close()
            await up.close()

    run(body)


def test_relayed_answers_are_sized_compressed_and_truncated_to_the_records_that_fit() -> None:
    """kube-dns may relay an answer without name compression: 64 A records of a long name are 2,900
    octets as sent and about 1,100 compressed. An EDNS client (1,232) gets all 64, no TC; a client
    without EDNS (512) gets the records that fit with TC, as kube-dns would give it (musl never
    retries over TCP, so an empty TC answer would leave it with nothing)."""
    name = "big.relay.example.org."
    addrs = [f"10.9.{i // 250}.{i % 250 + 1}" for i in range(64)]

    def uncompressed(req: DNSRecord, tcp: bool) -> Reply:
        # The question as asked (0x20 spelling: the upstream client checks it); owners uncompressed.
        qname = b"".join(bytes([len(lb)]) + lb for lb in req.q.qname.label) + b"\x00"
        head = struct.pack("!HHHHHH", req.header.id, 0x8180, 1, len(addrs), 0, 0)
        rrs = b"".join(qname + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(a) for a in addrs)
        return head + qname + struct.pack("!HH", 1, 1) + rrs

    async def body() -> None:
        up = await FakeUpstream(uncompressed).start()
        rig = await make_rig([up.addr])
        try:
            rec, _ = await ask_udp(rig.port, query(name, edns=1232).pack())
            assert sorted(ips(rec)) == sorted(addrs) and not rec.header.tc, rec.header
            rec, _ = await ask_udp(rig.port, query(name).pack())
            fit = (512 - 12 - (len(name) + 1 + 4)) // 16  # owner names compress to a 2-octet pointer
            assert rec.header.tc == 1 and len(ips(rec)) == fit, (len(ips(rec)), fit)
            assert set(ips(rec)) <= set(addrs)
            assert rig.resolver.stats.truncated == 1  # the EDNS answer fitted once compressed
        finally:
            await rig.close()
            await up.close()

    run(body)
