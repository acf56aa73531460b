"""Batched UDP I/O (node_agent/serve/mmsg.py) on real loopback sockets: what recvmmsg hands over per slot
(bytes, sender), that sendmmsg answers each sender with its own answer, and the edges: oversized
queries, answers too long for a slot, misses in the middle of a batch, IPv6."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from node_agent.serve import mmsg


@contextlib.contextmanager
def _rig(clients: int = 1, host: str = "127.0.0.1") -> Iterator[tuple[mmsg.Batch, list[socket.socket], Any]]:
    """A non-blocking UDP server with its Batch, and `clients` bound client sockets (2 s timeouts);
    yields (batch, clients, server address); closes everything."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_DGRAM)
    socks = [server]
    try:
        server.bind((host, 0))
        server.setblocking(False)
        for _ in range(clients):
            c = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(c)
            c.bind((host, 0))
            c.settimeout(2)
        yield mmsg.Batch(server), socks[1:], server.getsockname()[:2]
    finally:
        for sock in socks:
            sock.close()


def _received(b: mmsg.Batch) -> int:
    """recv() once datagrams are there (loopback queues them at sendto; this only guards a slow box)."""
    deadline = time.monotonic() + 2
    while (n := b.recv()) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def test_batch_round_trip_answers_each_sender_with_its_own_answer() -> None:
    with _rig(clients=5) as (b, clients, server):
        for k, c in enumerate(clients):
            c.sendto(b"query-%d" % k, server)
        assert _received(b) == 5
        seen = {}
        for i in range(5):
            data = b.data(i)
            assert data is not None and data.startswith(b"query-")
            assert b.client(i) == "127.0.0.1"
            seen[b.address(i)] = data
            if data != b"query-2":  # a miss in the middle: no answer from this batch
                assert b.queue(i, b"answer-" + data[6:])
        assert set(seen) == {c.getsockname() for c in clients}
        assert b.flush() == []
        for k, c in enumerate(clients):
            if k == 2:
                c.settimeout(0.2)
                with pytest.raises(TimeoutError):
                    c.recv(100)
            else:
                assert c.recv(100) == b"answer-%d" % k
        assert b.recv() == 0  # nothing left: no error, no wait


def test_oversized_query_is_flagged_and_long_answer_is_refused_by_the_slot() -> None:
    with _rig() as (b, [c], server):
        c.sendto(b"x" * (mmsg.SLOT + 1), server)
        c.sendto(b"small", server)
        assert _received(b) == 2
        assert b.data(0) is None  # cut by the slot: never parsed as a query
        assert b.data(1) == b"small"
        assert not b.queue(1, b"y" * (mmsg.SLOT + 1))
        assert b.flush() == []


def test_ipv6_senders_are_read_and_answered() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with contextlib.ExitStack() as stack:
        try:
            b, [c], server = stack.enter_context(_rig(host="::1"))
        except OSError:
            pytest.skip("no ::1 here")
        c.sendto(b"q6", server)
        assert _received(b) == 1
        assert b.client(0) == "::1"
        assert b.address(0) == ("::1", c.getsockname()[1])
        assert b.queue(0, b"a6")
        assert b.flush() == []
        assert c.recv(10) == b"a6"


def test_a_full_batch_leaves_the_rest_for_the_next_call() -> None:
    with _rig() as (b, [c], server):
        n = mmsg.BATCH + 3
        for k in range(n):
            c.sendto(b"%d" % k, server)
        first = _received(b)
        assert first == mmsg.BATCH
        assert [b.data(i) for i in range(first)] == [b"%d" % k for k in range(first)]
        assert b.recv() == 3
        assert [b.data(i) for i in range(3)] == [b"%d" % k for k in range(first, n)]


def test_answer_loop_sends_hits_and_hands_back_the_rest() -> None:
    with _rig() as (b, [c], server):
        for q in (b"hit-1", b"miss", b"x" * (mmsg.SLOT + 1), b"long", b"hit-2"):
            c.sendto(q, server)
        assert _received(b) == 5
        asked: list[tuple[bytes, str, str]] = []

        def fast(data: bytes, client: str, transport: str) -> bytes | None:
            asked.append((data, client, transport))
            if data == b"miss":
                return None
            if data == b"long":
                return b"L" * (mmsg.SLOT + 1)
            return b"ans-" + data

        left = b.answer(5, fast)
        assert [(i, d, len(r) if r else r) for i, d, r in left] == [
            (1, b"miss", None), (2, None, None), (3, b"long", mmsg.SLOT + 1)]
        assert [a[0] for a in asked] == [b"hit-1", b"miss", b"long", b"hit-2"]  # the cut one is never asked
        assert {a[1:] for a in asked} == {("127.0.0.1", "udp")}
        assert b.flush() == []
        assert [c.recv(100), c.recv(100)] == [b"ans-hit-1", b"ans-hit-2"]
        assert b.address(1) == c.getsockname()


def test_a_failing_fast_path_costs_one_query_not_the_batch() -> None:
    with _rig() as (b, [c], server):
        for q in (b"ok-1", b"boom", b"ok-2"):
            c.sendto(q, server)
        assert _received(b) == 3

        def fast(data: bytes, client: str, transport: str) -> bytes | None:
            if data == b"boom":
                raise RuntimeError("a bug")
            return b"ans-" + data

        assert b.answer(3, fast) == [(1, b"boom", None)]  # handed to the slow path like a miss
        assert b.flush() == []
        assert [c.recv(100), c.recv(100)] == [b"ans-ok-1", b"ans-ok-2"]


def test_answers_the_kernel_did_not_take_are_handed_back_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    real = mmsg._sendmmsg

    def first_only(fd: int, msgs: int, vlen: int, flags: int) -> int:
        sent = int(real(fd, msgs, 1, flags))  # the kernel takes one, then the send buffer is "full"
        monkeypatch.setattr(mmsg, "_sendmmsg", lambda *_: -1)
        return sent

    monkeypatch.setattr(mmsg, "_sendmmsg", first_only)
    with _rig(clients=3) as (b, clients, server):
        for k, c in enumerate(clients):
            c.sendto(b"q%d" % k, server)
        assert _received(b) == 3
        by_slot = {i: clients.index(next(c for c in clients if c.getsockname() == b.address(i))) for i in range(3)}
        for i in range(3):
            assert b.queue(i, b"a%d" % by_slot[i])
        left = b.flush()
        assert [(i, a) for i, a in left] == [(i, b"a%d" % by_slot[i]) for i in (1, 2)]
        assert clients[by_slot[0]].recv(10) == b"a%d" % by_slot[0]
