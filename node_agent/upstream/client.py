"""Upstream DNS client: forwards cache misses to the cluster resolvers (kube-dns / CoreDNS).

Design, and why:

* **One connected UDP socket per attempt**, port 0 so the kernel picks a random ephemeral source port.
  Spoofing resistance is then ~16 bits of ID + ~15 bits of port (+ 0x20 case bits), with no shared
  state to manage. ``connect()`` makes the kernel drop datagrams whose source address/port is not
  the server's (the source check costs no Python at all), and turns an ICMP port-unreachable into
  ``ConnectionRefusedError`` on the next ``recv`` - a dead server fails over in well under a
  millisecond instead of after ``timeout``. A shared socket pool would save three syscalls per query
  (socket/connect/close, about 2-3 us) but would need ID-only demultiplexing (16 bits of entropy) and
  careful handling of ICMP errors that belong to another query; cache misses are the minority of
  traffic, so the simple safe choice wins.
* **Raw non-blocking sockets + ``loop.add_reader`` + one ``call_later`` timer** rather than
  ``create_datagram_endpoint`` (a transport + protocol object pair per query) or ``sock_recv`` under
  ``asyncio.timeout`` (a future per recv plus cancellation machinery). Measured CPU per resolve()
  (user+sys, 6000 distinct names, 32 concurrent, against dnsmasq on loopback, 2-core VM): stock
  asyncio 132 us (add_reader) vs 170 us (sock_recv+timeout) vs 192 us (datagram endpoint); under
  uvloop all three are within noise (115-119 us), add_reader having the best throughput. Most of it
  is kernel time (the loopback send() alone is ~30 us); socket+connect+close is ~13 us of it, which
  is all a shared socket pool could save. Building a query is 2.9 us with 0x20 (1.9 without; dnslib
  would take 27 us) and validating a reply 0.5 us. The reader callback also drains and silently
  drops garbage / wrong-ID datagrams without waking the awaiting coroutine.
* **TC -> TCP** to the same server (istio#61371: answers over 512 bytes must work) over one kept-open,
  pipelined connection per server (node_agent/upstream/tcp.py, RFC 7766): a burst of large answers costs one
  handshake, not one each. It closes after ``tcp_idle`` seconds without queries; a server that closed
  it first costs one retry on a new connection, not a failure.
* **Coalescing**: identical concurrent questions (qname lowercased, qtype, qclass, DO, CD) share one
  upstream query, run as a task so that a cancelled client does not cancel the others' query.
* **Failure policy**: SERVFAIL and REFUSED answers, timeouts and network errors move on to the next
  server. When every attempt failed we raise ``UpstreamError`` (the responder serves stale on it);
  if any server did answer SERVFAIL/REFUSED, the error carries that last answer in ``.response`` so the
  caller can relay it when it has nothing stale. Other rcodes (NOERROR, NXDOMAIN, FORMERR, ...) are
  answers and are returned as they are.
* **Health**: a server whose last ``unhealthy_after`` attempts all timed out (or hit a network error
  such as ICMP unreachable) is tried last until it answers again; a background task started by
  ``start()`` probes unhealthy servers with ``<probe_name> NS`` (what CoreDNS's own forward plugin
  uses) every ``probe_interval`` seconds so they recover without real traffic.
* **0x20**: the query name's letters get random case and the echoed question must match exactly. A
  server that does not preserve case (its answers only match case-insensitively and the attempt times
  out) is flagged and queried without 0x20 from then on, rather than failing forever.

Stats are plain ints read by a collector at scrape time; nothing here imports prometheus.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node_agent.settings import UpstreamSettings
from node_agent.upstream.tcp import TcpChannel

log = logging.getLogger(__name__)

# Fixed latency bucket upper bounds in seconds (Prometheus "le" semantics), 100 us .. 5 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
FAILURE_KINDS = ("timeout", "refused", "servfail", "truncated_retry", "network", "bad_reply")
REASONS = ("timeout", "refused", "servfail", "overload", "network", "bad-reply")

_SO_MARK = getattr(socket, "SO_MARK", 36)
_RCODE_SERVFAIL = 2
_RCODE_REFUSED = 5
_TYPE_OPT = 41
_TYPE_NS = 2
_MAX_UDP = 65535

# Reply verdicts of _check_reply.
_BAD = 0
_OK = 1
_CASE_ONLY = 2  # matches except for letter case: a server that does not preserve 0x20, or a spoof

# bytes.translate table giving 0x20 for ASCII letters and 0 elsewhere: XOR-ing the name with
# (this mask & random bytes) flips the case of a random subset of letters in C, not a Python loop.
# Label length octets are <= 63, so never mistaken for letters (which start at 65).
_LETTER_MASK = bytes(0x20 if (65 <= b <= 90 or 97 <= b <= 122) else 0 for b in range(256))


class UpstreamError(Exception):
    """Resolution failed. ``reason`` is one of REASONS; ``response`` holds the last SERVFAIL/REFUSED
    answer when a server gave one (its own ID, like resolve()'s bytes), else None."""

    def __init__(self, reason: str, detail: str = "", response: bytes | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.response = response


@dataclass
class ServerStats:
    requests: int = 0  # attempts sent to this server (a TC->TCP retry is part of the same attempt)
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))
    # Non-cumulative counts per LATENCY_BUCKETS bound, plus a last +Inf slot; see cumulative_buckets().
    # Only attempts that got an answer (any rcode) are observed: timeouts would just pile up at timeout.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    inflight: int = 0  # gauge: attempts to this server currently waiting
    ignored_replies: int = 0  # datagrams dropped: wrong ID, wrong question, garbage
    case_mismatch: int = 0  # replies whose question matched only case-insensitively under 0x20
    tcp_connections: int = 0  # TCP connections opened to this server (kept open and reused)

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, the last bound being +Inf, as Prometheus wants."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.latency_counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass
class UpstreamStats:
    servers: dict[str, ServerStats] = field(default_factory=dict)  # keyed like Upstream.health()
    inflight: int = 0  # gauge: distinct upstream queries in flight (coalesced waiters not counted)
    coalesced: int = 0  # resolve() calls that joined an identical query already in flight
    overload: int = 0  # calls rejected by max_inflight


class _AttemptFailed(Exception):
    def __init__(self, reason: str, detail: str = "", response: bytes | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.response = response


class _Server:
    __slots__ = ("addr", "family", "name", "stats", "down_streak", "caps_ok", "tcp")

    def __init__(self, ip: str, port: int) -> None:
        v6 = ipaddress.ip_address(ip).version == 6
        self.addr = (ip, port)
        self.family = socket.AF_INET6 if v6 else socket.AF_INET
        self.name = f"[{ip}]:{port}" if v6 else f"{ip}:{port}"
        self.stats = ServerStats()
        self.down_streak = 0  # consecutive timeouts / network errors
        self.caps_ok = True  # False once the server proved not to echo 0x20 case
        self.tcp: TcpChannel | None = None  # the kept-open connection, when there is one


# A query builder: per server, returns (query wire bytes, expected question section or None, exact).
_Builder = Callable[[_Server], tuple[bytes, bytes | None, bool]]


@functools.lru_cache(maxsize=4096)
def encode_name(qname: str) -> bytes:
    """Presentation name -> uncompressed wire name. Accepts dnslib-style escapes (``\\.``, ``\\065``)
    and an optional trailing dot; raises ValueError on over-long labels or names."""
    if qname in ("", "."):
        return b"\x00"
    if "\\" not in qname:
        labels = [lab.encode() for lab in qname.rstrip(".").split(".")] if qname != "." else []
    else:
        labels = []
        cur = bytearray()
        i, n = 0, len(qname)
        while i < n:
            c = qname[i]
            if c == "\\":
                if i + 3 < n and qname[i + 1 : i + 4].isdigit():
                    cur.append(int(qname[i + 1 : i + 4]))
                    i += 4
                    continue
                if i + 1 < n:
                    cur += qname[i + 1].encode()
                    i += 2
                    continue
                raise ValueError(f"dangling escape in {qname!r}")
            if c == ".":
                labels.append(bytes(cur))
                cur = bytearray()
            else:
                cur += c.encode()
            i += 1
        if cur:
            labels.append(bytes(cur))
    out = bytearray()
    for lab in labels:
        if not 0 < len(lab) <= 63:
            raise ValueError(f"bad label length {len(lab)} in {qname!r}")
        out.append(len(lab))
        out += lab
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {qname!r}")
    return bytes(out)


def _raw_question(query: bytes) -> bytes | None:
    """The question section of a single-question query, or None when it is not that simple."""
    if len(query) < 12 or query[4:6] != b"\x00\x01":
        return None
    i, n = 12, len(query)
    while i < n:
        ln = query[i]
        if ln == 0:
            end = i + 5
            return query[12:end] if end <= n else None
        if ln & 0xC0:  # compression or extended label types in a query: don't try to be clever
            return None
        i += ln + 1
    return None


def _check_reply(data: bytes, qid: bytes, opbits: int, question: bytes | None, exact: bool) -> int:
    """Does ``data`` answer our query? ID, QR, opcode and the echoed question must match."""
    if len(data) < 12 or data[0:2] != qid or not data[2] & 0x80 or data[2] & 0x78 != opbits:
        return _BAD
    if question is None:
        return _OK
    if data[4:6] != b"\x00\x01":
        return _BAD
    got = data[12 : 12 + len(question)]
    if got == question:
        return _OK
    if got.lower() == question.lower():  # bytes.lower() only touches ASCII letters, like DNS
        return _CASE_ONLY if exact else _OK
    return _BAD


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(_AttemptFailed("timeout"))


async def _wait_shared(task: asyncio.Task[bytes]) -> bytes:
    """Await a shared query task without letting our own cancellation reach it. If the task itself
    was cancelled (close()), the waiter gets UpstreamError rather than a CancelledError it never
    asked for - which would look to the responder as if its own handler had been cancelled."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if task.cancelled() and (me is None or me.cancelling() == 0):
            raise UpstreamError("network", "upstream client closed") from None
        raise


class Upstream:
    def __init__(self, settings: UpstreamSettings) -> None:
        if not settings.servers:
            raise ValueError("upstream: at least one server is required")
        self._s = settings
        self._servers = [_Server(ip, port) for ip, port in settings.servers]
        self.stats = UpstreamStats(servers={s.name: s.stats for s in self._servers})
        # key -> (task running the upstream query, wire name of the caller that started it)
        self._pending: dict[tuple[bytes, int, int, bool, bool], tuple[asyncio.Task[bytes], bytes]] = {}
        self._raw_tasks: set[asyncio.Task[bytes]] = set()
        self._mark = settings.socket_mark
        self._probe_task: asyncio.Task[None] | None = None
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the recovery prober. resolve() works without it; unhealthy servers then only
        recover when a real query reaches them."""
        if self._probe_task is None and self._s.probe_interval > 0:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def close(self) -> None:
        self._closed = True
        tasks: list[asyncio.Task[object]] = [t for t, _ in self._pending.values()]
        tasks += list(self._raw_tasks)
        if self._probe_task is not None:
            tasks.append(self._probe_task)
            self._probe_task = None
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for srv in self._servers:
            if srv.tcp is not None:
                srv.tcp.close()
                srv.tcp = None

    def health(self) -> dict[str, bool]:
        return {s.name: s.down_streak < self._s.unhealthy_after for s in self._servers}

    # ---------------------------------------------------------------- public queries

    async def resolve(
        self, qname: str, qtype: int, qclass: int = 1, *, do: bool = False, cd: bool = False
    ) -> bytes:
        """Ask upstream; returns the response wire bytes with the upstream's own ID (the caller
        patches IDs). The question name is returned exactly as this caller spelled it (0x20 undone).
        Raises UpstreamError, or ValueError for an unencodable name."""
        wire = encode_name(qname)
        # Keyed on the lowercased wire name so "a.example", "A.Example." and escape spellings coalesce.
        key = (wire.lower(), qtype, qclass, do, cd)
        entry = self._pending.get(key)
        if entry is not None:
            self.stats.coalesced += 1
            task, leader_wire = entry
        else:
            self._admit()
            leader_wire = wire
            task = asyncio.get_running_loop().create_task(self._resolve_one(wire, qtype, qclass, do, cd))
            self._pending[key] = (task, wire)
            self.stats.inflight += 1
            task.add_done_callback(functools.partial(self._resolve_done, key))
        # shield: a client that gives up must not cancel the query the other waiters share.
        data = await _wait_shared(task)
        if wire != leader_wire:  # same name, other letter case: give this caller its own spelling
            data = data[:12] + wire + data[12 + len(wire) :]
        return data

    async def forward_raw(self, query: bytes) -> bytes:
        """Forward a client packet as it is (ID replaced by a random one on the wire and restored in
        the answer), with failover and TC->TCP retry. No coalescing and no 0x20: the packet is opaque."""
        if len(query) < 12:
            raise ValueError("forward_raw: packet shorter than a DNS header")
        self._admit()
        question = _raw_question(query)

        def build(srv: _Server) -> tuple[bytes, bytes | None, bool]:
            return os.urandom(2) + query[2:], question, False

        task = asyncio.get_running_loop().create_task(self._run(build))
        self.stats.inflight += 1
        self._raw_tasks.add(task)
        task.add_done_callback(self._raw_done)
        reply = await _wait_shared(task)
        return query[:2] + reply[2:]

    # ---------------------------------------------------------------- internals: bookkeeping

    def _admit(self) -> None:
        if self._closed:
            raise UpstreamError("network", "upstream client closed")
        if self.stats.inflight >= self._s.max_inflight:
            self.stats.overload += 1
            raise UpstreamError("overload", f"{self.stats.inflight} queries in flight")

    def _resolve_done(self, key: tuple[bytes, int, int, bool, bool], task: asyncio.Task[bytes]) -> None:
        self._pending.pop(key, None)
        self._finished(task)

    def _raw_done(self, task: asyncio.Task[bytes]) -> None:
        self._raw_tasks.discard(task)
        self._finished(task)

    def _finished(self, task: asyncio.Task[bytes]) -> None:
        self.stats.inflight -= 1
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have been cancelled meanwhile

    # ---------------------------------------------------------------- internals: query logic

    def _build(
        self, wire: bytes, qtype: int, qclass: int, do: bool, cd: bool, randomize: bool
    ) -> tuple[bytes, bytes]:
        """(query, question section). RD always; CD as asked; an OPT RR always (DO as asked)."""
        rnd = os.urandom(2 + len(wire)) if randomize else os.urandom(2)
        if randomize:
            mask = int.from_bytes(wire.translate(_LETTER_MASK), "big") & int.from_bytes(rnd[2:], "big")
            wire = (int.from_bytes(wire, "big") ^ mask).to_bytes(len(wire), "big")
        flags = 0x0100 | (0x0010 if cd else 0)
        question = wire + struct.pack("!HH", qtype, qclass)
        opt = b"\x00" + struct.pack("!HHIH", _TYPE_OPT, self._s.edns_size, 0x8000 if do else 0, 0)
        return rnd[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 1) + question + opt, question

    async def _resolve_one(self, wire: bytes, qtype: int, qclass: int, do: bool, cd: bool) -> bytes:
        def build(srv: _Server) -> tuple[bytes, bytes | None, bool]:
            randomize = self._s.randomize_case and srv.caps_ok
            query, question = self._build(wire, qtype, qclass, do, cd, randomize)
            return query, question, randomize

        reply = await self._run(build)
        if reply[12 : 12 + len(wire)] != wire:  # undo 0x20 (same length, always at offset 12)
            reply = reply[:12] + wire + reply[12 + len(wire) :]
        return reply

    def _ordered(self) -> list[_Server]:
        """Healthy servers in configured order, then unhealthy ones, least recently failing first."""
        limit = self._s.unhealthy_after
        healthy = [s for s in self._servers if s.down_streak < limit]
        if len(healthy) == len(self._servers):
            return healthy
        sick = sorted((s for s in self._servers if s.down_streak >= limit), key=lambda s: s.down_streak)
        return healthy + sick

    async def _run(self, build: _Builder) -> bytes:
        if self._s.parallel and len(self._servers) > 1:
            return await self._run_parallel(build)
        order = self._ordered()
        errors: list[_AttemptFailed] = []
        for i in range(self._s.attempts):
            try:
                return await self._attempt(order[i % len(order)], build)
            except _AttemptFailed as e:
                errors.append(e)
        raise self._final_error(errors)

    async def _run_parallel(self, build: _Builder) -> bytes:
        """Round 1 goes to every healthy server (all when none is); later rounds to all servers.
        The first good answer wins; SERVFAIL/REFUSED from one server just waits for the others."""
        loop = asyncio.get_running_loop()
        errors: list[_AttemptFailed] = []
        for rnd in range(self._s.attempts):
            limit = self._s.unhealthy_after
            targets = [s for s in self._servers if s.down_streak < limit] if rnd == 0 else []
            tasks = {loop.create_task(self._attempt(s, build)) for s in (targets or self._servers)}
            try:
                while tasks:
                    done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        exc = t.exception()
                        if exc is None:
                            return t.result()
                        if not isinstance(exc, _AttemptFailed):
                            raise exc
                        errors.append(exc)
            finally:
                for t in tasks:
                    t.cancel()
        raise self._final_error(errors)

    @staticmethod
    def _final_error(errors: list[_AttemptFailed]) -> UpstreamError:
        # Prefer an actual answer (SERVFAIL/REFUSED) over a timeout: it is more informative and its
        # bytes can be relayed by a caller that has nothing stale to serve.
        for e in reversed(errors):
            if e.response is not None:
                return UpstreamError(e.reason, str(e), response=e.response)
        last = errors[-1]
        return UpstreamError(last.reason, str(last))

    async def _attempt(self, srv: _Server, build: _Builder) -> bytes:
        """One try at one server: UDP, then TCP if truncated. Returns a usable answer or raises."""
        query, question, exact = build(srv)
        st = srv.stats
        st.requests += 1
        st.inflight += 1
        t0 = time.monotonic()
        try:
            data = await self._udp(srv, query, question, exact)
            if data[2] & 0x02:
                st.failures["truncated_retry"] += 1
                data = await self._tcp(srv, query, question, exact)
        except _AttemptFailed as e:
            st.failures[e.reason.replace("-", "_")] += 1
            if e.reason in ("timeout", "network"):
                srv.down_streak += 1
                if srv.down_streak == self._s.unhealthy_after:
                    log.warning("upstream %s unhealthy after %d failures (%s)", srv.name, srv.down_streak, e)
            raise
        finally:
            st.inflight -= 1
        st.observe(time.monotonic() - t0)
        self._alive(srv)
        rcode = data[3] & 0x0F
        if rcode == _RCODE_SERVFAIL:
            st.failures["servfail"] += 1
            raise _AttemptFailed("servfail", f"SERVFAIL from {srv.name}", data)
        if rcode == _RCODE_REFUSED:
            st.failures["refused"] += 1
            raise _AttemptFailed("refused", f"REFUSED from {srv.name}", data)
        return data

    def _alive(self, srv: _Server) -> None:
        if srv.down_streak >= self._s.unhealthy_after:
            log.info("upstream %s answers again", srv.name)
        srv.down_streak = 0

    def _socket(self, srv: _Server, kind: int) -> socket.socket:
        sock = socket.socket(srv.family, kind)
        sock.setblocking(False)
        if self._mark:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, self._mark)
            except PermissionError:
                # No CAP_NET_ADMIN: BPF steering excludes our cgroup anyway; stop paying the syscall.
                log.warning("upstream: cannot set SO_MARK %#x (EPERM); continuing without", self._mark)
                self._mark = 0
        return sock

    async def _udp(self, srv: _Server, query: bytes, question: bytes | None, exact: bool) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            sock = self._socket(srv, socket.SOCK_DGRAM)
        except OSError as e:  # EMFILE and friends
            raise _AttemptFailed("network", f"{srv.name}: {e}") from None
        try:
            try:
                sock.connect(srv.addr)  # kernel now filters by source address/port for us
                sock.send(query)
            except OSError as e:
                raise _AttemptFailed("network", f"{srv.name}: {e}") from None
            fut: asyncio.Future[bytes] = loop.create_future()
            qid, opbits = query[:2], query[2] & 0x78
            case_only = False
            st = srv.stats

            def on_readable() -> None:
                nonlocal case_only
                while not fut.done():
                    try:
                        data = sock.recv(_MAX_UDP)
                    except (BlockingIOError, InterruptedError):
                        return
                    except OSError as e:  # ICMP unreachable arrives here as ECONNREFUSED
                        fut.set_exception(_AttemptFailed("network", f"{srv.name}: {e}"))
                        return
                    verdict = _check_reply(data, qid, opbits, question, exact)
                    if verdict == _OK:
                        fut.set_result(data)
                        return
                    # Not ours (late, spoofed, garbage): drop it and keep waiting until the timeout.
                    st.ignored_replies += 1
                    if verdict == _CASE_ONLY:
                        st.case_mismatch += 1
                        case_only = True

            fd = sock.fileno()
            loop.add_reader(fd, on_readable)
            timer = loop.call_later(self._s.timeout, _expire, fut)
            try:
                return await fut
            except _AttemptFailed as e:
                if e.reason == "timeout" and case_only and srv.caps_ok:
                    srv.caps_ok = False
                    log.warning("upstream %s does not echo query name case; 0x20 off for it", srv.name)
                raise
            finally:
                timer.cancel()
                loop.remove_reader(fd)
        finally:
            sock.close()

    async def _tcp(self, srv: _Server, query: bytes, question: bytes | None, exact: bool) -> bytes:
        qid = query[:2]
        try:
            async with asyncio.timeout(self._s.timeout):
                while True:
                    ch = srv.tcp
                    reused = ch is not None and ch.is_open and not ch.busy(qid)
                    if not reused:
                        ch = await self._tcp_connect(srv)
                    assert ch is not None
                    try:
                        data = await ch.ask(query)
                        break
                    except OSError:
                        if not reused:
                            raise
                        ch.close()  # closed under us (idle on the server's side): once more, on a new one
                    finally:
                        if ch is not srv.tcp:
                            ch.close()
        except TimeoutError:  # before OSError: TimeoutError is a subclass of it
            raise _AttemptFailed("timeout", f"{srv.name} over TCP") from None
        except OSError as e:
            raise _AttemptFailed("network", f"{srv.name} over TCP: {e}") from None
        # TCP is not spoofable off-path, but a confused server or middlebox still must not win.
        if _check_reply(data, qid, query[2] & 0x78, question, exact) != _OK:
            raise _AttemptFailed("bad-reply", f"{srv.name}: TCP answer does not match the query")
        return data

    async def _tcp_connect(self, srv: _Server) -> TcpChannel:
        """A new connection; it becomes the server's kept-open one unless another is open already (a
        rare ID clash, or two connects racing): then it serves one query and closes."""
        ch = await TcpChannel.connect(self._socket(srv, socket.SOCK_STREAM), srv.addr, self._s.tcp_idle)
        srv.stats.tcp_connections += 1
        if srv.tcp is None or not srv.tcp.is_open:
            srv.tcp = ch
        return ch

    # ---------------------------------------------------------------- internals: recovery probing

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._s.probe_interval)
            for srv in self._servers:
                if srv.down_streak >= self._s.unhealthy_after:
                    await self._probe(srv)

    async def _probe(self, srv: _Server) -> bool:
        """Any answer at all (any rcode) shows the server is reachable again."""
        randomize = self._s.randomize_case and srv.caps_ok
        query, question = self._build(encode_name(self._s.probe_name), _TYPE_NS, 1, False, False, randomize)
        try:
            await self._udp(srv, query, question, randomize)
        except _AttemptFailed:
            return False
        except OSError as e:  # e.g. EMFILE: keep the prober alive
            log.debug("upstream probe of %s failed: %s", srv.name, e)
            return False
        self._alive(srv)
        return True


__all__ = [
    "FAILURE_KINDS",
    "LATENCY_BUCKETS",
    "REASONS",
    "ServerStats",
    "Upstream",
    "UpstreamError",
    "UpstreamStats",
    "encode_name",
]
