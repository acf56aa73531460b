"""A fake upstream DNS server for tests: UDP and TCP on one port of a loopback address.

handler(request, raw, over_tcp, peer) -> the datagram(s) to send back, in order (None: stay silent;
a list: several, e.g. garbage first). `delay` seconds (or delay(request)) before answering. close()
closes the ports, so later queries get ICMP port unreachable, like a dead kube-dns pod.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from dnslib import DNSRecord

Reply = bytes | list[bytes] | None
Handler = Callable[[DNSRecord, bytes, bool, tuple[str, int]], Reply]


class FakeDNS:
    def __init__(self, handler: Handler, delay: float | Callable[[DNSRecord], float] = 0.0,
                 host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.delay = delay if callable(delay) else (lambda _req, d=delay: d)
        self.host = host
        self.udp: list[DNSRecord] = []  # requests seen, by transport
        self.tcp: list[DNSRecord] = []
        self.udp_raw: list[bytes] = []
        self.tcp_connections = 0  # accepted so far
        self.tcp_close_after = 0  # > 0: close each TCP connection after this many answers (idle servers do)
        self.tcp_hangup_on = 0  # > 0: close a TCP connection, unanswered, when its N-th query arrives
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def udp_count(self) -> int:
        return len(self.udp)

    @property
    def tcp_count(self) -> int:
        return len(self.tcp)

    async def start(self) -> FakeDNS:
        loop = asyncio.get_running_loop()
        server = self

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                t = loop.create_task(server._udp_query(data, addr))
                server._tasks.add(t)
                t.add_done_callback(server._tasks.discard)

        for _ in range(20):  # UDP port 0 first, then TCP on the same number (rarely taken)
            transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=(self.host, 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._server = await asyncio.start_server(self._tcp_conn, self.host, port)
            except OSError:
                transport.close()
                continue
            self._transport, self.port = transport, port
            return self
        raise RuntimeError("no free port pair")

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._transport is not None:
            self._transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _replies(self, data: bytes, tcp: bool, peer: tuple[str, int]) -> tuple[list[bytes], float]:
        req = DNSRecord.parse(data)
        (self.tcp if tcp else self.udp).append(req)
        if not tcp:
            self.udp_raw.append(data)
        out = self.handler(req, data, tcp, peer)
        return ([] if out is None else out if isinstance(out, list) else [out]), self.delay(req)

    async def _udp_query(self, data: bytes, addr: tuple[str, int]) -> None:
        replies, delay = self._replies(data, False, addr)
        if delay:
            await asyncio.sleep(delay)
        for r in replies:
            if self._transport is not None:
                self._transport.sendto(r, addr)

    async def _tcp_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tcp_connections += 1
        answered = 0
        try:
            while not self.tcp_close_after or answered < self.tcp_close_after:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(n)
                if self.tcp_hangup_on and answered + 1 == self.tcp_hangup_on:
                    break
                replies, delay = self._replies(data, True, writer.get_extra_info("peername"))
                if delay:
                    await asyncio.sleep(delay)
                for r in replies:
                    writer.write(struct.pack("!H", len(r)) + r)
                await writer.drain()
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
