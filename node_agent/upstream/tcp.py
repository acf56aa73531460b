"""DNS over TCP to an upstream (the retry of a truncated UDP answer, istio#61371: answers over 512
octets must work): one kept-open, pipelined connection per server (RFC 7766 6.2.1), so a burst of
large answers costs one handshake, not one each.

`TcpChannel` is one connection. Queries are written as they come; answers are matched to them by ID,
in whatever order the server sends them. It closes itself after `idle` seconds with nothing in
flight, and on any error or EOF; the queries still waiting then get ConnectionError, so the caller
can try again on a new one (a server closing an idle connection just as we write is normal, not a
failure). An answer whose ID nobody waits for (a query that gave up, a confused server) is dropped.

`TcpLink` is a server's end of it: the kept-open channel, reconnecting when it has closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from node_agent.dns.wire import REPLY_OK, match_reply
from node_agent.upstream.policy import AttemptFailed
from node_agent.upstream.udp import Peer, SocketOpener


class TcpChannel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle: float) -> None:
        self._reader = reader
        self._writer = writer
        self._idle = idle
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._idle_timer: asyncio.TimerHandle | None = None
        self.is_open = True
        self._read_task = asyncio.ensure_future(self._read())
        self._arm_idle()

    @classmethod
    async def connect(cls, sock: socket.socket, addr: tuple[str, int], idle: float) -> TcpChannel:
        """`sock`: a non-blocking stream socket, options set, not yet connected (closed on failure)."""
        try:
            await asyncio.get_running_loop().sock_connect(sock, addr)
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        return cls(reader, writer, idle)

    def busy(self, qid: bytes) -> bool:
        """A query with this ID is already in flight here (answers could not be told apart)."""
        return qid in self._pending

    async def ask(self, query: bytes) -> bytes:
        """Send `query`, wait for the answer with its ID. Bound it with a timeout from outside."""
        if not self.is_open:
            raise ConnectionError("connection closed")
        qid = query[:2]
        if qid in self._pending:
            raise ValueError("a query with this ID is already in flight on this connection")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[qid] = fut
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        try:
            self._writer.write(struct.pack("!H", len(query)) + query)
            await self._writer.drain()
            return await fut
        finally:
            if self._pending.get(qid) is fut:
                del self._pending[qid]
            self._arm_idle()

    def close(self, why: str = "closed") -> None:
        if not self.is_open:
            return
        self.is_open = False
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._read_task is not asyncio.current_task():
            self._read_task.cancel()
        self._writer.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(why))
        self._pending.clear()

    def _arm_idle(self) -> None:
        if self.is_open and not self._pending and self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(self._idle, self.close, "idle")

    async def _read(self) -> None:
        why = "closed by the server"
        try:
            while True:
                (size,) = struct.unpack("!H", await self._reader.readexactly(2))
                data = await self._reader.readexactly(size)
                fut = self._pending.get(data[:2])
                if fut is not None and not fut.done():  # else: nobody waits for it any more; dropped
                    fut.set_result(data)
        except asyncio.IncompleteReadError:
            pass
        except OSError as e:
            why = str(e)
        with contextlib.suppress(RuntimeError):  # the loop may be closing
            self.close(why)


class TcpLink:
    """The TCP side of one server: `exchange` asks over the kept-open channel, opening one when there
    is none (or it has closed)."""

    def __init__(self, peer: Peer, open_socket: SocketOpener, idle: float) -> None:
        self._peer = peer
        self._open_socket = open_socket
        self._idle = idle
        self.channel: TcpChannel | None = None

    async def exchange(self, query: bytes, question: bytes | None, exact: bool, timeout: float) -> bytes:
        """The answer to `query` over TCP, checked like a UDP one (`wire.match_reply`). Raises
        AttemptFailed: "timeout", "network", or "bad-reply" for an answer that does not match."""
        peer = self._peer
        qid = query[:2]
        try:
            async with asyncio.timeout(timeout):
                while True:
                    ch = self.channel
                    reused = ch is not None and ch.is_open and not ch.busy(qid)
                    if not reused:
                        ch = await self._connect()
                    assert ch is not None
                    try:
                        data = await ch.ask(query)
                        break
                    except OSError:
                        if not reused:
                            raise
                        ch.close()  # closed under us (idle on the server's side): once more, on a new one
                    finally:
                        if ch is not self.channel:
                            ch.close()
        except TimeoutError:  # before OSError: TimeoutError is a subclass of it
            raise AttemptFailed("timeout", f"{peer.name} over TCP") from None
        except OSError as e:
            raise AttemptFailed("network", f"{peer.name} over TCP: {e}") from None
        # TCP is not spoofable off-path, but a confused server or middlebox still must not win.
        if match_reply(data, qid, query[2] & 0x78, question, exact) != REPLY_OK:
            raise AttemptFailed("bad-reply", f"{peer.name}: TCP answer does not match the query")
        return data

    async def _connect(self) -> TcpChannel:
        """A new connection; it becomes the kept-open one unless another is open already (a rare ID
        clash, or two connects racing): then it serves one query and closes."""
        peer = self._peer
        sock = self._open_socket(peer.family, socket.SOCK_STREAM)
        ch = await TcpChannel.connect(sock, peer.addr, self._idle)
        peer.stats.tcp_connections += 1
        if self.channel is None or not self.channel.is_open:
            self.channel = ch
        return ch

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
