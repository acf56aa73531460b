"""VipMap against the in-memory maps (no root): what a connect can see at every moment.

The fake calls `Connects.check` after every single map write, i.e. at every point where a BPF
program could run between two of the agent's writes. For each VIP entry it reads the backend set a
connect would draw from (na_backends[id, 0..count-1]) and records it. A set with a missing slot is
a connect refused by accident; a set that is neither the one programmed before a change nor the one
after it is a half-written set. Copy-on-write must allow neither.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable

import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

from node_agent.kernel import maps
from node_agent.kernel.vipmap import IPPROTO_TCP, IPPROTO_UDP, VipMap
from node_agent.mesh.model import Change, Key, Port, ServiceEntry, WorkloadEndpoint
from node_agent.mesh.table import NameTable
from node_agent.settings import TableSettings

HALF = ("half-written",)  # a set with a slot missing
VipKey = tuple[str, int, int]  # (vip, port, proto)
Seen = dict[VipKey, tuple[tuple[str, int], ...]]


def connects(fake: maps.FakeMaps) -> Seen:
    """Every VIP key -> the backends a connect to it can be given now (sorted), HALF when a slot
    the entry counts is absent."""
    vips, backends = fake[maps.VIPS], fake[maps.BACKENDS]
    out: Seen = {}
    for k, v in vips.items():
        found = []
        for slot in range(v.count):
            try:
                found.append(maps.read_backend(backends[maps.backend_key(backends, v.id, slot)]))
            except KeyError:
                out[maps.read_vip_key(k)] = HALF  # type: ignore[assignment]
                break
        else:
            out[maps.read_vip_key(k)] = tuple(sorted(found))
    return out


class Connects:
    """Records, per VIP key, every distinct backend set visible after any write."""

    def __init__(self) -> None:
        self.seen: dict[VipKey, set[tuple[tuple[str, int], ...]]] = {}

    def check(self, fake: maps.FakeMaps, _w: maps.Write) -> None:
        for key, backends in connects(fake).items():
            self.seen.setdefault(key, set()).add(backends)

    def reset(self) -> None:
        self.seen.clear()


def ids_in_use(fake: maps.FakeMaps) -> tuple[set[int], set[int], set[int]]:
    """Service ids referenced by na_vips, holding backends, holding stats."""
    return ({v.id for v in fake[maps.VIPS].values()}, {k.id for k in fake[maps.BACKENDS].keys()},
            {k.value for k in fake[maps.VIP_STATS].keys()})


def entry(host: str, vip: str, endpoints: Iterable[str], *, resolution: str = "STATIC", ns: str = "shop",
          ports: tuple[Port, ...] = (Port(8443, "https", "TCP", 9443),)) -> ServiceEntry:
    return ServiceEntry(ns, host.split(".")[0], (host,), uid=f"uid-{host}", addresses=(vip,), ports=ports,
                        resolution=resolution, endpoints=tuple(WorkloadEndpoint(a) for a in endpoints))


def put(table: NameTable, *ses: ServiceEntry) -> None:
    table.apply([Change(Key.of(se), se) for se in ses])


def drop(table: NameTable, se: ServiceEntry) -> None:
    table.apply([Change(Key.of(se), None)])


async def _no_dns(name: str, qtype: int) -> bytes:
    raise AssertionError(f"no DNS expected, asked {name}")


class Rig:
    def __init__(self, resolve: Callable[[str, int], object] = _no_dns, fake: maps.FakeMaps | None = None,
                 table: NameTable | None = None) -> None:
        self.watch = Connects()
        self.fake = fake or maps.FakeMaps()
        self.fake.observe = self.watch.check
        self.table = table or NameTable(TableSettings())
        self.table.synced = True
        self.now = 1000.0
        self.vm = VipMap(self.fake, self.table, resolve, clock=lambda: self.now)

    def sync(self) -> Seen:
        self.watch.reset()
        before = len(self.fake.writes)
        asyncio.run(self.vm.sync())
        self.last_writes = self.fake.writes[before:]
        return connects(self.fake)


def expect(se: ServiceEntry, addrs: Iterable[str]) -> Seen:
    """What the entry asks for, from its own definition: each VIP:port to the addresses of the VIP's
    family at the target port."""
    out: Seen = {}
    for vip, p in itertools.product(se.addresses, se.ports):
        fam = maps.family(vip)
        proto = IPPROTO_UDP if p.protocol == "UDP" else IPPROTO_TCP
        out[(vip, p.port, proto)] = tuple(sorted((a, p.target_port or p.port) for a in addrs
                                                 if maps.family(a) == fam))
    return out


def test_first_programming_writes_each_backend_block_before_its_vip() -> None:
    rig = Rig()
    se = entry("pay.example.com", "240.240.0.10", ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
               ports=(Port(8443, "https", "TCP", 9443), Port(53, "dns", "UDP")))
    put(rig.table, se)
    assert rig.sync() == expect(se, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    # Never a half set: from its first appearance each VIP shows its whole set.
    assert rig.watch.seen == {k: {v} for k, v in expect(se, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]).items()}
    used, with_backends, with_stats = ids_in_use(rig.fake)
    assert used == with_backends == with_stats and len(used) == 2  # one id per (port, proto, family)


def test_a_backend_change_is_copy_on_write() -> None:
    rig = Rig()
    old_eps, new_eps = ["10.0.0.1", "10.0.0.2", "10.0.0.3"], ["10.0.0.2", "10.0.0.4"]
    se = entry("pay.example.com", "240.240.0.10", old_eps)
    put(rig.table, se)
    before = rig.sync()
    (old_id,) = ids_in_use(rig.fake)[0]
    put(rig.table, entry("pay.example.com", "240.240.0.10", new_eps))
    after = rig.sync()
    assert after == expect(se, new_eps)
    # At every write in between, a connect saw the old set or the new one, whole.
    key = next(iter(after))
    assert rig.watch.seen == {key: {before[key], after[key]}}
    # The order that guarantees it: the new block (and its stats) fully written, then the VIP switched,
    # then the old block freed.
    (new_id,) = ids_in_use(rig.fake)[0]
    assert new_id != old_id
    w = rig.last_writes
    switch = next(i for i, x in enumerate(w) if x.map == maps.VIPS)
    new_block = [i for i, x in enumerate(w) if x.map == maps.BACKENDS and x.op == "set"]
    old_block = [i for i, x in enumerate(w) if x.map == maps.BACKENDS and x.op == "del"]
    assert len(new_block) == len(new_eps) and len(old_block) == len(old_eps)
    assert max(new_block) < switch < min(old_block)
    assert ids_in_use(rig.fake) == ({new_id}, {new_id}, {new_id})


def test_losing_every_backend_keeps_the_vip_failing_fast_and_frees_the_block() -> None:
    rig = Rig()
    put(rig.table, entry("pay.example.com", "240.240.0.10", ["10.0.0.1"]))
    rig.sync()
    put(rig.table, entry("pay.example.com", "240.240.0.10", []))
    after = rig.sync()
    assert list(after.values()) == [()]  # count 0: the program refuses at once (ECONNREFUSED)
    assert HALF not in set().union(*rig.watch.seen.values())
    assert ids_in_use(rig.fake)[1] == set() and rig.vm.stats.without_backends == 1


def test_a_removed_entry_leaves_no_vip_and_no_block() -> None:
    rig = Rig()
    gone = entry("old.example.com", "240.240.0.11", ["10.0.1.1", "10.0.1.2"])
    kept = entry("pay.example.com", "240.240.0.10", ["10.0.0.1"])
    put(rig.table, gone, kept)
    rig.sync()
    drop(rig.table, gone)
    after = rig.sync()
    assert after == expect(kept, ["10.0.0.1"])
    assert HALF not in set().union(*rig.watch.seen.values())  # the VIP goes before its block
    used, with_backends, with_stats = ids_in_use(rig.fake)
    assert used == with_backends == with_stats and len(used) == 1


def test_counters_of_retired_ids_carry_over_to_the_host() -> None:
    rig = Rig()
    put(rig.table, entry("pay.example.com", "240.240.0.10", ["10.0.0.1"]))
    rig.sync()
    vstats = rig.fake[maps.VIP_STATS]
    (sid,) = ids_in_use(rig.fake)[0]
    leaf = vstats[maps.u32(sid)]
    leaf.connections, leaf.no_backend = 5, 1  # what the program counted
    vstats[maps.u32(sid)] = leaf
    put(rig.table, entry("pay.example.com", "240.240.0.10", ["10.0.0.2"]))
    rig.sync()
    (new,) = ids_in_use(rig.fake)[0]
    leaf = vstats[maps.u32(new)]
    leaf.connections = 2
    vstats[maps.u32(new)] = leaf
    assert rig.vm.counters() == {"pay.example.com": (7, 1)}


def test_an_unchanged_table_writes_nothing() -> None:
    rig = Rig()
    put(rig.table, entry("pay.example.com", "240.240.0.10", ["10.0.0.1"]))
    rig.sync()
    rig.sync()
    assert rig.last_writes == []


def test_a_successor_adopts_the_entries_and_replaces_them_copy_on_write() -> None:
    """A restarted agent finds the maps its predecessor programmed (connects kept working from them);
    its ids start above the predecessor's, so it never writes into a block a VIP points at; once it
    has programmed its own, the predecessor's ids are swept."""
    first = Rig()
    pay = entry("pay.example.com", "240.240.0.10", ["10.0.0.1", "10.0.0.2"])
    gone = entry("old.example.com", "240.240.0.11", ["10.0.1.1"])
    put(first.table, pay, gone)
    programmed = first.sync()
    old_ids = ids_in_use(first.fake)[0]
    # The successor's table: pay's endpoints changed while no agent ran, old.example.com was deleted.
    second = Rig(fake=first.fake)
    put(second.table, entry("pay.example.com", "240.240.0.10", ["10.0.0.2", "10.0.0.3"]))

    async def start_and_first_sync() -> None:
        task = asyncio.ensure_future(second.vm.run())
        for _ in range(100):
            if second.vm.units:
                break
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(2):  # a run() that drops the cancellation never ends
                await task

    assert connects(first.fake) == programmed  # nothing changes before the successor syncs
    second.watch.reset()
    asyncio.run(start_and_first_sync())
    after = connects(first.fake)
    assert after == expect(pay, ["10.0.0.2", "10.0.0.3"])
    new_ids = ids_in_use(first.fake)[0]
    assert min(new_ids) > max(old_ids)
    key = ("240.240.0.10", 8443, IPPROTO_TCP)
    assert second.watch.seen[key] == {programmed[key], after[key]}
    # old.example.com's VIP went before its block (never half) and nothing of the predecessor is left.
    assert HALF not in second.watch.seen.get(("240.240.0.11", 8443, IPPROTO_TCP), set())
    assert ids_in_use(first.fake) == (new_ids, new_ids, new_ids)


def test_sweep_removes_foreign_and_stale_entries_and_keeps_ours() -> None:
    rig = Rig()
    se = entry("pay.example.com", "240.240.0.10", ["10.0.0.1"])
    put(rig.table, se)
    vips, backends, vstats = rig.fake[maps.VIPS], rig.fake[maps.BACKENDS], rig.fake[maps.VIP_STATS]
    # Left by someone else: a VIP with its block, a block no VIP points at, stats of a dead id.
    vips[maps.vip_key(vips, "240.240.0.99", 80, IPPROTO_TCP)] = maps.vip_leaf(vips, 900, 1)
    backends[maps.backend_key(backends, 900, 0)] = maps.backend_leaf(backends, "10.9.9.9", 80)
    backends[maps.backend_key(backends, 901, 0)] = maps.backend_leaf(backends, "10.9.9.8", 80)
    vstats[maps.u32(902)] = vstats.Leaf()
    rig.vm._adopt()  # what run() does first
    assert rig.sync() == expect(se, ["10.0.0.1"])
    used, with_backends, with_stats = ids_in_use(rig.fake)
    assert used == with_backends == with_stats and min(used) > 902


def reply(name: str, qtype: int, addrs: Iterable[str], ttl: int, rcode: int = RCODE.NOERROR) -> bytes:
    r = DNSRecord.question(name, QTYPE[qtype]).reply()
    r.header.rcode = rcode
    for a in addrs:
        if (qtype == QTYPE.A) == (":" not in a):
            r.add_answer(RR(name, qtype, rdata=A(a) if qtype == QTYPE.A else AAAA(a), ttl=ttl))
    return r.pack()


class FakeDns:
    def __init__(self) -> None:
        self.addrs: list[str] = []
        self.ttl = 30
        self.fail = False
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, name: str, qtype: int) -> bytes:
        self.asked.append((name, qtype))
        if self.fail:
            raise TimeoutError("upstream timed out")
        return reply(name, qtype, self.addrs, self.ttl)


def test_dns_endpoints_are_resolved_again_when_their_ttl_runs_out() -> None:
    dns = FakeDns()
    rig = Rig(dns)
    se = entry("db.example.com", "240.240.0.20", ["db.backends.example.org"], resolution="DNS")
    put(rig.table, se)
    dns.addrs = ["10.1.0.1", "10.1.0.2"]
    assert rig.sync() == expect(se, dns.addrs)
    assert sorted(dns.asked) == [("db.backends.example.org", QTYPE.A), ("db.backends.example.org", QTYPE.AAAA)]
    first = dict(rig.sync())

    dns.asked.clear()
    dns.addrs = ["10.1.0.3"]
    rig.now += dns.ttl - 1  # not due yet: the last answer stands, nothing is written
    assert rig.sync() == first and dns.asked == [] and rig.last_writes == []
    rig.now += 2
    assert rig.sync() == expect(se, ["10.1.0.3"]) and len(dns.asked) == 2
    key = next(iter(first))
    assert rig.watch.seen == {key: {first[key], (("10.1.0.3", 9443),)}}  # copy-on-write here too

    # Resolution fails: STRICT_DNS keeps the last good answer and tries again soon (2 * min_ttl).
    dns.fail, dns.asked = True, []
    rig.now += dns.ttl + 1
    assert rig.sync() == expect(se, ["10.1.0.3"]) and rig.vm.stats.resolve_failures == 1
    dns.fail = False
    dns.addrs = ["10.1.0.4"]
    rig.now += 2 * rig.vm.min_ttl + 0.01
    assert rig.sync() == expect(se, ["10.1.0.4"])


def test_a_zero_ttl_is_held_for_min_ttl_and_the_host_itself_is_resolved_without_endpoints() -> None:
    dns = FakeDns()
    rig = Rig(dns)
    se = entry("api.example.com", "240.240.0.21", [], resolution="DNS")
    put(rig.table, se)
    dns.addrs, dns.ttl = ["10.2.0.1"], 0
    assert rig.sync() == expect(se, ["10.2.0.1"])
    assert {n for n, _ in dns.asked} == {"api.example.com"}
    dns.asked.clear()
    rig.now += rig.vm.min_ttl / 2
    rig.sync()
    assert dns.asked == []
    rig.now += rig.vm.min_ttl
    rig.sync()
    assert len(dns.asked) == 2
