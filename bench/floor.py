"""The floor of any uvloop DatagramProtocol responder: answers every query with its own question
(QR set, NOERROR, no records) and does nothing else. Started by peers.py beside the real servers, so
the tables show how much of the agent's per-query cost is the event loop and the syscalls.

    python bench/floor.py ADDR PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.t.sendto(data[:2] + bytes((0x81, 0x80)) + data[4:], addr)


async def _main(addr: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(_Echo, local_addr=(addr, port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(_main(sys.argv[1], int(sys.argv[2])))
