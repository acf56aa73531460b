"""Stable, coordination-free VIP allocation for ServiceEntry hosts that declare no addresses.

Istio's DNS proxy answers such hosts with an auto-allocated VIP from 240.240.0.0/16 (and 2001:2::/48 for
AAAA). Istio's old allocator numbered the entries in sorted order, so adding or removing one entry
shifted the VIPs of others (istio#43858, istio#44837) and broke long-lived connections and caches.

Scheme here ("priority-ordered open addressing"):

* The allocation unit is ``(namespace, host)``. Its *probe chain* is a fixed pseudo-random sequence of
  slots derived only from ``"<namespace>/<host>"`` (BLAKE2b, so it is the same on every node and in
  every process): 64 hashed probes, then a linear walk from the last one that covers the whole pool.
* Units are ordered by *priority*: creation timestamp, then uid, then namespace/name of the oldest
  ServiceEntry claiming the unit, then the host (a total order, so ties never depend on arrival).
* The allocation is exactly what you get by visiting the units oldest first and giving each the first
  slot of its chain that no older unit holds. It is a pure function of the current set of units: two
  nodes that see the same ServiceEntries compute the same VIPs, whatever order they learnt them in.

Guarantees (each proven by the incremental algorithm below and checked by tests against a from-scratch
computation):

1. A unit's VIP depends only on the units *older* than it. Adding a unit never moves any older unit,
   and because the API server stamps creationTimestamp at creation, a newly created ServiceEntry never
   moves an existing one. (Only an entry that appears with an *older* timestamp than existing ones —
   e.g. a restore from backup — can take a slot from a younger colliding unit.)
2. Removing a unit never moves an older unit. It moves a younger unit only if that unit collided on
   the way to its slot (its chain passes through the freed slot before reaching its own); with 5,000
   entries in the 65,534-slot IPv4 pool that is a few percent of units, and only those whose collision
   involved the removed one. In the 2^80-slot IPv6 pool collisions practically never happen, so v6 VIPs
   are stable in every case.
3. No node state, no coordination, no history: a restarted node computes the same answer. Better is
   impossible without shared state, since a node that starts after the older of a colliding pair was
   deleted cannot know the younger ever collided.

Addresses declared in some ServiceEntry's ``addresses`` are not excluded from the pools (a declared
240.240/16 address would be a configuration error, as it is in Istio).
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Hashable, Iterable
from typing import Any

from node_agent.mesh.model import Record, ServiceEntry

V4_NETWORK = "240.240.0.0/16"
V6_NETWORK = "2001:2::/48"

# Hashed probes per unit before falling back to a linear walk (only reached when a pool is nearly full).
HASHED_PROBES = 64

Unit = tuple[str, str]  # (namespace, host)
Priority = tuple[Any, ...]  # totally ordered; smaller = older = wins collisions


class VipPool:
    """One address family: slot k (1 <= k <= size) is address ``network_address + k``."""

    __slots__ = ("network", "size", "_base", "_owner", "_slot", "_index", "_prio", "_chains", "_unplaced")

    def __init__(self, network: str) -> None:
        self.network = ipaddress.ip_network(network)
        # Skip the network address and (for v4) the broadcast address.
        self.size = self.network.num_addresses - (2 if self.network.version == 4 else 1)
        self._base = int(self.network.network_address)
        self._owner: dict[int, Unit] = {}  # slot -> unit
        self._slot: dict[Unit, int] = {}  # unit -> slot
        self._index: dict[Unit, int] = {}  # unit -> position of its slot in its chain
        self._prio: dict[Unit, Priority] = {}
        self._chains: dict[Unit, list[int]] = {}  # hashed part of the chain, computed on demand
        self._unplaced: set[Unit] = set()  # pool exhausted for these

    # -- chain ----------------------------------------------------------------------------------------
    def _hashed(self, unit: Unit, i: int) -> int:
        chain = self._chains.get(unit)
        if chain is None:
            chain = self._chains[unit] = []
        while len(chain) <= i:
            key = f"{unit[0]}/{unit[1]}#{len(chain)}".encode()
            digest = hashlib.blake2b(key, digest_size=16, person=b"node-agent-vip").digest()
            chain.append(int.from_bytes(digest, "big") % self.size + 1)
        return chain[i]

    def chain(self, unit: Unit, i: int) -> int:
        """Slot number at position i of the unit's probe chain."""
        if i < HASHED_PROBES:
            return self._hashed(unit, i)
        last = self._hashed(unit, HASHED_PROBES - 1)
        return (last - 1 + (i - HASHED_PROBES + 1)) % self.size + 1

    def _position(self, unit: Unit, slot: int, limit: int) -> int | None:
        """First position (< limit) of `slot` in the unit's chain, if any."""
        for i in range(min(limit, HASHED_PROBES)):
            if self._hashed(unit, i) == slot:
                return i
        if limit > HASHED_PROBES:
            last = self._hashed(unit, HASHED_PROBES - 1)
            i = HASHED_PROBES - 1 + (slot - last) % self.size
            if HASHED_PROBES <= i < limit:
                return i
        return None

    def address(self, slot: int) -> str:
        if self.network.version == 4:
            return socket.inet_ntoa((self._base + slot).to_bytes(4, "big"))  # fast path, same text
        return str(ipaddress.ip_address(self._base + slot))

    # -- queries --------------------------------------------------------------------------------------
    def get(self, unit: Unit) -> str | None:
        slot = self._slot.get(unit)
        return None if slot is None else self.address(slot)

    def unit_at(self, address: str) -> Unit | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if ip not in self.network:
            return None
        return self._owner.get(int(ip) - self._base)

    def __len__(self) -> int:
        return len(self._slot)

    # -- updates --------------------------------------------------------------------------------------
    def add(self, unit: Unit, prio: Priority) -> set[Unit]:
        """Place a new unit; returns every unit whose address changed (including this one)."""
        if unit in self._prio:
            raise ValueError(f"unit {unit} already allocated")
        self._prio[unit] = prio
        changed: set[Unit] = set()
        self._place(unit, 0, changed)
        return changed

    def _place(self, unit: Unit, start: int, changed: set[Unit]) -> None:
        # Walk the chain; an older holder keeps its slot, a younger one is evicted and continues its own
        # chain after that slot (its earlier slots are still held by units older than it).
        idx = start
        limit = HASHED_PROBES + self.size
        while idx < limit:
            slot = self.chain(unit, idx)
            holder = self._owner.get(slot)
            if holder is None or self._prio[holder] > self._prio[unit]:
                self._hold(unit, slot, idx, changed)
                if holder is None:
                    return
                changed.add(holder)
                del self._slot[holder]
                unit, idx = holder, self._index.pop(holder) + 1
                continue
            idx += 1
        self._unplaced.add(unit)
        changed.add(unit)

    def _hold(self, unit: Unit, slot: int, pos: int, changed: set[Unit]) -> None:
        """`unit` takes `slot`, position `pos` of its chain. The caller settles the slot's previous holder
        (its `_slot` entry still names the slot) and the unit's previous slot (its `_owner` entry)."""
        self._owner[slot] = unit
        self._slot[unit] = slot
        self._index[unit] = pos
        self._unplaced.discard(unit)
        changed.add(unit)

    def remove(self, unit: Unit) -> set[Unit]:
        """Drop a unit; younger units that collided on its slot may move into it (cascading)."""
        changed: set[Unit] = set()
        prio = self._prio.pop(unit, None)
        if prio is None:
            return changed
        self._chains.pop(unit, None)
        self._unplaced.discard(unit)
        slot = self._slot.pop(unit, None)
        self._index.pop(unit, None)
        if slot is None:
            return changed
        del self._owner[slot]
        self._refill(slot, prio, changed)
        return changed

    def _refill(self, slot: int, after: Priority, changed: set[Unit]) -> None:
        # The freed slot goes to the oldest unit younger than its previous holder whose chain reaches it
        # before its current slot; that unit's old slot is freed in turn.
        while True:
            best: Unit | None = None
            best_pos = 0
            for cand in self._displaced():
                prio = self._prio[cand]
                if prio <= after or (best is not None and prio >= self._prio[best]):
                    continue
                limit = self._index.get(cand, HASHED_PROBES + self.size)
                pos = self._position(cand, slot, limit)
                if pos is not None:
                    best, best_pos = cand, pos
            if best is None:
                return
            old = self._slot.get(best)
            self._hold(best, slot, best_pos, changed)
            if old is None:
                return
            del self._owner[old]
            slot, after = old, self._prio[best]

    def _displaced(self) -> Iterable[Unit]:
        # Units not at the head of their chain: the only ones a freed slot can attract. Scanning them is
        # cheap because collisions are rare (a few percent of units in the v4 pool).
        yield from [u for u, i in self._index.items() if i > 0]
        yield from list(self._unplaced)

    def snapshot(self) -> dict[Unit, int]:
        return dict(self._slot)


def allocate_from_scratch(pool_network: str, units: dict[Unit, Priority]) -> dict[Unit, int]:
    """Reference implementation of the definition (oldest first, first free slot in chain); for tests."""
    pool = VipPool(pool_network)
    for unit in sorted(units, key=lambda u: units[u]):
        pool._prio[unit] = units[unit]
        pool._place(unit, 0, set())
    return pool.snapshot()


class VipAllocator:
    """v4 and v6 VIPs for (namespace, host) units, each claimed by one or more ServiceEntries.

    Claims are keyed by an opaque hashable (the ServiceEntry's Key); a unit's priority is the smallest
    priority among its claims, so the same ServiceEntry seen from two clusters shares one VIP.
    """

    def __init__(self, v4_network: str = V4_NETWORK, v6_network: str = V6_NETWORK) -> None:
        self.v4 = VipPool(v4_network)
        self.v6 = VipPool(v6_network)
        self._claims: dict[Unit, dict[Hashable, Priority]] = {}

    def claim(self, unit: Unit, claimant: Hashable, prio: Priority) -> set[Unit]:
        claims = self._claims.setdefault(unit, {})
        claims[claimant] = prio
        return self._reprioritise(unit)

    def release(self, unit: Unit, claimant: Hashable) -> set[Unit]:
        claims = self._claims.get(unit)
        if not claims or claimant not in claims:
            return set()
        del claims[claimant]
        if not claims:
            del self._claims[unit]
        return self._reprioritise(unit)

    def _reprioritise(self, unit: Unit) -> set[Unit]:
        claims = self._claims.get(unit)
        # The host is the final tie-break: one ServiceEntry with several hosts gives equal claim priorities.
        new = (min(claims.values()) + (unit,)) if claims else None
        old = self.v4._prio.get(unit)
        if new == old:
            return set()
        changed: set[Unit] = {unit}
        for pool in (self.v4, self.v6):
            if old is not None:
                changed |= pool.remove(unit)
            if new is not None:
                changed |= pool.add(unit, new)
        return changed

    def get(self, unit: Unit) -> tuple[str, ...]:
        """(v4, v6) addresses of the unit, or () when it has no claim (or a pool is exhausted)."""
        return tuple(a for a in (self.v4.get(unit), self.v6.get(unit)) if a is not None)

    def unit_at(self, address: str) -> Unit | None:
        return self.v4.unit_at(address) or self.v6.unit_at(address)

    def __len__(self) -> int:
        return len(self._claims)


def priority(creation_timestamp: str, uid: str, namespace: str, name: str) -> Priority:
    """Claim priority: older first; entries without a timestamp sort after all timestamped ones."""
    return (_epoch(creation_timestamp), uid, namespace, name)


def se_priority(se: ServiceEntry) -> Priority:
    """A ServiceEntry's precedence over the others for the same host, older first: whose VIP claim
    wins a collision, which entry answers a host (after the asker's own namespace), which one carries
    a unit's traffic."""
    return priority(se.creation_timestamp, se.uid, se.namespace, se.name)


def oldest_first(entries: Iterable[ServiceEntry]) -> list[ServiceEntry]:
    return sorted(entries, key=se_priority)


def claim_order(record: Record) -> tuple[int, Priority]:
    """Sort key for loading a batch of records: ServiceEntries last and oldest first, so that new VIP
    claims rarely evict each other on the way (the result does not depend on the order)."""
    return (1, se_priority(record)) if isinstance(record, ServiceEntry) else (0, ())


def _epoch(ts: str) -> float:
    from datetime import datetime

    if not ts:
        return float("inf")
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")
