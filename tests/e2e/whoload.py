"""DNS load from inside a pod that records every query's fate, so a test can say who answered each.

Queries go the way stub resolvers send them: UDP on a fresh connected socket per query, TCP on a
fresh connection per query (so the kernel's connect hook decides each one). Each query is a record
[proto, name, sent, done, outcome, answer]: `sent` is CLOCK_MONOTONIC at the connect (the same
clock as the test's time.monotonic()), `done` when it ended, outcome "ok" (answer: the first A
record's address, or "rcode N"), "timeout", "refused" (ECONNREFUSED), "reset" (TCP closed before
an answer) or "error". Bounded in count and time; SIGTERM ends it early: no new queries, the ones
in flight are waited for (up to TIMEOUT). Prints the line "started" once SIGTERM is handled and
the first query goes out (a pod's Python can take seconds to start: tests wait for it, see
`started`), then one JSON object.

usage: whoload.py SERVER UDP_QPS TCP_QPS SECONDS NAME[,NAME...] TIMEOUT
       whoload.py --flood SERVER QPS COUNT       random names on one UDP socket; prints a summary
Run with the system python3 inside a pod (no dependencies).
"""

import errno
import json
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time


def query(name: str, qid: int) -> bytes:
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"


def _skip_name(msg: bytes, i: int) -> int:
    while i < len(msg):
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n
    return i


def answer_of(msg: bytes) -> str:
    """The first A record's address, else "rcode N"."""
    rcode = msg[3] & 0x0F
    qd, an = struct.unpack(">HH", msg[4:8])
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    for _ in range(an):
        i = _skip_name(msg, i)
        if i + 10 > len(msg):
            break
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[i : i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            return socket.inet_ntoa(msg[i : i + 4])
        i += rdlen
    return f"rcode {rcode}"


class Query:
    def __init__(self, proto: str, name: str, server: str) -> None:
        self.proto, self.name = proto, name
        self.qid = random.randrange(65536)
        self.msg = query(name, self.qid)
        self.buf = b""
        self.sent = time.monotonic()
        self.done: float | None = None
        self.outcome = ""
        self.answer = ""
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.setblocking(False)
        self.err = self.sock.connect_ex((server, 53))

    def finish(self, outcome: str, answer: str = "") -> None:
        self.done, self.outcome, self.answer = time.monotonic(), outcome, answer
        self.sock.close()

    def record(self) -> list[object]:
        return [self.proto, self.name, round(self.sent, 6), None if self.done is None else round(self.done, 6),
                self.outcome, self.answer]


def _failed(e: OSError) -> str:
    return "refused" if e.errno == errno.ECONNREFUSED else "reset" if e.errno == errno.ECONNRESET else "error"


def run(server: str, udp_qps: float, tcp_qps: float, seconds: float, names: list[str], timeout: float) -> None:
    sel = selectors.DefaultSelector()
    done: list[Query] = []
    live: dict[socket.socket, Query] = {}
    start = time.monotonic()
    plan = {"udp": (udp_qps, int(udp_qps * seconds)), "tcp": (tcp_qps, int(tcp_qps * seconds))}
    sent = {"udp": 0, "tcp": 0}
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    print("started", flush=True)

    def close(q: Query, outcome: str, answer: str = "") -> None:
        if q.sock in live:
            del live[q.sock]
            sel.unregister(q.sock)
        q.finish(outcome, answer)
        done.append(q)

    while (not stopped and any(sent[p] < plan[p][1] for p in plan)) or live:
        now = time.monotonic()
        for proto, (rate, total) in plan.items():
            if stopped:
                break
            while sent[proto] < total and now >= start + sent[proto] / rate:
                q = Query(proto, names[(sent["udp"] + sent["tcp"]) % len(names)], server)
                sent[proto] += 1
                if q.err not in (0, errno.EINPROGRESS):
                    q.finish("refused" if q.err == errno.ECONNREFUSED else "error")
                    done.append(q)
                    continue
                if proto == "udp":
                    try:
                        q.sock.send(q.msg)
                    except OSError as e:
                        q.finish(_failed(e))
                        done.append(q)
                        continue
                    sel.register(q.sock, selectors.EVENT_READ)
                else:
                    sel.register(q.sock, selectors.EVENT_WRITE)
                live[q.sock] = q
        for key, events in sel.select(timeout=0.001):
            q = live[key.fileobj]  # type: ignore[index]
            if events & selectors.EVENT_WRITE:  # TCP connected, or failed to
                err = q.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    close(q, "refused" if err == errno.ECONNREFUSED else "error")
                    continue
                try:
                    q.sock.send(struct.pack(">H", len(q.msg)) + q.msg)
                except OSError as e:
                    close(q, _failed(e))
                    continue
                sel.modify(q.sock, selectors.EVENT_READ)
                continue
            try:
                data = q.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError as e:
                close(q, _failed(e))
                continue
            if q.proto == "udp":
                if len(data) >= 12 and struct.unpack(">H", data[:2])[0] == q.qid:
                    close(q, "ok", answer_of(data))
                continue
            if not data:
                close(q, "reset")
                continue
            q.buf += data
            if len(q.buf) >= 2 and len(q.buf) >= 2 + struct.unpack(">H", q.buf[:2])[0]:
                msg = q.buf[2:]
                ok = len(msg) >= 12 and struct.unpack(">H", msg[:2])[0] == q.qid
                close(q, "ok" if ok else "error", answer_of(msg) if ok else "")
        now = time.monotonic()
        for q in [q for q in live.values() if now - q.sent > timeout]:
            close(q, "timeout")
        if now - start > seconds + timeout + 5:
            break
    for q in list(live.values()):
        close(q, "timeout")
    done.sort(key=lambda q: q.sent)
    print(json.dumps({"start": start, "queries": [q.record() for q in done]}))


def started(proc: "subprocess.Popen[str]") -> "subprocess.Popen[str]":
    """For the tests: `proc` (this script's load, stdout piped) once it is sending. What a test does
    "under load" must not come before the load: under emulation the pod's Python starts in seconds."""
    assert proc.stdout is not None
    line = proc.stdout.readline()  # EOF if it died first
    assert line == "started\n", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def result(stdout: str) -> dict[str, object]:
    """The JSON object a load printed after its "started" line."""
    out: dict[str, object] = json.loads(stdout.splitlines()[-1])
    return out


def flood(server: str, qps: float, count: int) -> None:
    """`count` random names (each one a cache miss) at `qps` on one connected UDP socket."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((server, 53))
    s.setblocking(False)
    tag = os.urandom(3).hex()
    sent = answered = 0
    t0 = time.monotonic()
    while sent < count and time.monotonic() - t0 < count / qps + 10:
        while sent < count and time.monotonic() >= t0 + sent / qps:
            try:
                s.send(query(f"n{sent}-{tag}.flood.test", sent & 0xFFFF))
            except OSError:
                pass
            sent += 1
        while True:
            try:
                s.recv(4096)
                answered += 1
            except OSError:
                break
        time.sleep(0.0005)
    print(json.dumps({"sent": sent, "answered": answered, "seconds": round(time.monotonic() - t0, 2)}))


if __name__ == "__main__":
    if sys.argv[1] == "--flood":
        flood(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
    else:
        run(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5].split(","),
            float(sys.argv[6]))
