"""Who steers (kernel/loader.py): taking over, beating, handing over, taking back, against the map
fake. Two Interceptors on one FakeMaps are two agents on one node; their responder sockets are real
loopback sockets, so the fake's na_socks drops an entry when its socket closes, as the kernel does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from node_agent.kernel import maps
from node_agent.kernel.features import Features
from node_agent.kernel.loader import Interceptor
from node_agent.kernel.maps import CONST, FakeMaps, u32
from node_agent.settings import InterceptSettings


def listeners() -> list[socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    return [udp, tcp]


class Node:
    """One node's maps and the agents started on it."""

    def __init__(self) -> None:
        self.maps = FakeMaps()
        self.sockets: list[socket.socket] = []

    def agent(self, pid: int, *, socks: maps.SockTable | None = None, features: Features | None = None) -> Interceptor:
        ic = Interceptor(InterceptSettings(), _bpf=self.maps, _pid=pid, features=features)
        ic._socks = self.maps.socks if socks is None else socks
        return ic

    def start(self, ic: Interceptor) -> list[socket.socket]:
        """What Agent.start does once the responder listens (attach without the links)."""
        mine = listeners()
        self.sockets += mine
        ic._sockets = mine
        ic.take_over()
        return mine

    def heartbeat(self) -> tuple[int, int]:
        hb = self.maps[maps.HEARTBEAT][u32(0)]
        return int(hb.mono_ns), int(hb.owner_pid)

    def flags(self) -> int:
        return int(self.maps[maps.CONFIG][u32(0)].flags)


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    yield n
    for s in n.sockets:
        s.close()


def test_take_over_registers_the_sockets_then_owns_then_beats(node: Node) -> None:
    a = node.agent(100)
    mine = node.start(a)
    assert a.socket_check and node.flags() & CONST["NA_SOCKET_CHECK"]
    assert {maps.sock_kind(s): maps.socket_cookie(s) for s in mine} == {
        CONST["NA_SOCK_UDP4"]: node.maps.socks.cookie(CONST["NA_SOCK_UDP4"]),
        CONST["NA_SOCK_TCP4"]: node.maps.socks.cookie(CONST["NA_SOCK_TCP4"]),
    }
    order = [w.map for w in node.maps.writes if w.map in (maps.SOCKS, maps.AGENT, maps.HEARTBEAT)]
    assert order == [maps.SOCKS, maps.SOCKS, maps.AGENT, maps.HEARTBEAT]  # sockets, owner, beat
    assert a.owner() == 100 and node.heartbeat()[1] == 100


def test_a_predecessor_stops_beating_once_a_successor_took_over_and_hands_over(node: Node) -> None:
    old, new = node.agent(100), node.agent(200)
    node.start(old)
    assert old.beat()
    node.start(new)
    before = len(node.maps.writes)
    assert not old.beat()  # stays quiet: writes nothing at all
    assert node.maps.writes[before:] == []
    assert new.beat() and node.heartbeat()[1] == 200
    t0 = time.monotonic()
    assert old.stop() == 200
    assert time.monotonic() - t0 < 0.1
    assert node.heartbeat() != (0, 0), "a hand-over must never zero the successor's heartbeat"


def test_a_late_beat_of_the_predecessor_cannot_undo_the_hand_over(node: Node) -> None:
    """The race of the old design: the predecessor read "I own it", the successor took over, then
    the predecessor's beat landed with its own pid. Ownership is not in the beat, so nothing is lost."""
    old, new = node.agent(100), node.agent(200)
    node.start(old)
    node.start(new)
    old._write_beat()  # the beat that was already on its way
    assert node.heartbeat()[1] == 100
    assert new.beat(), "the successor must keep beating"
    assert not old.beat()
    assert old.hand_over() == 200
    assert node.heartbeat()[0] != 0


def test_hand_over_waits_for_a_successor_between_its_sockets_and_its_ownership(node: Node) -> None:
    old, new = node.agent(100), node.agent(200)
    node.start(old)
    new_socks = listeners()
    node.sockets += new_socks
    new._sockets = new_socks
    assert new._register()  # the successor's sockets are in; ownership comes 50 ms later
    timer = threading.Timer(0.05, new.take_over)
    timer.start()
    try:
        t0 = time.monotonic()
        assert old.hand_over(wait=2.0) == 200
        assert 0.04 <= time.monotonic() - t0 < 1.0
    finally:
        timer.join()
    assert node.heartbeat()[0] != 0


def test_no_successor_zeroes_the_heartbeat_at_once(node: Node) -> None:
    a = node.agent(100)
    node.start(a)
    t0 = time.monotonic()
    assert a.stop() is None
    assert time.monotonic() - t0 < 0.1
    assert node.heartbeat() == (0, 0)  # the programs fail open (cause: stopped) at the next query


def test_a_predecessor_takes_back_when_the_successors_sockets_close(node: Node) -> None:
    old, new = node.agent(100), node.agent(200)
    node.start(old)
    theirs = node.start(new)
    assert not old.beat()
    for s in theirs:
        s.close()  # the successor dies: the kernel drops its sockets from na_socks
    assert old.beat() and old.owner() == 100
    assert all(node.maps.socks.cookie(k) == c for k, c in old._mine.items())
    assert old.stop() is None  # its own stop then finds no successor


def test_a_stuck_successor_is_not_taken_from(node: Node) -> None:
    """Alive but not beating (SIGSTOP): its sockets stay in the reuseport group and get the new
    queries, so steering back to the predecessor would steer into the stuck one. Fail-open (after the
    bound) is the programs' business."""
    old, new = node.agent(100), node.agent(200)
    node.start(old)
    node.start(new)
    for _ in range(3):
        assert not old.beat()
    assert old.owner() == 200


def test_a_successor_that_never_attached_leaves_the_running_agent_alone(node: Node) -> None:
    running, failed = node.agent(100), node.agent(200)
    node.start(running)
    beat = node.heartbeat()
    assert failed.stop() is None  # its start failed before it took over: nothing to hand over
    assert node.heartbeat() == beat and running.owner() == 100


class RefusingSockMap:
    """A kernel that has sockmaps but will not hold these sockets (EOPNOTSUPP)."""

    def set(self, kind: int, sock: socket.socket) -> None:
        raise OSError(95, "Operation not supported")

    def cookie(self, kind: int) -> int | None:
        return None

    def delete(self, kind: int) -> None:
        pass

    def close(self) -> None:
        pass


def without_lookup() -> Features:
    from node_agent.kernel import features

    found = {f.name: True for f in features.FEATURES} | {"socket_lookup": False}
    return Features("5.x", found, {"socket_lookup": "refused"})


@pytest.mark.parametrize("how", ["kernel refuses the sockets", "programs built without the lookup"])
def test_heartbeat_only_hand_over_keeps_ownership_explicit(node: Node, how: str) -> None:
    """Without the socket check the heartbeat alone decides; the hand-over still rests on na_agent,
    so a predecessor's late beat cannot make it fail open."""
    kw: dict[str, object] = {"socks": RefusingSockMap()} if how.startswith("kernel") else {"features": without_lookup()}
    old, new = node.agent(100, **kw), node.agent(200, **kw)  # type: ignore[arg-type]
    node.start(old)
    node.start(new)
    assert not old.socket_check and not new.socket_check
    assert not node.flags() & CONST["NA_SOCKET_CHECK"]
    old._write_beat()
    assert new.beat() and not old.beat()
    assert old.stop() == 200 and node.heartbeat()[0] != 0
    assert new.stop() is None and node.heartbeat() == (0, 0)


def test_liveness_and_the_cause_counts(node: Node) -> None:
    a = node.agent(100)
    mine = node.start(a)
    live = a.liveness()
    assert live == {"sockets": ["udp4", "tcp4"], "owner_pid": 100, "failed_open": False, "cause": ""}
    # What the programs write when they fail open because the sockets are gone.
    state = node.maps[maps.STATE]
    leaf = state.Leaf()
    leaf.failed_open, leaf.cause = 1, CONST["NA_CAUSE_NO_SOCKET"]
    state[u32(0)] = leaf
    causes = node.maps[maps.CAUSES]
    per_cpu = causes.Leaf()
    per_cpu[0], per_cpu[1] = 1, 1
    causes[u32(CONST["NA_CAUSE_NO_SOCKET"])] = per_cpu
    for s in mine:
        s.close()
    live = a.liveness()
    assert live["sockets"] == [] and live["failed_open"] and live["cause"] == "no_socket"
    stats = a.stats()
    assert stats["failopen_start_no_socket"] == 2
    assert stats["failopen_start_stale_heartbeat"] == stats["failopen_start_stopped"] == 0
