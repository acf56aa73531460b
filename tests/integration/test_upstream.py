"""Upstream client against tiny in-process fake DNS servers (UDP + TCP on 127.0.0.1, random ports).

Each test body is a coroutine run under both the stock asyncio loop and uvloop (the agent's loop), so
loop-specific behaviour such as ICMP errors reaching add_reader callbacks is covered on both.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from dnslib import QTYPE, RCODE, RR, TXT, A, DNSRecord

from node_agent.settings import UpstreamSettings
from node_agent.upstream.client import Upstream, UpstreamError
from node_agent.upstream.stats import LATENCY_BUCKETS
from tests.support.fakedns import FakeDNS, Handler, Reply


def answer(req: DNSRecord, *ips: str, rcode: int = 0, tc: bool = False) -> bytes:
    rep = req.reply()
    rep.header.rcode = rcode
    rep.header.tc = int(tc)
    for ip in ips:
        rep.add_answer(RR(req.q.qname, QTYPE.A, rdata=A(ip), ttl=30))
    return rep.pack()


def a_handler(*ips: str) -> Handler:
    return lambda req, raw, tcp, peer: answer(req, *ips)


def silent(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
    return None


def ips_of(wire: bytes) -> list[str]:
    return [str(rr.rdata) for rr in DNSRecord.parse(wire).rr]


def closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(fn: Callable[[], Awaitable[Any]]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(fn(), 10))  # type: ignore[arg-type]

    return runner


def settings(*servers: tuple[str, int], **kw: Any) -> UpstreamSettings:
    return UpstreamSettings(servers=tuple(servers), **kw)


# ------------------------------------------------------------------------------------------- basics


def test_answer_query_format_and_case_restored(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(a_handler("10.0.0.1")).start()
        up = Upstream(settings(srv.addr))
        name = "Some-Long-Service-Name.abcdefghijklmnop.Example.Com."
        wire = await up.resolve(name, QTYPE.A, do=True, cd=True)
        rep = DNSRecord.parse(wire)
        assert ips_of(wire) == ["10.0.0.1"]
        assert str(rep.q.qname) == name  # 0x20 undone: exactly the caller's spelling
        q = srv.udp[0]
        assert str(q.q.qname).lower() == name.lower()
        assert str(q.q.qname) != name  # randomized (all 40-odd letters unchanged: p = 2**-40)
        assert q.header.rd == 1 and q.header.cd == 1
        opt = [r for r in q.ar if r.rtype == QTYPE.OPT]
        assert len(opt) == 1 and opt[0].rclass == 1232 and opt[0].ttl & 0x8000  # DO bit
        wire = await up.resolve("plain.example", QTYPE.A)
        opt = [r for r in srv.udp[1].ar if r.rtype == QTYPE.OPT]
        assert len(opt) == 1 and not opt[0].ttl & 0x8000 and srv.udp[1].header.cd == 0
        st = up.stats.servers[f"127.0.0.1:{srv.port}"]
        assert st.requests == 2 and st.latency_count == 2 and st.inflight == 0
        assert up.stats.inflight == 0
        await up.close()
        await srv.close()

    run(body)


def test_socket_mark_does_not_break_queries(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(a_handler("10.0.0.2")).start()
        up = Upstream(settings(srv.addr, socket_mark=0x4E41))  # EPERM when unprivileged: ignored
        assert ips_of(await up.resolve("m.example", QTYPE.A)) == ["10.0.0.2"]
        await srv.close()

    run(body)


# ------------------------------------------------------------------------------------------ failover


def test_failover_dead_port_is_fast(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(a_handler("10.0.0.3")).start()
        dead = ("127.0.0.1", closed_port())
        up = Upstream(settings(dead, srv.addr, timeout=2.0))
        t0 = time.monotonic()
        assert ips_of(await up.resolve("f.example", QTYPE.A)) == ["10.0.0.3"]
        assert time.monotonic() - t0 < 0.5  # ICMP port unreachable, not the 2 s timeout
        assert up.stats.servers[f"127.0.0.1:{dead[1]}"].failures["network"] == 1
        await srv.close()

    run(body)


def test_failover_silent_server_times_out(run: Any) -> None:
    async def body() -> None:
        mute = await FakeDNS(silent).start()
        srv = await FakeDNS(a_handler("10.0.0.4")).start()
        up = Upstream(settings(mute.addr, srv.addr, timeout=0.15))
        t0 = time.monotonic()
        assert ips_of(await up.resolve("t.example", QTYPE.A)) == ["10.0.0.4"]
        assert time.monotonic() - t0 >= 0.15
        assert up.stats.servers[f"127.0.0.1:{mute.port}"].failures["timeout"] == 1
        # Single silent server: every attempt times out -> UpstreamError("timeout").
        up2 = Upstream(settings(mute.addr, timeout=0.05, attempts=2))
        with pytest.raises(UpstreamError) as ei:
            await up2.resolve("t.example", QTYPE.A)
        assert ei.value.reason == "timeout" and ei.value.response is None
        assert len(mute.udp) == 3
        await mute.close()
        await srv.close()

    run(body)


def test_servfail_and_refused_fail_over(run: Any) -> None:
    async def body() -> None:
        sf = await FakeDNS(lambda req, raw, tcp, peer: answer(req, rcode=RCODE.SERVFAIL)).start()
        rf = await FakeDNS(lambda req, raw, tcp, peer: answer(req, rcode=RCODE.REFUSED)).start()
        ok = await FakeDNS(a_handler("10.0.0.5")).start()
        up = Upstream(settings(sf.addr, rf.addr, ok.addr, attempts=3))
        assert ips_of(await up.resolve("s.example", QTYPE.A)) == ["10.0.0.5"]
        assert up.stats.servers[f"127.0.0.1:{sf.port}"].failures["servfail"] == 1
        assert up.stats.servers[f"127.0.0.1:{rf.port}"].failures["refused"] == 1
        # All fail: UpstreamError carries the last SERVFAIL/REFUSED answer for the caller to relay.
        up2 = Upstream(settings(rf.addr, sf.addr))
        with pytest.raises(UpstreamError) as ei:
            await up2.resolve("s.example", QTYPE.A)
        assert ei.value.reason == "servfail" and ei.value.response is not None
        assert DNSRecord.parse(ei.value.response).header.rcode == RCODE.SERVFAIL
        assert up2.health() == {f"127.0.0.1:{rf.port}": True, f"127.0.0.1:{sf.port}": True}  # alive
        for s in (sf, rf, ok):
            await s.close()

    run(body)


def test_nxdomain_is_an_answer(run: Any) -> None:
    async def body() -> None:
        nx = await FakeDNS(lambda req, raw, tcp, peer: answer(req, rcode=RCODE.NXDOMAIN)).start()
        other = await FakeDNS(a_handler("10.0.0.6")).start()
        up = Upstream(settings(nx.addr, other.addr))
        assert DNSRecord.parse(await up.resolve("nx.example", QTYPE.A)).header.rcode == RCODE.NXDOMAIN
        assert other.udp == []
        await nx.close()
        await other.close()

    run(body)


# ------------------------------------------------------------------------------------- TC and TCP


def big_handler(n: int) -> Handler:
    def h(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
        if not tcp:
            return answer(req, tc=True)
        return answer(req, *(f"10.1.{i // 256}.{i % 256}" for i in range(n)))

    return h


def test_truncated_udp_retries_over_tcp(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(big_handler(150)).start()
        up = Upstream(settings(srv.addr))
        wire = await up.resolve("Big.Example", QTYPE.A)
        assert len(wire) > 1232
        assert ips_of(wire) == [f"10.1.{i // 256}.{i % 256}" for i in range(150)]
        assert str(DNSRecord.parse(wire).q.qname) == "Big.Example."
        assert len(srv.udp) == 1 and len(srv.tcp) == 1
        assert srv.tcp[0].header.id == srv.udp[0].header.id
        st = up.stats.servers[f"127.0.0.1:{srv.port}"]
        assert st.failures["truncated_retry"] == 1 and st.requests == 1
        await srv.close()

    run(body)


def test_oversize_udp_answer_accepted(run: Any) -> None:
    async def body() -> None:
        ips = [f"10.2.0.{i}" for i in range(200)]  # ~3.3 kB in one datagram, past our EDNS size
        srv = await FakeDNS(a_handler(*ips)).start()
        up = Upstream(settings(srv.addr))
        assert ips_of(await up.resolve("o.example", QTYPE.A)) == ips
        assert srv.tcp == []
        await srv.close()

    run(body)


def test_tcp_answer_to_another_question_fails_attempt(run: Any) -> None:
    async def body() -> None:
        def h(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
            if not tcp:
                return answer(req, tc=True)
            req.q.qname = "other.example"  # right ID, wrong question: a confused server
            return answer(req, "10.0.0.7")

        srv = await FakeDNS(h).start()
        up = Upstream(settings(srv.addr, attempts=1))
        with pytest.raises(UpstreamError) as ei:
            await up.resolve("b.example", QTYPE.A)
        assert ei.value.reason == "bad-reply"
        assert up.stats.servers[f"127.0.0.1:{srv.port}"].failures["bad_reply"] == 1
        await up.close()
        await srv.close()

    run(body)


def test_tcp_answer_with_an_unknown_id_is_ignored_like_over_udp(run: Any) -> None:
    async def body() -> None:
        def h(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
            if not tcp:
                return answer(req, tc=True)
            req.header.id ^= 1
            return answer(req, "10.0.0.7")

        srv = await FakeDNS(h).start()
        up = Upstream(settings(srv.addr, attempts=1, timeout=0.3))
        with pytest.raises(UpstreamError) as ei:
            await up.resolve("b.example", QTYPE.A)
        assert ei.value.reason == "timeout"  # nobody waits for that ID: dropped, never taken as the answer
        assert up.stats.servers[f"127.0.0.1:{srv.port}"].failures["timeout"] == 1
        await up.close()
        await srv.close()

    run(body)


def test_tcp_connection_is_kept_open_and_pipelined(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(big_handler(100)).start()
        up = Upstream(settings(srv.addr, tcp_idle=5.0))
        names = [f"big{i}.example" for i in range(20)]
        first = await up.resolve(names[0], QTYPE.A)  # one alone, then 19 at once on the same connection
        rest = await asyncio.gather(*(up.resolve(n, QTYPE.A) for n in names[1:]))
        for n, wire in zip(names, [first, *rest], strict=True):
            assert str(DNSRecord.parse(wire).q.qname).lower() == n + "."
            assert len(ips_of(wire)) == 100
        assert srv.tcp_count == 20
        assert srv.tcp_connections == 1
        assert up.stats.servers[f"127.0.0.1:{srv.port}"].tcp_connections == 1
        await up.close()
        await srv.close()

    run(body)


def test_tcp_connection_closed_by_the_server_costs_a_retry_not_a_failure(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(big_handler(50)).start()
        srv.tcp_close_after = 1  # the server hangs up after every answer
        up = Upstream(settings(srv.addr, attempts=1))
        for i in range(5):
            assert len(ips_of(await up.resolve(f"c{i}.example", QTYPE.A))) == 50
        st = up.stats.servers[f"127.0.0.1:{srv.port}"]
        assert st.failures["network"] == 0 and st.failures["timeout"] == 0
        assert srv.tcp_connections == 5
        await up.close()
        await srv.close()

    run(body)


def test_tcp_connection_lost_with_a_query_on_it_is_retried_on_a_new_one(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(big_handler(50)).start()
        srv.tcp_hangup_on = 2  # a connection's second query: the server hangs up instead of answering
        up = Upstream(settings(srv.addr, attempts=1))
        assert len(ips_of(await up.resolve("e1.example", QTYPE.A))) == 50
        assert len(ips_of(await up.resolve("e2.example", QTYPE.A))) == 50  # lost on the reused one, then new
        st = up.stats.servers[f"127.0.0.1:{srv.port}"]
        assert st.failures["network"] == 0 and st.failures["timeout"] == 0
        assert srv.tcp_connections == 2 and st.tcp_connections == 2
        await up.close()
        await srv.close()

    run(body)


def test_tcp_connection_closes_when_idle(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(big_handler(50)).start()
        up = Upstream(settings(srv.addr, tcp_idle=0.2))
        await up.resolve("d1.example", QTYPE.A)
        await asyncio.sleep(0.5)
        await up.resolve("d2.example", QTYPE.A)
        assert srv.tcp_connections == 2  # the first one went away after 0.2 s without queries
        await up.close()
        await srv.close()

    run(body)


# ---------------------------------------------------------------------------------- validation


def test_garbage_wrong_id_and_wrong_question_ignored(run: Any) -> None:
    async def body() -> None:
        def h(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
            wrong_id = DNSRecord.parse(answer(req, "6.6.6.6"))
            wrong_id.header.id ^= 0x5A5A
            wrong_q = DNSRecord.question("other.example")
            wrong_q.header.id = req.header.id
            not_a_reply = bytearray(answer(req, "6.6.6.7"))
            not_a_reply[2] &= 0x7F  # QR bit cleared
            return [
                b"\x00garbage",
                wrong_id.pack(),
                answer(wrong_q, "6.6.6.8"),
                bytes(not_a_reply),
                answer(req, "10.0.0.8"),
            ]

        srv = await FakeDNS(h).start()
        up = Upstream(settings(srv.addr))
        assert ips_of(await up.resolve("v.example", QTYPE.A)) == ["10.0.0.8"]
        assert up.stats.servers[f"127.0.0.1:{srv.port}"].ignored_replies == 4
        await srv.close()

    run(body)


def test_only_bad_replies_means_timeout(run: Any) -> None:
    async def body() -> None:
        def h(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
            req.header.id ^= 1
            return answer(req, "6.6.6.6")

        srv = await FakeDNS(h).start()
        up = Upstream(settings(srv.addr, timeout=0.1, attempts=1))
        with pytest.raises(UpstreamError) as ei:
            await up.resolve("w.example", QTYPE.A)
        assert ei.value.reason == "timeout"
        await srv.close()

    run(body)


def test_reply_from_wrong_source_port_is_dropped(run: Any) -> None:
    async def body() -> None:
        spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        spoofer.bind(("127.0.0.1", 0))

        def h(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
            # A perfect forgery (right ID, right question case) but from another port: the
            # connected socket's kernel filter must drop it before the real answer arrives.
            spoofer.sendto(answer(req, "6.6.6.6"), peer)
            return answer(req, "10.0.0.9")

        srv = await FakeDNS(h, delay=0.05).start()
        up = Upstream(settings(srv.addr))
        assert ips_of(await up.resolve("x.example", QTYPE.A)) == ["10.0.0.9"]
        spoofer.close()
        await srv.close()

    run(body)


def test_server_without_0x20_support_is_detected(run: Any) -> None:
    async def body() -> None:
        def lowercasing(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
            req.q.qname = str(req.q.qname).lower()
            return answer(req, "10.0.0.10")

        srv = await FakeDNS(lowercasing).start()
        up = Upstream(settings(srv.addr, timeout=0.1, attempts=2))
        wire = await up.resolve("CaseLess.Example.", QTYPE.A)  # try 1 times out, try 2 w/o 0x20
        assert ips_of(wire) == ["10.0.0.10"] and str(DNSRecord.parse(wire).q.qname) == "CaseLess.Example."
        st = up.stats.servers[f"127.0.0.1:{srv.port}"]
        assert st.case_mismatch == 1 and st.failures["timeout"] == 1
        await up.resolve("again.example", QTYPE.A)
        assert st.failures["timeout"] == 1 and st.case_mismatch == 1  # no 0x20 any more: first try works
        await srv.close()

    run(body)


# ------------------------------------------------------------------------- coalescing and bounds


def test_coalescing_identical_queries(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(a_handler("10.0.0.11"), delay=0.05).start()
        up = Upstream(settings(srv.addr))
        results = await asyncio.gather(*(up.resolve("c.example", QTYPE.A) for _ in range(10)))
        assert len(srv.udp) == 1
        assert all(r is results[0] for r in results)
        assert up.stats.coalesced == 9 and up.stats.inflight == 0
        # Different case coalesces too, but each caller gets its own spelling back; DO/qtype split.
        res = await asyncio.gather(
            up.resolve("d.example", QTYPE.A),
            up.resolve("D.EXAMPLE.", QTYPE.A),
            up.resolve("d.example", QTYPE.A, do=True),
            up.resolve("d.example", QTYPE.AAAA),
        )
        assert len(srv.udp) == 4
        assert str(DNSRecord.parse(res[1]).q.qname) == "D.EXAMPLE."
        assert res[0][12:] != res[1][12:] and res[0][:12] == res[1][:12]
        # A cancelled waiter does not cancel the shared query.
        t1 = asyncio.ensure_future(up.resolve("e.example", QTYPE.A))
        t2 = asyncio.ensure_future(up.resolve("e.example", QTYPE.A))
        await asyncio.sleep(0.01)
        t1.cancel()
        assert ips_of(await t2) == ["10.0.0.11"]
        await srv.close()

    run(body)


def test_inflight_bound(run: Any) -> None:
    async def body() -> None:
        mute = await FakeDNS(silent).start()
        up = Upstream(settings(mute.addr, timeout=0.2, attempts=1, max_inflight=2))
        t1 = asyncio.ensure_future(up.resolve("i1.example", QTYPE.A))
        t2 = asyncio.ensure_future(up.resolve("i2.example", QTYPE.A))
        t3 = asyncio.ensure_future(up.resolve("i1.example", QTYPE.A))  # coalesced: not a new query
        await asyncio.sleep(0.01)
        assert up.stats.inflight == 2
        with pytest.raises(UpstreamError) as ei:
            await up.resolve("i3.example", QTYPE.A)
        assert ei.value.reason == "overload" and not t1.done()  # rejected at once, not queued
        with pytest.raises(UpstreamError):
            await up.forward_raw(DNSRecord.question("i4.example").pack())
        assert up.stats.overload == 2
        for t in (t1, t2, t3):
            with pytest.raises(UpstreamError):
                await t
        assert up.stats.inflight == 0
        await mute.close()

    run(body)


# -------------------------------------------------------------------------- parallel and health


def test_parallel_first_good_answer_wins(run: Any) -> None:
    async def body() -> None:
        slow = await FakeDNS(a_handler("10.0.0.12"), delay=0.5).start()
        sf = await FakeDNS(lambda req, raw, tcp, peer: answer(req, rcode=RCODE.SERVFAIL)).start()
        fast = await FakeDNS(a_handler("10.0.0.13"), delay=0.02).start()
        up = Upstream(settings(slow.addr, sf.addr, fast.addr, parallel=True))
        t0 = time.monotonic()
        assert ips_of(await up.resolve("p.example", QTYPE.A)) == ["10.0.0.13"]
        assert time.monotonic() - t0 < 0.3
        assert len(slow.udp) == len(sf.udp) == len(fast.udp) == 1
        await asyncio.sleep(0)  # let the cancelled loser clean up
        assert all(st.inflight == 0 for st in up.stats.servers.values())
        for s in (slow, sf, fast):
            await s.close()

    run(body)


def test_health_ordering_and_recovery(run: Any) -> None:
    async def body() -> None:
        flaky = await FakeDNS(silent).start()
        good = await FakeDNS(a_handler("10.0.0.14")).start()
        up = Upstream(settings(flaky.addr, good.addr, timeout=0.05, unhealthy_after=2, probe_interval=0.05))
        fname = f"127.0.0.1:{flaky.port}"
        for i in range(2):
            await up.resolve(f"h{i}.example", QTYPE.A)
        assert up.health() == {fname: False, f"127.0.0.1:{good.port}": True}
        await up.resolve("h2.example", QTYPE.A)
        assert len(flaky.udp) == 2  # the unhealthy one is tried last, so not at all here
        flaky.handler = a_handler("10.0.0.15")
        await up.start()  # prober sends ". NS" to unhealthy servers
        for _ in range(40):
            await asyncio.sleep(0.025)
            if up.health()[fname]:
                break
        assert up.health()[fname]
        assert str(flaky.udp[-1].q.qname) == "." and flaky.udp[-1].q.qtype == QTYPE.NS
        assert ips_of(await up.resolve("h3.example", QTYPE.A)) == ["10.0.0.15"]
        await up.close()
        await flaky.close()
        await good.close()

    run(body)


# --------------------------------------------------------------------------------- forward_raw


def test_forward_raw_restores_id_and_retries_tcp(run: Any) -> None:
    async def body() -> None:
        srv = await FakeDNS(big_handler(100)).start()
        ok = await FakeDNS(a_handler("10.0.0.16")).start()
        up = Upstream(settings(srv.addr))
        q = DNSRecord.question("Raw.Example", "A")
        q.header.id = 0x1234
        wire = await up.forward_raw(q.pack())
        assert wire[:2] == b"\x12\x34" and len(ips_of(wire)) == 100
        assert str(DNSRecord.parse(wire).q.qname) == "Raw.Example."
        assert srv.udp_raw[0][2:] == q.pack()[2:]  # as-is apart from the ID: no 0x20, no OPT added
        dead = ("127.0.0.1", closed_port())
        up2 = Upstream(settings(dead, ok.addr))
        wire = await up2.forward_raw(q.pack())
        assert wire[:2] == b"\x12\x34" and ips_of(wire) == ["10.0.0.16"]
        await srv.close()
        await ok.close()

    run(body)


# ---------------------------------------------------------------------------------------- misc


def test_close_fails_pending_queries_with_upstream_error(run: Any) -> None:
    async def body() -> None:
        mute = await FakeDNS(silent).start()
        up = Upstream(settings(mute.addr, timeout=5.0))
        await up.start()
        t1 = asyncio.ensure_future(up.resolve("cl.example", QTYPE.A))
        t2 = asyncio.ensure_future(up.forward_raw(DNSRecord.question("cl2.example").pack()))
        await asyncio.sleep(0.01)
        await up.close()
        for t in (t1, t2):
            with pytest.raises(UpstreamError) as ei:
                await t
            assert ei.value.reason == "network"
        with pytest.raises(UpstreamError):
            await up.resolve("after.example", QTYPE.A)
        assert up.stats.inflight == 0
        assert all(st.inflight == 0 for st in up.stats.servers.values())
        await mute.close()

    run(body)


def test_ipv6_server(run: Any) -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1")

    async def body() -> None:
        srv = await FakeDNS(a_handler("10.0.0.17"), host="::1").start()
        up = Upstream(settings(srv.addr))
        assert ips_of(await up.resolve("six.example", QTYPE.A)) == ["10.0.0.17"]
        assert list(up.health()) == [f"[::1]:{srv.port}"]
        await srv.close()

    run(body)


def test_txt_answer_roundtrip(run: Any) -> None:
    async def body() -> None:
        def h(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
            rep = req.reply()
            rep.add_answer(RR(req.q.qname, QTYPE.TXT, rdata=TXT(["x" * 200, "y" * 200]), ttl=5))
            return rep.pack()

        srv = await FakeDNS(h).start()
        up = Upstream(settings(srv.addr))
        rr = DNSRecord.parse(await up.resolve("txt.example", QTYPE.TXT)).rr[0]
        assert rr.rdata.data == [b"x" * 200, b"y" * 200]
        await srv.close()

    run(body)


def test_settings_validation_and_histogram() -> None:
    with pytest.raises(ValueError):
        Upstream(UpstreamSettings(servers=()))  # the setting may be empty (config fills it), the client not
    with pytest.raises(ValueError):
        UpstreamSettings(servers=(("kube-dns", 53),))
    up = Upstream(settings(("127.0.0.1", 53)))
    st = up.stats.servers["127.0.0.1:53"]
    for v in (0.00005, 0.0001, 0.0003, 0.003, 7.0):
        st.observe(v)
    cum = st.cumulative_buckets()
    assert len(cum) == len(LATENCY_BUCKETS) + 1 and cum[-1] == (float("inf"), 5)
    assert cum[0] == (0.0001, 2) and cum[2] == (0.0005, 3) and cum[-2] == (5.0, 4)
    assert st.latency_count == 5 and abs(st.latency_sum - 7.00345) < 1e-9
