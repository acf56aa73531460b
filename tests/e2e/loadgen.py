"""A steady DNS load from inside a pod, the way stub resolvers ask: one connected UDP socket per query
(so the kernel's connect hook sees each one). Bounded in count and time. Prints a JSON summary.

usage: loadgen.py SERVER RATE SECONDS NAME[,NAME...] [TIMEOUT]
Run with the system python3 inside a pod (no dependencies).
"""

import json
import random
import selectors
import socket
import struct
import sys
import time
from typing import cast


def query(name: str, qid: int) -> bytes:
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"


def main() -> None:
    server, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    names = sys.argv[4].split(",")
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
    total = int(rate * seconds)
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple[int, float]] = {}
    lat: list[float] = []
    rcodes: dict[int, int] = {}
    lost_at: list[float] = []
    start = time.monotonic()
    sent = 0
    while sent < total or pending:
        now = time.monotonic()
        while sent < total and now >= start + sent / rate:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            qid = random.randrange(65536)
            try:
                s.connect((server, 53))
                s.send(query(names[sent % len(names)], qid))
            except OSError:
                rcodes[-1] = rcodes.get(-1, 0) + 1
                s.close()
                sent += 1
                continue
            sel.register(s, selectors.EVENT_READ)
            pending[s] = (qid, now)
            sent += 1
        for key, _ in sel.select(timeout=0.002):
            s = cast(socket.socket, key.fileobj)  # registered above: sockets only
            try:
                data = s.recv(4096)
            except OSError:
                continue
            qid, t0 = pending[s]
            if len(data) < 4 or struct.unpack(">H", data[:2])[0] != qid:
                continue
            lat.append(time.monotonic() - t0)
            rc = data[3] & 0x0F
            rcodes[rc] = rcodes.get(rc, 0) + 1
            sel.unregister(s)
            s.close()
            del pending[s]
        now = time.monotonic()
        for s, (_, t0) in list(pending.items()):
            if now - t0 > timeout:
                lost_at.append(round(t0 - start, 3))
                sel.unregister(s)
                s.close()
                del pending[s]
        if now - start > seconds + timeout + 5:
            break
    lat.sort()

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

    print(json.dumps({"sent": sent, "answered": len(lat), "noerror": rcodes.get(0, 0),
                      "failed": sum(n for rc, n in rcodes.items() if rc != 0), "lost": len(lost_at),
                      "lost_at": lost_at, "rcodes": rcodes, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}))


if __name__ == "__main__":
    main()
