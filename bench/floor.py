"""The floor of the agent's design: the responder's own UDP path (uvloop, one recvmmsg and one
sendmmsg per wake-up through node_agent/serve/mmsg.py) answering every query with its own question (QR
set, NOERROR, no records), and nothing else. Started by peers.py beside the real servers, so the
tables show how much of the agent's per-query cost is the event loop and the syscalls.

    python bench/floor.py ADDR PORT
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node_agent.serve import mmsg  # noqa: E402


async def _main(addr: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    sock.setblocking(False)
    b = mmsg.Batch(sock)

    def readable() -> None:
        for i in range(b.recv()):
            data = b.data(i)
            if data is not None:
                b.queue(i, data[:2] + b"\x81\x80" + data[4:])
        b.flush()

    asyncio.get_running_loop().add_reader(sock.fileno(), readable)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(_main(sys.argv[1], int(sys.argv[2])))
