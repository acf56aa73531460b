"""kernel/answerpath.KernelAnswers' bookkeeping over stand-ins for the maps and the attacher (no
kernel): which entries go in, their hit counters read back before every rewrite or removal (so no
kernel answer goes uncounted), expiry and prefetch windows on the tick, the capacity bound, flushes,
and the per-pod attach work (a pod's two addresses share one veth)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from dnslib import QTYPE, RR, A, DNSHeader, DNSQuestion, DNSRecord

from node_agent.dns import wire
from node_agent.kernel import answers, tc
from node_agent.kernel.answerpath import KernelAnswers
from node_agent.mesh.model import Pod
from node_agent.resolve.cache import Cache, RawEntry

SHARED = "*"


@dataclass
class FakeMaps:
    entries: dict[tuple[int, bytes], RawEntry] = field(default_factory=dict)
    slot_of: dict[tuple[int, bytes], int] = field(default_factory=dict)
    counters: list[int] = field(default_factory=lambda: [0] * 64)  # the program's hit array, by slot
    pods: dict[str, tuple[int, bool]] = field(default_factory=dict)
    enabled: bool | None = None

    def configure(self, *args: Any, enabled: bool, **kw: Any) -> None:
        self.enabled = enabled

    def set_pod(self, address: str, view: int, *, opt_out: bool = False) -> None:
        self.pods[address] = (view, opt_out)

    def remove_pod(self, address: str) -> None:
        self.pods.pop(address, None)

    def put(self, view: int, ck: bytes, raw: RawEntry, *, slot: int) -> bool:
        if not answers.eligible(raw):
            return False
        self.entries[(view, ck)] = raw
        self.slot_of[(view, ck)] = slot
        return True

    def remove(self, view: int, ck: bytes) -> None:
        self.entries.pop((view, ck), None)
        self.slot_of.pop((view, ck), None)

    def hits(self, slot: int) -> int:
        return self.counters[slot]

    def answer(self, key: tuple[int, bytes], n: int) -> None:
        """The program answered `n` queries from the entry under `key`."""
        self.counters[self.slot_of[key]] += n

    def stats(self) -> dict[str, int]:
        return {}


@dataclass
class FakeAttacher:
    veths: dict[str, tuple[int, str]]  # pod ip -> (ifindex, name) the lookup finds
    points: dict[str, tc.AttachPoint] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    detached: list[int] = field(default_factory=list)

    def attach(self, ip: str) -> tc.AttachPoint | None:
        self.lookups.append(ip)
        if ip not in self.veths:
            self.failed[ip] = "no neighbour entry"
            return None
        self.points[ip] = tc.AttachPoint(ip, *self.veths[ip], "tcx")
        self.failed.pop(ip, None)
        return self.points[ip]

    def detach(self, ip: str) -> None:
        point = self.points.pop(ip, None)
        if point is not None:
            self.detached.append(point.ifindex)

    def sweep(self) -> int:
        return 0


def make(entries: int = 16) -> tuple[KernelAnswers, FakeMaps, FakeAttacher, list[tuple[Any, ...]]]:
    views = {"10.244.1.10": "view-a", "fd00::a": "view-a", "10.244.1.11": "view-b"}
    ka = KernelAnswers("/nonexistent", "169.254.20.10", "fd00::10", 53, entries=entries, max_udp=1232,
                       edns_payload=1232, view_for=views.get, shared=SHARED)
    maps, att = FakeMaps(), FakeAttacher({"10.244.1.10": (7, "veth0")})
    ka.maps, ka.attacher = maps, att  # type: ignore[assignment]
    got: list[tuple[Any, ...]] = []
    ka.on_hits = lambda view, ck, rcode, n, now: got.append((view, ck[:-5], rcode, n))
    return ka, maps, att, got


def query(name: str) -> wire.Query:
    q = wire.parse_query(bytes(DNSRecord(DNSHeader(id=1), q=DNSQuestion(name, QTYPE.A)).pack()))
    assert type(q) is wire.Query
    return q


def stored(cache: Cache, view: str, name: str, now: float, ttl: int = 10) -> wire.Query:
    q = query(name)
    r = DNSRecord(DNSHeader(id=1, qr=1, rd=1, ra=1), q=DNSQuestion(name, QTYPE.A))
    r.add_answer(RR(name, QTYPE.A, rdata=A("10.0.0.1"), ttl=ttl))
    assert cache.put(view, q, bytes(r.pack()), now, rotate=False)
    return q


def offer(ka: KernelAnswers, cache: Cache, now: float, hits: int | None = None) -> int:
    return ka.promote(((v, ck, raw, raw.hits if hits is None else hits) for v, ck, raw in cache.take_hot()), now)


def test_hot_entries_go_in_and_every_answer_is_read_back_before_a_rewrite_or_removal() -> None:
    ka, maps, _, got = make()
    cache = Cache(settings=None)
    cache.track_hot = True
    q = stored(cache, "view-a", "web.a.svc.cluster.local", 0.0)
    assert offer(ka, cache, 0.1) == 0 and maps.entries == {}  # stored, not hot: no map slot
    cache.get("view-a", q, 0.2)
    cache.get("view-a", q, 0.3)
    assert offer(ka, cache, 0.4) == 1
    key = (ka.view_id("view-a"), q.ck)
    assert key[0] >= 1 and set(maps.entries) == {key} and ka.held == 1
    slot = maps.slot_of[key]
    maps.answer(key, 5)  # the kernel answered five
    q2 = stored(cache, "view-a", "web.a.svc.cluster.local", 2.0)  # refreshed (a prefetch)
    assert offer(ka, cache, 2.1) == 1  # replaced at once, though the new entry has no hits yet
    assert got == [("view-a", q.key, 0, 5)] and maps.entries[key].stored == 2.0 and maps.slot_of[key] == slot
    maps.answer(key, 3)
    ka.tick(2.5)  # read in turn
    assert got[-1] == ("view-a", q2.key, 0, 3)
    maps.answer(key, 2)
    ka.flush_names(["*.svc.cluster.local"])  # a table change
    assert maps.entries == {} and ka.held == 0 and got[-1] == ("view-a", q2.key, 0, 2)
    assert ka.answered == 10


def test_the_tick_expires_entries_and_reads_those_in_their_prefetch_window_first() -> None:
    ka, maps, _, got = make()
    cache = Cache()  # prefetch in the last 10 % of the TTL
    cache.track_hot = True
    soon = stored(cache, SHARED, "example.org", 0.0, ttl=10)  # its window: from 9 s
    later = stored(cache, SHARED, "example.com", 0.0, ttl=100)  # from 90 s
    offer(ka, cache, 0.5, hits=2)
    a, b = (0, soon.ck), (0, later.ck)
    assert set(maps.entries) == {a, b}  # SHARED: view id 0
    maps.answer(a, 3)
    maps.answer(b, 7)
    ka.tick(8.9, reads=0)
    assert got == []
    for t in (9.0, 9.25):  # one read per tick: the entry in its window has it, every time
        maps.answer(a, 1)
        ka.tick(t, reads=1)
    assert [(name, n) for _, name, _, n in got] == [(soon.key, 4), (soon.key, 1)]
    for t in (9.5, 9.75):  # the others in turn: a round over RR_TICKS ticks, at least one a tick
        ka.tick(t, reads=3)
    assert got[-1] == (SHARED, later.key, 0, 7)
    maps.answer(a, 2)
    ka.tick(10.0, reads=0)  # expired: read a last time, then out
    assert got[-1] == (SHARED, soon.key, 0, 2) and set(maps.entries) == {b} and ka.held == 1


def test_a_slot_given_to_another_key_counts_only_that_keys_answers() -> None:
    ka, maps, _, got = make(entries=1)
    cache = Cache()
    cache.track_hot = True
    first = stored(cache, SHARED, "a.example.org", 0.0)
    offer(ka, cache, 0.1, hits=2)
    a = (0, first.ck)
    maps.answer(a, 4)
    ka.flush_names(["a.example.org"])
    assert got[-1] == (SHARED, first.key, 0, 4) and ka.held == 0
    second = stored(cache, SHARED, "b.example.org", 1.0)
    assert offer(ka, cache, 1.1, hits=2) == 1  # the one slot again, its counter at 4
    b = (0, second.ck)
    assert maps.slot_of[b] == 0 and maps.counters[0] == 4
    maps.answer(b, 1)
    ka.fold(1.2)
    assert got[-1] == (SHARED, second.key, 0, 1) and ka.answered == 5


def test_capacity_shared_copies_and_ineligible_entries() -> None:
    ka, maps, _, _ = make(entries=2)
    cache = Cache()
    cache.track_hot = True
    shared = stored(cache, SHARED, "api.example.com", 0.0)
    for name in ("a.example.org", "b.example.org"):
        stored(cache, "view-a", name, 0.0)
    assert offer(ka, cache, 0.1, hits=2) == 2 and ka.skipped_full == 1  # two slots, three hot entries
    assert (0, shared.ck) in maps.entries
    # A view gets its own entry for a name every view shared: the kernel must not answer that view
    # from the SHARED copy, so it goes.
    stored(cache, "view-b", "api.example.com", 1.0)
    offer(ka, cache, 1.1, hits=0)
    assert (0, shared.ck) not in maps.entries and ka.held == 1


def test_pod_changes_write_the_pod_map_at_once_and_attach_in_the_worker() -> None:
    ka, maps, att, _ = make()
    pod = Pod(namespace="a", name="p", ips=("10.244.1.10", "fd00::a"), uid="u1")
    ka.pod_changed(None, pod, attach=False)
    assert maps.pods == {"10.244.1.10": (1, False), "fd00::a": (1, False)} and att.lookups == []
    assert ka.attach_queued() == 2
    # The IPv6 address is on the same veth: no second lookup, one program for the pod.
    assert att.lookups == ["10.244.1.10"] and {p.ifname for p in ka.points} == {"veth0"} and len(ka.points) == 2
    # The pod loses its IPv6 address: the veth keeps the program for the IPv4 one.
    ka.pod_changed(pod, Pod(namespace="a", name="p", ips=("10.244.1.10",), uid="u1"))
    assert att.detached == [] and "fd00::a" not in maps.pods and [p.pod_ip for p in ka.points] == ["10.244.1.10"]
    # Opting out: flagged in the map (the program passes it) and detached.
    ka.pod_changed(pod, Pod(namespace="a", name="p", ips=("10.244.1.10",), uid="u1", opt_out=True))
    assert maps.pods["10.244.1.10"] == (1, True) and att.detached == [7] and ka.points == ()
    # A pod whose veth is not found yet is retried when its turn comes (or its address shows up).
    other = Pod(namespace="b", name="q", ips=("10.244.1.11",), uid="u2")
    ka.pod_changed(None, other)
    assert [ip for ip, _ in ka.pending] == ["10.244.1.11"]
    att.veths["10.244.1.11"] = (8, "veth1")
    assert ka.retry(now=0.0) == 0  # not due yet (1 s after the failure)
    assert ka.retry(now=1e12) == 1 and ka.pending == ()
    ka.stop(successor=True)
    assert maps.enabled is False  # a successor or not: our program passes from now on


@pytest.mark.parametrize("successor", [False, True])
def test_stop_disables_the_program(successor: bool) -> None:
    ka, maps, _, _ = make()
    ka.stop(successor=successor)
    assert maps.enabled is False
