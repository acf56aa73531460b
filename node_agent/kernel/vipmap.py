"""ServiceEntry VIPs that carry traffic: keep the kernel's VIP -> backends maps equal to the name table.

STATIC entries take their endpoints (inline, or WorkloadEntries selected by labels); DNS entries
resolve their endpoints' names (or the host itself) upstream, again whenever the TTL runs out, like
Envoy's STRICT_DNS, keeping the last good answer while resolution fails. Pods never see backend
addresses change: they keep dialling the VIP.

Updates are copy-on-write: a changed service gets a fresh id whose backends are written before the
VIP entry is switched to it, so a connect never sees a half-written backend set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node_agent.dns import build
from node_agent.dns.consts import Rcode, Type
from node_agent.kernel import maps
from node_agent.mesh.table import NameTable, VipService

log = logging.getLogger(__name__)

IPPROTO_TCP, IPPROTO_UDP = 6, 17
MAX_BACKENDS_PER_VIP = 4096
Resolve = Callable[[str, int], Any]  # async (name, qtype) -> response wire bytes
Backends = tuple["Backend", ...]


@dataclass(frozen=True)
class Backend:
    address: str
    port: int


@dataclass
class _Unit:
    """What is programmed for one (namespace, host)."""

    ids: dict[int, int]  # map id -> number of backends written under it
    keys: frozenset[tuple[str, int, int]]  # (vip, port, proto)
    backends: dict[tuple[int, int], tuple[Backend, ...]]  # (port, proto) -> backends


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


@dataclass
class VipStats:
    connections: dict[str, int] = field(default_factory=dict)  # host -> translated connections
    no_backend: dict[str, int] = field(default_factory=dict)  # host -> refused for lack of backends
    without_backends: int = 0  # VIP keys currently with no backend
    resolve_failures: int = 0


class VipMap:
    """bpf: the bcc BPF object holding the maps (or maps.FakeMaps); clock: monotonic seconds, when
    DNS answers are due again."""

    def __init__(self, bpf: Any, table: NameTable, resolve: Resolve, *, min_ttl: float = 1.0,
                 max_ttl: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.bpf = bpf
        self.table = table
        self.resolve = resolve
        self.min_ttl, self.max_ttl = min_ttl, max_ttl
        self.clock = clock
        self.units: dict[tuple[str, str], _Unit] = {}
        self.stats = VipStats()
        self._dns: dict[str, tuple[tuple[str, ...], float]] = {}  # name -> (addresses, refresh at)
        self._retired: dict[str, tuple[int, int]] = {}  # host -> counts carried over from retired ids
        self._next_id = 1
        self.dirty = asyncio.Event()
        self.dirty.set()

    # ---- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        self._adopt()
        while True:
            try:
                await self.sync()
            except Exception:  # keep the last programmed state; try again shortly
                log.exception("programming VIPs failed")
            due = min((t for _, t in self._dns.values()), default=self.clock() + 5)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that comes
            # as the event is set, and the agent's stop() would then wait for this loop forever.
            try:
                async with asyncio.timeout(max(0.05, due - self.clock())):
                    await self.dirty.wait()
            except TimeoutError:
                pass
            self.dirty.clear()

    def _adopt(self) -> None:
        """A predecessor's entries stay until we overwrite them; new ids start above its ids."""
        ids = [k.value for k in self.bpf[maps.VIP_STATS].keys()] + [v.id for v in self.bpf[maps.VIPS].values()]
        self._next_id = max(ids, default=0) + 1

    async def sync(self) -> None:
        services = self.table.vip_services()
        await self._refresh_dns(services)
        wanted: dict[tuple[str, str], VipService] = {(s.namespace, s.host): s for s in services}
        for unit_key, svc in wanted.items():
            keys, backends = self._desired(svc)
            cur = self.units.get(unit_key)
            if cur is not None and cur.keys == keys and cur.backends == backends:
                continue
            self._program(unit_key, keys, backends)
        for unit_key in [k for k in self.units if k not in wanted]:
            self._remove(unit_key)
        self._sweep_foreign()
        self.stats.without_backends = sum(
            1 for u in self.units.values() for k in u.keys
            if not any(maps.family(b.address) == maps.family(k[0]) for b in u.backends.get((k[1], k[2]), ())))

    # ---- desired state ---------------------------------------------------------------------------

    def _desired(self, svc: VipService) -> tuple[frozenset[tuple[str, int, int]], dict[tuple[int, int], Backends]]:
        keys: set[tuple[str, int, int]] = set()
        backends: dict[tuple[int, int], tuple[Backend, ...]] = {}
        for p in svc.ports:
            proto = IPPROTO_UDP if p.protocol.upper() == "UDP" else IPPROTO_TCP
            for vip in svc.vips:
                keys.add((vip, p.port, proto))
            found: list[Backend] = []
            for ep in svc.endpoints or ():
                port = dict(ep.ports).get(p.name) or p.target_port or p.port
                for addr in self._addresses(ep.address, svc.resolution):
                    found.append(Backend(addr, port))
            if not svc.endpoints and svc.resolution == "DNS":
                for addr in self._addresses(svc.host, "DNS"):
                    found.append(Backend(addr, p.target_port or p.port))
            backends[(p.port, proto)] = tuple(dict.fromkeys(found))
        return frozenset(keys), backends

    def _addresses(self, name: str, resolution: str) -> tuple[str, ...]:
        if _is_ip(name):
            return (name,)
        if resolution != "DNS":
            return ()
        return self._dns.get(name, ((), 0.0))[0]

    async def _refresh_dns(self, services: list[VipService]) -> None:
        names = {ep.address for s in services if s.resolution == "DNS" for ep in s.endpoints if not _is_ip(ep.address)}
        names |= {s.host for s in services if s.resolution == "DNS" and not s.endpoints}
        for gone in set(self._dns) - names:
            del self._dns[gone]
        now = self.clock()
        due = [n for n in names if self._dns.get(n, ((), 0.0))[1] <= now]
        if due:
            await asyncio.gather(*(self._resolve_name(n) for n in due))

    async def _resolve_name(self, name: str) -> None:
        addrs: list[str] = []
        ttls: list[int] = []
        ok = False
        for qtype in (Type.A, Type.AAAA):
            try:
                rcode, found = build.addresses(await self.resolve(name, qtype), qtype)
            except Exception as e:
                log.debug("resolving %s: %s", name, e)
                continue
            ok = ok or rcode in (Rcode.NOERROR, Rcode.NXDOMAIN)
            addrs += (a for a, _ in found)
            ttls += (t for _, t in found)
        prev = self._dns.get(name, ((), 0.0))[0]
        if not ok:
            # STRICT_DNS keeps the last good answer while the name cannot be resolved.
            self.stats.resolve_failures += 1
            self._dns[name] = (prev, self.clock() + self.min_ttl * 2)
            return
        ttl = min(ttls, default=self.min_ttl * 5)
        self._dns[name] = (tuple(sorted(set(addrs))), self.clock() + max(self.min_ttl, min(self.max_ttl, ttl)))
        if tuple(sorted(set(addrs))) != prev:
            log.info("VIP backends for %s now %s", name, ", ".join(sorted(set(addrs))) or "none")

    # ---- maps ------------------------------------------------------------------------------------

    def _program(self, unit_key: tuple[str, str], keys: frozenset[tuple[str, int, int]],
                 backends: dict[tuple[int, int], tuple[Backend, ...]]) -> None:
        """Copy-on-write: each (port, protocol, family) of the unit gets a fresh id whose backends are
        written before the VIP keys are pointed at it; then the old ids are dropped."""
        vips, bmap, vstats = self.bpf[maps.VIPS], self.bpf[maps.BACKENDS], self.bpf[maps.VIP_STATS]
        ids: dict[tuple[int, int, int], tuple[int, int]] = {}  # (port, proto, family) -> (id, count)
        for vip, port, proto in sorted(keys):
            fam = maps.family(vip)
            if (port, proto, fam) in ids:
                continue
            sid = self._next_id
            self._next_id += 1
            same = [b for b in backends[(port, proto)] if maps.family(b.address) == fam][:MAX_BACKENDS_PER_VIP]
            for i, be in enumerate(same):
                bmap[maps.backend_key(bmap, sid, i)] = maps.backend_leaf(bmap, be.address, be.port)
            vstats[maps.u32(sid)] = vstats.Leaf()
            ids[(port, proto, fam)] = (sid, len(same))
        for vip, port, proto in keys:
            sid, n = ids[(port, proto, maps.family(vip))]
            vips[maps.vip_key(vips, vip, port, proto)] = maps.vip_leaf(vips, sid, n)
        old = self.units.get(unit_key)
        if old is not None:
            for vip, port, proto in old.keys - keys:
                _delete(vips, maps.vip_key(vips, vip, port, proto))
            self._retire(unit_key[1], old)
        self.units[unit_key] = _Unit(dict(ids.values()), keys, backends)

    def _retire(self, host: str, unit: _Unit) -> None:
        """Drop a unit's ids (backends, stats), carrying their counters over to the host's totals."""
        c, nb = self._retired.get(host, (0, 0))
        bmap, vstats = self.bpf[maps.BACKENDS], self.bpf[maps.VIP_STATS]
        for sid, n in unit.ids.items():
            for i in range(n):
                _delete(bmap, maps.backend_key(bmap, sid, i))
            try:
                v = vstats[maps.u32(sid)]
                c, nb = c + v.connections, nb + v.no_backend
            except KeyError:
                pass
            _delete(vstats, maps.u32(sid))
        self._retired[host] = (c, nb)

    def _remove(self, unit_key: tuple[str, str]) -> None:
        unit = self.units.pop(unit_key)
        vips = self.bpf[maps.VIPS]
        for vip, port, proto in unit.keys:
            _delete(vips, maps.vip_key(vips, vip, port, proto))
        self._retire(unit_key[1], unit)

    def _sweep_foreign(self) -> None:
        """What a predecessor programmed and no unit of ours owns (it was replaced or removed)."""
        ours = {sid for u in self.units.values() for sid in u.ids}
        for name in (maps.VIPS, maps.BACKENDS, maps.VIP_STATS):
            m = self.bpf[name]
            for k, v in list(m.items()):
                sid = v.id if name == maps.VIPS else (k.id if name == maps.BACKENDS else k.value)
                if sid not in ours:
                    _delete(m, k)

    def counters(self) -> dict[str, tuple[int, int]]:
        """host -> (connections translated, refused for lack of backends), read at scrape time."""
        out = dict(self._retired)
        vstats = self.bpf[maps.VIP_STATS]
        by_id = {sid: host for (_, host), u in self.units.items() for sid in u.ids}
        for k, v in vstats.items():
            host = by_id.get(k.value)
            if host is not None:
                c, nb = out.get(host, (0, 0))
                out[host] = (c + v.connections, nb + v.no_backend)
        return out


def _delete(m: Any, k: Any) -> None:
    try:
        del m[k]
    except KeyError:
        pass
