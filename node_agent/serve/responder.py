"""The responder's network side: UDP and TCP on the listen address.

Every datagram first gets one synchronous try at the fast path (a cache hit costs no task, no
coroutine, no message parsing); only misses become tasks. TCP carries pipelined queries, answered as they
complete, with an idle timeout. What a query means is the answerer's business (serve/protocol.py),
not this module's.
"""

from __future__ import annotations

import asyncio
import ctypes as ct
import logging
import socket
import struct
from dataclasses import dataclass

from node_agent.serve import mmsg
from node_agent.serve.protocol import Answerer
from node_agent.settings import ListenSettings

log = logging.getLogger(__name__)


@dataclass
class ResponderStats:
    udp_received: int = 0
    udp_dropped: int = 0  # over udp_max_pending, or unanswerable
    tcp_connections: int = 0
    tcp_queries: int = 0
    tcp_idle_closed: int = 0


SO_ATTACH_REUSEPORT_CBPF = 51
_BPF_RET_K = 0x06


def _steer_group_to_newest(sock: socket.socket) -> None:
    """Hand-over: make the kernel send every new datagram / connection of this SO_REUSEPORT group to
    the socket at index 1, the one a successor adds next to the old agent's. With one socket in the
    group the index is out of range and the kernel falls back to its hash, i.e. to that socket.
    So the old agent gets no new work and can drain what it holds, instead of losing what the
    kernel's hash would have kept giving it until it closed."""
    insn = ct.c_uint64 * 1
    prog = insn(_BPF_RET_K | (1 << 32))  # struct sock_filter {code=RET|K, jt=0, jf=0, k=1}
    fprog = struct.pack("HL", 1, ct.addressof(prog))  # struct sock_fprog {len, filter*}
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def _socket(family: int, kind: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    # SO_REUSEPORT: a new agent binds the same address before the old one lets go (hitless upgrade).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if kind == socket.SOCK_DGRAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((address, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(1024)  # join the listening reuseport group before steering it
    _steer_group_to_newest(sock)
    sock.setblocking(False)
    return sock


class _UdpReader:
    """UDP without a transport: one event-loop callback takes a batch of datagrams with one
    recvmmsg, answers the hits inline and sends them with one sendmmsg (node_agent/serve/mmsg.py).
    asyncio's datagram transport wakes once per datagram and copies through a protocol object;
    this is the measured cheaper path (bench/RESULTS.md). Misses become tasks."""

    def __init__(self, responder: Responder, sock: socket.socket) -> None:
        self.r = responder
        self.sock = sock
        self.batch = mmsg.Batch(sock)
        self.loop = asyncio.get_running_loop()
        self.reading = True
        self.loop.add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        """One batch per wake-up: the loop is level-triggered, so what is left wakes it again
        after other ready callbacks had their turn."""
        r = self.r
        stats = r.stats
        fast = r.answerer.answer_fast
        b = self.batch
        try:
            n = b.recv()
        except OSError as e:
            log.debug("udp receive: %s", e)
            return
        stats.udp_received += n
        for i, data, reply in b.answer(n, fast):
            if data is None:  # longer than any query we take over UDP
                stats.udp_dropped += 1
            elif reply is not None:
                self.send(reply, b.address(i))
            elif len(r.pending) >= r.settings.udp_max_pending:
                stats.udp_dropped += 1
            else:
                task = asyncio.ensure_future(self._slow(data, b.address(i)))
                r.pending.add(task)
                task.add_done_callback(r.pending.discard)
        for i, reply in b.flush():
            self.send(reply, b.address(i))

    def send(self, reply: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(reply, addr)
        except (BlockingIOError, InterruptedError):
            self.r.stats.udp_dropped += 1  # send buffer full: the client retries
        except OSError as e:
            log.debug("udp send to %s: %s", addr[0], e)

    async def _slow(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = await self.r.answerer.answer(data, addr[0], "udp")
        except Exception:  # a bug must cost one query, not the listener
            log.exception("query from %s failed", addr[0])
            return
        if reply is None:
            self.r.stats.udp_dropped += 1
        elif self.sock.fileno() >= 0:
            self.send(reply, addr)

    def stop_reading(self) -> None:
        """Take no new wake-ups, but answer what is already queued in the socket."""
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.sock.fileno())
            while True:
                before = self.r.stats.udp_received
                self.readable()
                if self.r.stats.udp_received == before:
                    break

    def close(self) -> None:
        self.stop_reading()
        self.sock.close()


class Responder:
    def __init__(self, settings: ListenSettings, answerer: Answerer) -> None:
        self.settings = settings
        self.answerer = answerer
        self.stats = ResponderStats()
        self.pending: set[asyncio.Future[None]] = set()
        self._udp: list[_UdpReader] = []
        self._tcp: list[asyncio.base_events.Server] = []
        self._clients: set[asyncio.Task[None]] = set()
        self._sockets: list[socket.socket] = []

    @property
    def listening(self) -> bool:
        return bool(self._udp) and len(self._udp) == len(self._tcp)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (UDP and TCP per address), open until close(). The kernel side
        registers them so the steering programs stop the moment they close."""
        return tuple(self._sockets)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.settings.address, self.settings.address6) if a)

    async def start(self) -> None:
        s = self.settings
        for address in self.addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            udp_sock = _socket(family, socket.SOCK_DGRAM, address, s.port)
            self._udp.append(_UdpReader(self, udp_sock))
            tcp_sock = _socket(family, socket.SOCK_STREAM, address, s.port)
            self._tcp.append(await asyncio.start_server(self._tcp_client, sock=tcp_sock, backlog=1024))
            self._sockets += [udp_sock, tcp_sock]
            log.info("responder listening on %s port %d (udp, tcp)", address, s.port)

    async def stop_accepting(self) -> None:
        """First step of a hand-over: stop taking new work; the other agent's sockets take it."""
        for server in self._tcp:
            server.close()
        for reader in self._udp:
            reader.stop_reading()  # queued datagrams are answered, not dropped

    async def drain(self, timeout: float = 5.0) -> None:
        """Let queries already accepted finish (answers go out through the old sockets' fds)."""
        pending = list(self.pending) + list(self._clients)
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def close(self) -> None:
        await self.stop_accepting()
        await self.drain(timeout=2.0)
        for t in list(self._clients):
            t.cancel()
        for server in self._tcp:
            await server.wait_closed()
        for reader in self._udp:
            reader.close()  # after the drain: slow answers still go out through this socket
        self._udp, self._tcp, self._sockets = [], [], []

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        # A client that resets before we run has no peername (None): refuse it before it takes one of
        # the tcp_max_clients slots (the try/finally below is what gives a slot back).
        peer = writer.get_extra_info("peername")
        if len(self._clients) >= self.settings.tcp_max_clients or not peer:
            writer.close()
            return
        self._clients.add(task)
        self.stats.tcp_connections += 1
        client = peer[0]
        inflight: set[asyncio.Task[None]] = set()
        lock = asyncio.Lock()

        async def one(query: bytes) -> None:
            reply = self.answerer.answer_fast(query, client, "tcp")
            if reply is None:
                reply = await self.answerer.answer(query, client, "tcp")
            if reply is None:
                return
            async with lock:  # pipelined answers go out whole, in completion order
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()

        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.settings.tcp_idle)
                    (size,) = struct.unpack("!H", head)
                    # A client that sends a prefix and then stalls is cut off by the same bound.
                    query = await asyncio.wait_for(reader.readexactly(size), self.settings.tcp_idle)
                except TimeoutError:
                    self.stats.tcp_idle_closed += 1
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                self.stats.tcp_queries += 1
                t = asyncio.ensure_future(one(query))
                inflight.add(t)
                t.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.wait(inflight, timeout=self.settings.tcp_idle)
        except Exception:
            log.exception("tcp client %s", client)
        finally:
            self._clients.discard(task)
            writer.close()
