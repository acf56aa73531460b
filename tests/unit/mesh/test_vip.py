"""VIP allocation: deterministic across nodes, stable under adds/removes, collisions by age then uid."""

from __future__ import annotations

import ipaddress
import random

import pytest

from node_agent.mesh.model import Record, Service, ServiceEntry
from node_agent.mesh.vip import VipAllocator, VipPool, allocate_from_scratch, claim_order, oldest_first, priority

SMALL = "240.240.0.0/28"  # 14 slots: collisions on purpose


def units(n: int) -> dict[tuple[str, str], tuple]:
    # Creation times deliberately collide (same second) so the uid tie-break matters too.
    return {
        ("ns", f"h{i}.example.com"): priority(f"2024-01-01T00:00:{i % 7:02d}Z", f"uid-{i:03d}", "ns", f"se{i}")
        + (("ns", f"h{i}.example.com"),)
        for i in range(n)
    }


def test_any_insertion_order_gives_the_same_allocation() -> None:
    all_units = units(12)
    reference = allocate_from_scratch(SMALL, all_units)
    assert len(set(reference.values())) == 12  # no slot shared
    for seed in range(20):
        order = list(all_units)
        random.Random(seed).shuffle(order)
        pool = VipPool(SMALL)
        for u in order:
            pool.add(u, all_units[u])
        assert pool.snapshot() == reference


@pytest.mark.parametrize("seed", range(30))
def test_incremental_updates_match_a_fresh_computation(seed: int) -> None:
    rng = random.Random(seed)
    universe = units(20)  # more units than slots: exhaustion and refill are exercised too
    pool = VipPool(SMALL)
    present: set[tuple[str, str]] = set()
    for _ in range(60):
        u = rng.choice(list(universe))
        if u in present:
            pool.remove(u)
            present.discard(u)
        else:
            pool.add(u, universe[u])
            present.add(u)
        assert pool.snapshot() == allocate_from_scratch(SMALL, {p: universe[p] for p in present})


@pytest.mark.parametrize("seed", range(20))
def test_adding_a_younger_entry_never_moves_an_existing_one(seed: int) -> None:
    rng = random.Random(seed)
    universe = units(13)
    ordered = sorted(universe, key=universe.__getitem__)
    pool = VipPool(SMALL)
    for u in ordered:  # creation order, as the API server stamps them
        before = pool.snapshot()
        changed = pool.add(u, universe[u])
        assert changed == {u}
        assert {k: v for k, v in pool.snapshot().items() if k != u} == before
    # and removals never move anything older than the removed entry
    for u in rng.sample(ordered, len(ordered)):
        before = pool.snapshot()
        changed = pool.remove(u)
        for moved in changed:
            assert universe[moved] > universe[u]
            assert moved in before
        for k, v in pool.snapshot().items():
            if universe[k] < universe[u]:
                assert before[k] == v


def _colliding_pair(pool: VipPool) -> tuple[tuple[str, str], tuple[str, str]]:
    first: dict[int, tuple[str, str]] = {}
    for i in range(1000):
        u = ("ns", f"c{i}.example.com")
        slot = pool.chain(u, 0)
        if slot in first:
            return first[slot], u
        first[slot] = u
    raise AssertionError("no collision found")


def test_collision_goes_to_the_older_entry_then_the_smaller_uid() -> None:
    pool = VipPool(SMALL)
    a, b = _colliding_pair(pool)
    head = pool.chain(a, 0)
    older, younger = (
        priority("2024-01-01T00:00:00Z", "zzz", "ns", "x"),
        priority("2024-06-01T00:00:00Z", "aaa", "ns", "y"),
    )
    pool.add(b, younger + (b,))
    assert pool.get(b) == pool.address(head)
    pool.add(a, older + (a,))  # an older entry (restored from backup) takes its home slot
    assert pool.get(a) == pool.address(head)
    assert pool.get(b) != pool.address(head)
    pool.remove(a)  # the younger one moves back home: exactly what a freshly started node computes
    assert pool.get(b) == pool.address(head)

    same_time = VipPool(SMALL)
    same_time.add(a, priority("2024-01-01T00:00:00Z", "uid-b", "ns", "x") + (a,))
    same_time.add(b, priority("2024-01-01T00:00:00Z", "uid-a", "ns", "y") + (b,))
    assert same_time.get(b) == same_time.address(head)


def test_two_nodes_agree_and_addresses_are_in_the_istio_ranges() -> None:
    entries = [
        (("ns", f"svc{i}.example.com"), f"se{i}", priority("2024-01-01T00:00:00Z", f"u{i}", "ns", f"se{i}"))
        for i in range(300)
    ]
    node1, node2 = VipAllocator(), VipAllocator()
    for unit, key, prio in entries:
        node1.claim(unit, key, prio)
    for unit, key, prio in reversed(entries):
        node2.claim(unit, key, prio)
    v4net, v6net = ipaddress.ip_network("240.240.0.0/16"), ipaddress.ip_network("2001:2::/48")
    seen = set()
    for unit, _, _ in entries:
        v4, v6 = node1.get(unit)
        assert node2.get(unit) == (v4, v6)
        assert ipaddress.ip_address(v4) in v4net and ipaddress.ip_address(v6) in v6net
        assert v4 not in ("240.240.0.0", "240.240.255.255")
        seen.add(v4)
        assert node1.unit_at(v4) == unit and node1.unit_at(v6) == unit
    assert len(seen) == 300


def test_a_unit_claimed_twice_keeps_its_vip_until_the_last_claim_goes() -> None:
    alloc = VipAllocator()
    unit = ("ns", "shared.example.com")
    alloc.claim(unit, "cluster-1", priority("2024-01-02T00:00:00Z", "b", "ns", "se"))
    vips = alloc.get(unit)
    assert alloc.claim(unit, "cluster-2", priority("2024-01-03T00:00:00Z", "c", "ns", "se")) == set()
    alloc.release(unit, "cluster-1")  # priority now from the cluster-2 claim
    assert alloc.get(unit) == vips  # huge pool: no collision, so the re-prioritised unit stays put
    alloc.release(unit, "cluster-2")
    assert alloc.get(unit) == () and len(alloc) == 0


def test_full_pool_leaves_the_youngest_without_v4_until_space_frees() -> None:
    pool = VipPool("240.240.0.0/30")  # 2 usable slots
    us = units(3)
    for u in us:
        pool.add(u, us[u])
    youngest = max(us, key=us.__getitem__)
    assert pool.get(youngest) is None and len(pool) == 2
    oldest = min(us, key=us.__getitem__)
    assert youngest in pool.remove(oldest)
    assert pool.get(youngest) is not None


def test_priority_orders_by_time_and_puts_missing_timestamps_last() -> None:
    assert priority("2024-01-01T00:00:00Z", "b", "n", "x") < priority("2024-01-01T00:00:01Z", "a", "n", "x")
    assert priority("2024-01-01T00:00:00Z", "a", "n", "x") < priority("2024-01-01T00:00:00Z", "b", "n", "x")
    assert priority("2030-01-01T00:00:00Z", "z", "n", "x") < priority("", "a", "n", "x")


def test_service_entries_rank_by_creation_then_uid_and_load_after_other_records() -> None:
    def se(name: str, ts: str, uid: str) -> ServiceEntry:
        return ServiceEntry("ns", name, ("h.example.com",), uid=uid, creation_timestamp=ts)

    young = se("young", "2024-06-01T00:00:00Z", "a")
    old_b = se("old-b", "2024-01-01T00:00:00Z", "b")
    old_a = se("old-a", "2024-01-01T00:00:00+00:00", "a")  # the same instant written another way
    undated = se("undated", "", "0")
    assert oldest_first([young, undated, old_b, old_a]) == [old_a, old_b, young, undated]
    svc = Service("ns", "web")
    batch: list[Record] = [young, svc, old_b]
    assert sorted(batch, key=claim_order) == [svc, old_b, young]
