"""Part 7, bad input at the responder, in process: the real Responder + Resolver + Cache + NameTable
on 127.0.0.1 (random port), a tiny fake upstream on 127.0.0.x, and clients that misbehave: broken TCP
framing, slow (slowloris) TCP clients, pipelined TCP queries, and odd UDP queries. After each one a
normal query must still work, and nothing may be left behind. Figures are printed (pytest -s).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from dnslib import CLASS, QTYPE, RCODE, RR, TXT, A, DNSQuestion, DNSRecord

from node_agent.mesh.model import Pod, Service, Snapshot
from node_agent.mesh.table import NameTable
from node_agent.resolve.cache import Cache
from node_agent.resolve.resolver import Resolver
from node_agent.serve.responder import Responder
from node_agent.settings import ListenSettings, TableSettings, UpstreamSettings
from node_agent.testing.pace import python_pace
from node_agent.upstream.client import Upstream
from tests.support.netutil import free_port

NODE, POD = "127.0.0.1", "127.0.0.2"


class Upstream1:
    """A fake kube-dns on 127.0.0.x: A 192.0.2.1 for anything (UDP), names starting with "slow"
    after 0.3 s (so pipelined answers complete out of order)."""

    def __init__(self) -> None:
        self.host = f"127.0.0.{random.randrange(10, 250)}"
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        me = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                t = loop.create_task(me.answer(data, addr))
                me.tasks.add(t)
                t.add_done_callback(me.tasks.discard)

        self.transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=(self.host, 0))
        return self.host, self.transport.get_extra_info("sockname")[1]

    async def answer(self, data: bytes, addr: tuple[str, int]) -> None:
        req = DNSRecord.parse(data)
        if str(req.q.qname).lower().startswith("slow"):
            await asyncio.sleep(0.3)
        rep = req.reply()
        if req.q.qclass == CLASS.IN and req.q.qtype == QTYPE.A:
            rep.add_answer(RR(req.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        assert self.transport is not None
        self.transport.sendto(rep.pack(), addr)

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.transport is not None:
            self.transport.close()




class Rig:
    def __init__(self, **listen: Any) -> None:
        self.listen = listen
        self.fake = Upstream1()

    async def __aenter__(self) -> Rig:
        addr = await self.fake.start()
        table = NameTable(TableSettings(node_ips=(NODE,)))
        table.replace(Snapshot("test", "Kubernetes", [
            Pod("a", "client", (POD,), uid="u-a"), Service("a", "web", cluster_ips=("10.96.1.10",))]))
        table.synced = True
        self.upstream = Upstream(UpstreamSettings(servers=(addr,), timeout=1.0, probe_interval=0))
        self.resolver = Resolver(table, Cache(), self.upstream)
        self.port = free_port()
        self.responder = Responder(ListenSettings(address=NODE, port=self.port, **self.listen), self.resolver)
        await self.responder.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.responder.close()
        await self.upstream.close()
        self.fake.close()

    async def udp(self, packet: bytes, timeout: float = 2.0) -> tuple[bytes | None, float]:
        """Raw bytes in, raw bytes (or None: no answer within timeout) out."""
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            s.bind((POD, 0))
            s.connect((NODE, self.port))
            t0 = time.perf_counter()
            await loop.sock_sendall(s, packet)
            try:
                data = await asyncio.wait_for(loop.sock_recv(s, 65535), timeout)
            except TimeoutError:
                return None, timeout
            return data, time.perf_counter() - t0
        finally:
            s.close()

    async def tcp(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(NODE, self.port, local_addr=(POD, 0))

    async def still_works(self) -> float:
        """A normal query over UDP and over TCP answers; returns the UDP latency."""
        data, dt = await self.udp(DNSRecord.question("web.a.svc.cluster.local", "A").pack())
        assert data is not None and [str(r.rdata) for r in DNSRecord.parse(data).rr] == ["10.96.1.10"]
        r, w = await self.tcp()
        try:
            rec = await tcp_ask(r, w, DNSRecord.question("web.a.svc.cluster.local", "A"))
            assert [str(x.rdata) for x in rec.rr] == ["10.96.1.10"]
        finally:
            w.close()
        return dt


async def tcp_ask(r: asyncio.StreamReader, w: asyncio.StreamWriter, q: DNSRecord) -> DNSRecord:
    p = q.pack()
    w.write(struct.pack("!H", len(p)) + p)
    (n,) = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), 3))
    return DNSRecord.parse(await asyncio.wait_for(r.readexactly(n), 3))


async def closed_after(r: asyncio.StreamReader, t0: float, limit: float) -> float | None:
    """Seconds from t0 until the server closes the connection (EOF), None if not within limit."""
    try:
        while True:
            chunk = await asyncio.wait_for(r.read(4096), limit)
            if not chunk:
                return time.perf_counter() - t0
    except TimeoutError:
        return None
    except ConnectionError:
        return time.perf_counter() - t0


def run(fn: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(asyncio.wait_for(fn(), timeout))  # type: ignore[arg-type]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


# ------------------------------------------------------------------------------------------ tests


def test_tcp_broken_framing_is_survived() -> None:
    """Truncated length prefixes, a length longer than what follows, an empty message, garbage of the
    announced length, a connection reset: each costs its own connection at most."""

    async def body() -> None:
        async with Rig(tcp_idle=0.5) as rig:
            cases: list[tuple[str, bytes]] = [
                ("one byte of a length prefix, then EOF", b"\x00"),
                ("length 100, 10 bytes, then EOF", b"\x00\x64" + b"x" * 10),
                ("length 65535, nothing, then EOF", b"\xff\xff"),
                ("garbage of the announced length", b"\x00\x05hello"),
                ("a 5-byte 'header'", b"\x00\x05\x12\x34\x01\x00\x00"),
            ]
            for what, raw in cases:
                r, w = await rig.tcp()
                w.write(raw)
                await w.drain()
                w.write_eof()
                got = await asyncio.wait_for(r.read(), 3)  # the server closes; an error answer is fine
                w.close()
                if got:
                    (n,) = struct.unpack("!H", got[:2])
                    assert len(got) == 2 + n and got[4] & 0x80, (what, got)  # one whole response
                dt = await rig.still_works()
                print(f"tcp {what}: {'answered ' + str(len(got)) + ' bytes' if got else 'closed'}; "
                      f"next query answered in {dt * 1000:.2f} ms")
            # An empty message, then a real query on the same connection: the real one is answered.
            r, w = await rig.tcp()
            w.write(b"\x00\x00")
            rec = await tcp_ask(r, w, DNSRecord.question("web.a.svc.cluster.local", "A"))
            assert [str(x.rdata) for x in rec.rr] == ["10.96.1.10"]
            w.close()
            # A reset mid-query (SO_LINGER 0).
            s = socket.socket()
            s.bind((POD, 0))
            s.connect((NODE, rig.port))
            s.send(b"\x00\x40abc")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            await rig.still_works()
            await asyncio.sleep(0.1)
            assert not rig.responder._clients, "closed connections must not linger"

    run(body)


def test_slow_tcp_clients_are_cut_by_the_idle_timeout_and_others_are_unaffected() -> None:
    """Slowloris: clients that send a length and stall, or connect and say nothing. They are cut at
    tcp_idle; meanwhile other clients' UDP and TCP queries are answered as fast as ever. Past
    tcp_max_clients new TCP connections are closed at once (bounded memory) until the idle ones go."""

    async def body() -> None:
        idle, max_clients = 0.5, 32
        async with Rig(tcp_idle=idle, tcp_max_clients=max_clients) as rig:
            stallers = []
            for i in range(40):
                r, w = await rig.tcp()
                if i % 2 == 0:
                    w.write(b"\x00\x30\x12")  # a length, one byte of 48, then nothing
                stallers.append((r, w, time.perf_counter()))
            closers = [asyncio.ensure_future(closed_after(r, t, 3.0)) for r, _, t in stallers]
            t0 = time.perf_counter()
            lat: list[float] = []
            while time.perf_counter() - t0 < idle * 0.8:
                _, dt = await rig.udp(DNSRecord.question("web.a.svc.cluster.local", "A").pack())
                lat.append(dt)
            cut = await asyncio.gather(*closers)
            assert all(c is not None for c in cut), cut
            held = [c or 0.0 for c in cut[:max_clients]]
            over = [c or 0.0 for c in cut[max_clients:]]
            print(f"slow tcp clients: {len(held)} held, cut after {min(held) * 1000:.0f}-{max(held) * 1000:.0f} ms "
                  f"(tcp_idle {idle * 1000:.0f} ms); {len(over)} over tcp_max_clients closed in "
                  f"{max(over) * 1000:.1f} ms; UDP meanwhile: {len(lat)} queries, p99 {pct(lat, .99) * 1000:.2f} ms")
            assert all(idle * 0.9 <= c <= idle * 3 for c in held), held
            assert all(c < idle * 0.5 for c in over), over
            assert pct(lat, 0.99) < 0.005 * python_pace()  # ms on the reference machine; a stalled loop: 0.5 s
            assert rig.responder.stats.tcp_idle_closed >= max_clients
            for _, w, _ in stallers:
                w.close()
            await asyncio.sleep(0.05)
            assert not rig.responder._clients
            await rig.still_works()

    run(body)


def test_pipelined_tcp_queries_are_all_answered() -> None:
    """60 queries in one write on one connection (table answers, cache hits, fast and 0.3 s upstream
    misses): 60 answers come back whole, each matching its query's ID and question."""

    async def body() -> None:
        async with Rig() as rig:
            await rig.udp(DNSRecord.question("cached.example", "A").pack())
            names = ["web.a.svc.cluster.local", "cached.example", "fresh{}.example", "slow{}.example",
                     "nope.a.svc.cluster.local"]
            qs = []
            for i in range(60):
                q = DNSRecord.question(names[i % len(names)].format(i), "A")
                q.header.id = 1000 + i
                qs.append(q)
            r, w = await rig.tcp()
            t0 = time.perf_counter()
            w.write(b"".join(struct.pack("!H", len(p)) + p for p in (q.pack() for q in qs)))
            got: dict[int, DNSRecord] = {}
            order = []
            while len(got) < len(qs):
                (n,) = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), 3))
                rec = DNSRecord.parse(await asyncio.wait_for(r.readexactly(n), 3))
                got[rec.header.id] = rec
                order.append(rec.header.id)
            dt = time.perf_counter() - t0
            w.close()
            for q in qs:
                a = got[q.header.id]
                assert a.q.qname == q.q.qname, (q, a)
                name = str(q.q.qname)
                if name.startswith("nope"):
                    assert a.header.rcode == RCODE.NXDOMAIN
                else:
                    assert a.header.rcode == RCODE.NOERROR and a.rr, a
            in_order = order == sorted(order)
            print(f"pipelined tcp: {len(qs)} queries in one write, {len(got)} answers in {dt * 1000:.0f} ms "
                  f"({'in order' if in_order else 'in completion order'})")
            assert not in_order  # slow misses did not hold up the answers behind them

    run(body)


def odd_queries() -> list[tuple[str, bytes, set[int] | None]]:
    """(what, packet, rcodes accepted; None = must be dropped, no answer)."""
    q = DNSRecord.question("web.a.svc.cluster.local", "A").pack()
    zero_q = q[:4] + b"\x00\x00" + q[6:12]
    two = DNSRecord.question("web.a.svc.cluster.local", "A")
    two.add_question(DNSQuestion("db.b.svc.cluster.local", QTYPE.A))
    chaos = DNSRecord.question("version.bind", "TXT", "CH").pack()
    unknown_class = q[:-2] + b"\x12\x34"
    unknown_type = DNSRecord.question("web.a.svc.cluster.local", "A").pack()[:-4] + b"\xfe\xee\x00\x01"
    response = bytearray(q)
    response[2] |= 0x80
    status_opcode = bytearray(q)
    status_opcode[2] = (status_opcode[2] & 0x87) | (2 << 3)  # opcode STATUS
    edns_v1 = q[:11] + b"\x01" + q[12:] + b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00"
    pointer = q[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    return [
        ("zero questions", zero_q, {RCODE.FORMERR}),
        ("two questions", two.pack(), {RCODE.FORMERR}),
        ("unknown class 0x1234", unknown_class, {RCODE.NOERROR, RCODE.REFUSED, RCODE.NOTIMP, RCODE.SERVFAIL}),
        ("CHAOS TXT version.bind", chaos, {RCODE.NOERROR, RCODE.REFUSED, RCODE.NOTIMP, RCODE.SERVFAIL}),
        ("unknown type 65262", unknown_type, {RCODE.NOERROR}),
        ("opcode STATUS", bytes(status_opcode), {RCODE.NOTIMP}),
        ("EDNS version 1", edns_v1, {RCODE.NOERROR}),  # BADVERS: header rcode 0, extended in OPT
        ("compression pointer as qname", pointer, {RCODE.FORMERR}),
        ("header only", q[:12], {RCODE.FORMERR}),
        ("11 bytes", q[:11], {RCODE.FORMERR}),
        ("1 byte", q[:1], None),
        ("a response (QR=1)", bytes(response), None),
        ("trailing garbage", q + b"\x00junk", {RCODE.NOERROR, RCODE.FORMERR}),
        ("question cut short", q[:-3], {RCODE.FORMERR}),
        ("label of 64", q[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", {RCODE.FORMERR}),
    ]


def test_odd_udp_queries_get_formerr_or_an_answer_and_never_break_the_listener() -> None:
    async def body() -> None:
        async with Rig() as rig:
            for what, packet, accepted in odd_queries():
                data, dt = await rig.udp(packet, timeout=2.0 if accepted is not None else 0.3)
                if accepted is None:
                    assert data is None, (what, data)
                    outcome = "dropped"
                else:
                    assert data is not None, what
                    assert data[:2] == packet[:2] and data[2] & 0x80, (what, data)
                    rcode = data[3] & 0x0F
                    assert rcode in accepted, (what, rcode)
                    outcome = f"{RCODE.get(rcode)} in {dt * 1000:.2f} ms"
                    if what == "EDNS version 1":
                        assert DNSRecord.parse(data).ar[0].ttl >> 24 == 1, "BADVERS"
                        outcome = "BADVERS"
                ok = await rig.still_works()
                print(f"udp {what}: {outcome}; next query {ok * 1000:.2f} ms")
            await asyncio.sleep(0.05)
            assert not rig.responder.pending and rig.upstream.stats.inflight == 0
            st = rig.resolver.stats
            print(f"resolver: formerr {st.formerr}, dropped {st.dropped}, refused {st.refused}")

    run(body)


class EchoAnswerer:
    """An Answerer with no resolver behind it: the responder must need nothing else. "fast" names are
    answered on the fast path, "slow" ones by answer, "none" ones not at all; each reply carries the
    client and transport the responder said (as a TXT record), and the calls are recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def _reply(self, data: bytes, client: str, transport: str) -> bytes:
        req = DNSRecord.parse(data)
        rep = req.reply()
        rep.add_answer(RR(req.q.qname, QTYPE.TXT, rdata=TXT(f"{client} {transport}"), ttl=1))
        return bytes(rep.pack())

    def answer_fast(self, data: bytes, client: str, transport: str) -> bytes | None:
        name = str(DNSRecord.parse(data).q.qname)
        self.calls.append(("fast", name, transport))
        return self._reply(data, client, transport) if name.startswith("fast") else None

    async def answer(self, data: bytes, client: str, transport: str) -> bytes | None:
        name = str(DNSRecord.parse(data).q.qname)
        self.calls.append(("slow", name, transport))
        await asyncio.sleep(0.01)
        return self._reply(data, client, transport) if name.startswith("slow") else None


def test_the_responder_serves_any_answerer_fast_path_first() -> None:
    async def body() -> None:
        answerer = EchoAnswerer()
        responder = Responder(ListenSettings(address=NODE, port=free_port()), answerer)
        await responder.start()
        loop = asyncio.get_running_loop()
        try:
            for name, expect in (("fast.example.", True), ("slow.example.", True), ("none.example.", False)):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                try:
                    s.bind((POD, 0))
                    s.connect((NODE, responder.settings.port))
                    await loop.sock_sendall(s, DNSRecord.question(name, "TXT").pack())
                    try:
                        data: bytes | None = await asyncio.wait_for(loop.sock_recv(s, 65535), 0.5)
                    except TimeoutError:
                        data = None
                finally:
                    s.close()
                if expect:
                    assert data is not None and str(DNSRecord.parse(data).rr[0].rdata) == f'"{POD} udp"', name
                else:
                    assert data is None, name
                r, w = await asyncio.open_connection(NODE, responder.settings.port, local_addr=(POD, 0))
                try:
                    q = DNSRecord.question(name, "TXT").pack()
                    w.write(struct.pack("!H", len(q)) + q)
                    await w.drain()
                    if expect:
                        (size,) = struct.unpack("!H", await asyncio.wait_for(r.readexactly(2), 2.0))
                        rep = DNSRecord.parse(await r.readexactly(size))
                        assert str(rep.rr[0].rdata) == f'"{POD} tcp"', name
                finally:
                    w.close()
            await asyncio.sleep(0.05)
            # Every query tried the fast path first; only its Nones went on to answer.
            for name in ("fast.example.", "slow.example.", "none.example."):
                for t in ("udp", "tcp"):
                    mine = [k for k, n, tt in answerer.calls if n == name and tt == t]
                    assert mine == (["fast"] if name.startswith("fast") else ["fast", "slow"]), (name, t, mine)
            assert responder.stats.udp_dropped == 1  # the "none" datagram
        finally:
            await responder.close()

    run(body)
