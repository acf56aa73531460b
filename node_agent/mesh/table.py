"""The mesh's name table, answered in the view of the asking pod.

Sources feed registry records (model.py) through `apply` (incremental) and `replace` (full resync);
the responder calls `view_for(ip)` once per query and `lookup(view, qname, qtype)`.

Storage is two-level so updates stay cheap and lookups stay O(1):

* raw indexes keyed by what a record is about ((ns, service) groups, hosts, namespaces, IPs), updated
  per change in O(size of that record);
* per-name *compiled* data (addresses as strings, CNAME, SRV, PTR), built lazily on first lookup and
  dropped when a change touches that name. dnslib RRs are built per lookup (answers are shuffled).

Answer contract for the responder:

* RECORDS: NOERROR, AA, `records` is the answer section (empty = NODATA); may include a CNAME chain
  through table names (ExternalName services pointing at table names). `additional` goes in the
  additional section (the zone apex's NS answer carries its name server's addresses). `ordered`:
  the address order carries meaning (multicluster, local first): do not rotate it.
* SEARCH_CNAME: an answer whose CNAME chain leaves the table or comes from the server-side search
  path (see `_shortcut`). `records` starts with the CNAME ``<qname> -> <name>``; names the table has
  are followed by their records. If `target` is set, the chain ends at `target`, which the table does
  not know (the external name of a search expansion, or an ExternalName service's external host):
  resolve `target` upstream for the same qtype, append its answer and take its rcode (AA clear).
* NXDOMAIN: AA; `records` may hold a CNAME chain that ends at a name that does not exist.
* FORWARD: send the query to the upstream (kube-dns) unchanged.

Negative answers (NXDOMAIN, and RECORDS without records) carry `soa(qname)` in the authority section
(RFC 2308): the same record the zone apex answers for SOA.

Owner names in RRs are lower case; the responder may copy the question's case into them.

Cache invalidation: `apply`/`replace` return the names whose answers may have changed. Entries of the
form ``*.suffix`` stand for every name under suffix (wildcard ServiceEntries, the pod-IP names of a
namespace). `view_independent(name)` is False for every name some view answers from the table
(cluster domain, reverse names, ServiceEntry hosts, Istio alternate names). Search-shortcut answers
depend on the name they point at: a cache should index them under their CNAME target as well.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RR, SOA, SRV, TXT, A

from node_agent.mesh.model import (
    Change,
    EndpointSlice,
    Key,
    Kind,
    Namespace,
    Pod,
    Port,
    Record,
    Service,
    ServiceEntry,
    Snapshot,
    WorkloadEndpoint,
    WorkloadEntry,
)
from node_agent.mesh.views import View, node_view, pod_view
from node_agent.mesh.vip import VipAllocator, priority
from node_agent.settings import TableSettings

__all__ = ["Answer", "AnswerKind", "NameTable", "View"]

# Istio auto-allocates VIPs only for these resolutions (not DNS_ROUND_ROBIN), and never for wildcards.
VIP_RESOLUTIONS = frozenset({"NONE", "STATIC", "DNS"})
MAX_CNAME_CHAIN = 8
DNS_SCHEMA_VERSION = "1.1.0"  # kubernetes/dns docs/specification.md, section 1
DNS_VERSION_TTL = 28800  # the spec's example and CoreDNS's fixed TTL for dns-version.<zone>
# The DNS Service the zone's NS record points at when TableSettings.dns_service_ips is empty (the
# name every kubeadm/managed cluster keeps for CoreDNS).
DNS_SERVICE = ("kube-system", "kube-dns")


@dataclass(frozen=True)
class VipService:
    """A ServiceEntry host whose VIPs the kernel translates to backends."""

    namespace: str
    host: str
    vips: tuple[str, ...]
    ports: tuple[Port, ...]
    resolution: str  # STATIC: endpoint addresses are IPs; DNS: resolve endpoints (or the host) upstream
    endpoints: tuple[WorkloadEndpoint, ...]


class AnswerKind(Enum):
    RECORDS = "records"
    NXDOMAIN = "nxdomain"
    FORWARD = "forward"
    SEARCH_CNAME = "search_cname"


@dataclass(frozen=True)
class Answer:
    kind: AnswerKind
    records: tuple[RR, ...] = ()
    target: str = ""  # external name the responder resolves upstream and appends
    authoritative: bool = True
    # The order of the address records carries meaning (multicluster: the local cluster's first): the
    # cache must not rotate them.
    ordered: bool = False
    # Additional section (the zone's NS answer carries the name server's address).
    additional: tuple[RR, ...] = ()


FORWARD = Answer(AnswerKind.FORWARD, authoritative=False)
NXDOMAIN = Answer(AnswerKind.NXDOMAIN)


class _Data:
    """Compiled answer data of one name (for one visibility choice)."""

    __slots__ = ("v4", "v6", "ranked", "tier4", "tier6", "cname", "srv", "ptr", "txt", "ns", "soa")

    def __init__(
        self,
        v4: tuple[str, ...] = (),
        v6: tuple[str, ...] = (),
        ranked: bool = False,
        cname: str = "",
        srv: tuple[tuple[int, int, int, str], ...] = (),
        ptr: tuple[str, ...] = (),
        txt: tuple[str, ...] = (),
        ns: tuple[str, ...] = (),
        soa: bool = False,
        tier4: int = 0,
        tier6: int = 0,
    ) -> None:
        self.v4 = v4
        self.v6 = v6
        # Order carries meaning (multicluster: the local cluster's first): no shuffle across tiers.
        # tier4/tier6 > 0: the first that many addresses are one tier and the rest another, each
        # shuffled per answer (headless Services of several clusters); 0: the order is fixed.
        self.ranked = ranked
        self.tier4 = tier4
        self.tier6 = tier6
        self.cname = cname
        self.srv = srv
        self.ptr = ptr
        self.txt = txt
        self.ns = ns  # name server names (the zone apex)
        self.soa = soa  # the zone apex: answers SOA

    def same_records(self, other: _Data) -> bool:
        """Same answer for every type, whatever the order (an alias of the same Service)."""
        return (
            set(self.v4) == set(other.v4)
            and set(self.v6) == set(other.v6)
            and self.cname == other.cname
            and set(self.srv) == set(other.srv)
            and set(self.ptr) == set(other.ptr)
            and self.txt == other.txt
            and self.ns == other.ns
            and self.soa == other.soa
        )


EMPTY = _Data()  # an existing name with no records (empty non-terminal)


class _Entry:
    """A compiled name: fixed data, or ServiceEntry alternatives chosen by the asker's namespace."""

    __slots__ = ("fixed", "alts")

    def __init__(self, fixed: _Data | None = None, alts: tuple[tuple[ServiceEntry, _Data], ...] = ()):
        self.fixed = fixed
        self.alts = alts  # oldest first

    def pick(self, namespace: str) -> _Data | None:
        if self.fixed is not None:
            return self.fixed
        # Like an Istio sidecar scope: an entry in the asker's own namespace wins, then the oldest.
        chosen = None
        for se, data in self.alts:
            if visible(se, namespace):
                if se.namespace == namespace:
                    return data
                if chosen is None:
                    chosen = data
        return chosen


def visible(se: ServiceEntry, namespace: str) -> bool:
    """exportTo: "*" (or empty) everyone, "." own namespace, "~" nobody, else listed namespaces."""
    for e in se.export_to or ("*",):
        if e == "*" or e == namespace or (e == "." and namespace == se.namespace):
            return True
    return False


def _labels_match(selector: tuple[tuple[str, str], ...], labels: tuple[tuple[str, str], ...]) -> bool:
    if not selector:
        return False
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)


def _split_families(addrs: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    v4: dict[str, None] = {}
    v6: dict[str, None] = {}
    for a in addrs:
        (v6 if ":" in a else v4)[a] = None
    return tuple(v4), tuple(v6)


def _plain_ip(address: str) -> str | None:
    """An address usable in an A/AAAA answer: a bare IP, or a host prefix (/32, /128)."""
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return None
    if net.num_addresses != 1:
        return None
    return str(net.network_address)


def _reverse_name(ip: str) -> str | None:
    """The PTR owner of an IP (hot at bulk load: C-level parsing instead of the ipaddress module)."""
    try:
        if ":" in ip:
            return ".".join(reversed(socket.inet_pton(socket.AF_INET6, ip).hex())) + ".ip6.arpa"
        socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        return None
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


def _ip_from_reverse(name: str) -> str | None:
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4:
            return None
        text = ".".join(reversed(parts))
    elif name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32:
            return None
        h = "".join(reversed(nibbles))
        text = ":".join(h[i : i + 4] for i in range(0, 32, 4))
    else:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _dashed(ip: str) -> str:
    """CoreDNS's name for an endpoint without hostname: 10-244-1-21, 2001-db8--1, fd00--0 for fd00::
    (a label may not end with a hyphen)."""
    label = ip.replace(".", "-").replace(":", "-")
    return label + "0" if label.endswith("-") else label


class NameTable:
    def __init__(self, settings: TableSettings) -> None:
        self.settings = settings
        self.synced = False  # set by the agent once every source has listed everything
        self.on_pod_change: Callable[[Pod | None, Pod | None], None] | None = None
        self._domain = settings.cluster_domain.lower().strip(".")
        self._records: dict[Key, Record] = {}
        self._owner: dict[Key, tuple[str, str]] = {}  # key -> (source, cluster) of the snapshot owning it
        self._cluster_owner: dict[str, tuple[str, str]] = {}  # last replace per cluster
        self._counts: dict[Kind, int] = dict.fromkeys(Kind, 0)
        # raw indexes
        self._pods_by_ip: dict[str, dict[Key, Pod]] = {}
        self._views: dict[str, View] = {}
        self._svc: dict[tuple[str, str], dict[str, Service]] = {}  # (ns, name) -> cluster -> Service
        self._svc_by_ns: dict[str, set[str]] = {}  # ns -> service names (namespace ENTs, VM selection)
        self._ns_by_svc: dict[str, set[str]] = {}  # service name -> namespaces (Istio alternate names)
        self._slices: dict[tuple[str, str], dict[Key, EndpointSlice]] = {}  # (ns, service) -> slices
        # endpoint IP -> slices, for endpoint PTRs. Built on the first PTR query that needs it (bulk
        # loads skip the work, and the reverse names in their change sets, until someone asks).
        self._ep_ips: dict[str, dict[Key, EndpointSlice]] | None = None
        # Namespaces exist (CoreDNS: <ns>.svc.<zone> NODATA, pod names answered) by a Namespace record
        # of any cluster, or by holding a Service or a Pod (sources that deliver no Namespaces).
        self._namespaces: dict[str, set[str]] = {}  # namespace -> clusters with a Namespace record
        self._pods_by_ns: dict[str, int] = {}
        self._ptr: dict[str, set[tuple[str, str, str]]] = {}  # service IP -> {(cluster, ns, name)}
        self._se_host: dict[str, dict[Key, ServiceEntry]] = {}
        self._se_wild: dict[str, dict[Key, ServiceEntry]] = {}  # "example.com" for "*.example.com"
        self._se_selecting: dict[str, dict[Key, ServiceEntry]] = {}  # ns -> entries with workloadSelector
        self._we: dict[str, dict[Key, WorkloadEntry]] = {}  # ns -> workload entries
        self._vips = VipAllocator()
        self._vip_seen: dict[tuple[str, str], tuple[str, ...]] = {}
        # compiled names
        self._compiled: dict[str, _Entry] = {}

    # ================================================================================= updates ====
    def apply(self, changes: Iterable[Change]) -> set[str]:
        changed: set[str] = set()
        pod_events: list[tuple[Pod | None, Pod | None]] = []
        for ch in changes:
            owner = self._owner.get(ch.key) or self._cluster_owner.get(ch.key.cluster, ("", ch.key.cluster))
            self._upsert(ch.key, ch.record, owner, changed, pod_events)
        return self._finish(changed, pod_events)

    def replace(self, snapshot: Snapshot) -> set[str]:
        owner = (snapshot.source, snapshot.cluster)
        self._cluster_owner[snapshot.cluster] = owner
        unowned = ("", snapshot.cluster)  # applied before any snapshot of this cluster: ours now
        incoming: dict[Key, Record] = {Key.of(r): r for r in snapshot.records}
        changed: set[str] = set()
        pod_events: list[tuple[Pod | None, Pod | None]] = []
        # Deletions first: freed VIP slots settle before new claims arrive.
        for key, o in list(self._owner.items()):
            if (o == owner or o == unowned) and key not in incoming:
                self._upsert(key, None, owner, changed, pod_events)

        # ServiceEntries oldest first, so new VIP claims rarely evict each other on the way.
        def order(item: tuple[Key, Record]) -> tuple[int, tuple]:
            r = item[1]
            if isinstance(r, ServiceEntry):
                return (1, priority(r.creation_timestamp, r.uid, r.namespace, r.name))
            return (0, ())

        for key, record in sorted(incoming.items(), key=order):
            self._upsert(key, record, owner, changed, pod_events)
        return self._finish(changed, pod_events)

    def _finish(self, changed: set[str], pod_events: list[tuple[Pod | None, Pod | None]]) -> set[str]:
        if len(changed) > len(self._compiled):
            self._compiled.clear()
        else:
            for name in changed:
                self._compiled.pop(name, None)
        if self.on_pod_change is not None:
            for old, new in pod_events:
                self.on_pod_change(old, new)
        return changed

    def _upsert(
        self,
        key: Key,
        record: Record | None,
        owner: tuple[str, str],
        changed: set[str],
        pod_events: list[tuple[Pod | None, Pod | None]],
    ) -> None:
        old = self._records.get(key)
        if record is None:
            if old is None:
                return
            del self._records[key]
            del self._owner[key]
            self._counts[key.kind] -= 1
            self._unindex(key, old, changed)
        else:
            self._owner[key] = owner
            if old == record:
                return
            if old is None:
                self._counts[key.kind] += 1
            else:
                self._unindex(key, old, changed)
            self._records[key] = record
            self._index(key, record, changed)
        if key.kind is Kind.POD:
            before = old if isinstance(old, Pod) else None
            pod_events.append((before, record if isinstance(record, Pod) else None))

    def _index(self, key: Key, r: Record, changed: set[str]) -> None:
        if isinstance(r, Pod):
            self._index_pod(key, r)
            n = self._pods_by_ns.get(r.namespace, 0)
            self._pods_by_ns[r.namespace] = n + 1
            if n == 0:
                self._namespace_names(r.namespace, changed)
        elif isinstance(r, Namespace):
            self._namespaces.setdefault(r.name, set()).add(r.cluster)
            self._namespace_names(r.name, changed)
        elif isinstance(r, Service):
            self._index_service(r, changed)
        elif isinstance(r, EndpointSlice):
            self._slices.setdefault((r.namespace, r.service), {})[key] = r
            if self._ep_ips is not None:
                for ep in r.endpoints:
                    for a in ep.addresses:
                        self._ep_ips.setdefault(a, {})[key] = r
            self._slice_names(r, changed)
        elif isinstance(r, ServiceEntry):
            self._index_se(key, r, changed)
        elif isinstance(r, WorkloadEntry):
            self._we.setdefault(r.namespace, {})[key] = r
            self._workload_names(r, changed)

    def _unindex(self, key: Key, r: Record, changed: set[str]) -> None:
        if isinstance(r, Pod):
            self._unindex_pod(key, r)
            n = self._pods_by_ns.get(r.namespace, 0) - 1
            if n > 0:
                self._pods_by_ns[r.namespace] = n
            else:
                self._pods_by_ns.pop(r.namespace, None)
                self._namespace_names(r.namespace, changed)
        elif isinstance(r, Namespace):
            _discard(self._namespaces, r.name, r.cluster)
            self._namespace_names(r.name, changed)
        elif isinstance(r, Service):
            self._unindex_service(r, changed)
        elif isinstance(r, EndpointSlice):
            _discard(self._slices, (r.namespace, r.service), key)
            if self._ep_ips is not None:
                for ep in r.endpoints:
                    for a in ep.addresses:
                        _discard(self._ep_ips, a, key)
            self._slice_names(r, changed)
        elif isinstance(r, ServiceEntry):
            self._unindex_se(key, r, changed)
        elif isinstance(r, WorkloadEntry):
            _discard(self._we, r.namespace, key)
            self._workload_names(r, changed)

    # -- pods -------------------------------------------------------------------------------------
    def _index_pod(self, key: Key, pod: Pod) -> None:
        if pod.host_network:
            return  # its IP is the node's: asks in the node's view
        for ip in pod.ips:
            by_key = self._pods_by_ip.setdefault(ip, {})
            by_key.pop(key, None)
            by_key[key] = pod  # last updated wins an IP shared during pod churn
            self._views.pop(ip, None)

    def _unindex_pod(self, key: Key, pod: Pod) -> None:
        for ip in pod.ips:
            _discard(self._pods_by_ip, ip, key)
            self._views.pop(ip, None)

    # -- services ---------------------------------------------------------------------------------
    def _index_service(self, svc: Service, changed: set[str]) -> None:
        self._svc.setdefault((svc.namespace, svc.name), {})[svc.cluster] = svc
        self._svc_by_ns.setdefault(svc.namespace, set()).add(svc.name)
        self._ns_by_svc.setdefault(svc.name, set()).add(svc.namespace)
        for ip in self._service_ips(svc):
            self._ptr.setdefault(ip, set()).add((svc.cluster, svc.namespace, svc.name))
        self._service_names(svc, changed)

    def _unindex_service(self, svc: Service, changed: set[str]) -> None:
        group = self._svc.get((svc.namespace, svc.name))
        if group is not None and group.get(svc.cluster) is not None:
            del group[svc.cluster]
            if not group:
                del self._svc[(svc.namespace, svc.name)]
                _discard(self._svc_by_ns, svc.namespace, svc.name)
                _discard(self._ns_by_svc, svc.name, svc.namespace)
        for ip in self._service_ips(svc):
            _discard(self._ptr, ip, (svc.cluster, svc.namespace, svc.name))
        self._service_names(svc, changed)

    @staticmethod
    def _service_ips(svc: Service) -> tuple[str, ...]:
        if svc.type == "ExternalName" or svc.headless:
            return ()
        return tuple(ip for ip in svc.cluster_ips if ip and ip != "None")

    def _fqdn(self, namespace: str, name: str) -> str:
        return f"{name}.{namespace}.svc.{self._domain}"

    def _port_names(self, fqdn: str, ports: Iterable, changed: set[str]) -> None:
        for p in ports:
            proto = p.protocol.lower()
            changed.add(f"_{proto}.{fqdn}")
            if p.name:
                changed.add(f"_{p.name.lower()}._{proto}.{fqdn}")

    def _namespace_exists(self, ns: str) -> bool:
        return ns in self._namespaces or ns in self._svc_by_ns or ns in self._pods_by_ns

    def _namespace_names(self, ns: str, changed: set[str]) -> None:
        """Names whose answer depends on whether namespace `ns` exists."""
        svc = f"{ns}.svc.{self._domain}"
        if svc in changed:
            return  # a bulk load touches a namespace once per Service: the names are in already
        changed.add(svc)
        changed.add(f"{ns}.pod.{self._domain}")
        changed.add(f"*.{ns}.pod.{self._domain}")  # pod-IP names

    @staticmethod
    def _alt_names(namespace: str, short: str, changed: set[str]) -> None:
        """Istio's alternate names of ``<short>.<namespace>.svc.<domain>`` (the bare one in every view)."""
        changed.add(f"{short}.{namespace}")
        changed.add(f"{short}.{namespace}.svc")
        changed.add(short)

    def _service_names(self, svc: Service, changed: set[str]) -> None:
        fqdn = self._fqdn(svc.namespace, svc.name)
        changed.add(fqdn)
        self._alt_names(svc.namespace, svc.name, changed)
        self._namespace_names(svc.namespace, changed)
        self._port_names(fqdn, svc.ports, changed)
        if (svc.namespace, svc.name) == DNS_SERVICE and not self.settings.dns_service_ips:
            changed.update((self._domain, f"ns.dns.{self._domain}"))  # NS glue
        for ip in self._service_ips(svc):
            rev = _reverse_name(ip)
            if rev:
                changed.add(rev)
        # endpoint names and SRV targets depend on the service existing / being headless
        for sl in self._slices.get((svc.namespace, svc.name), {}).values():
            self._slice_names(sl, changed)

    def _slice_names(self, sl: EndpointSlice, changed: set[str]) -> None:
        fqdn = self._fqdn(sl.namespace, sl.service)
        changed.add(fqdn)
        self._alt_names(sl.namespace, sl.service, changed)  # they exist only while the service resolves
        self._port_names(fqdn, sl.ports, changed)
        for ep in sl.endpoints:
            if ep.hostname:
                changed.add(f"{ep.hostname.lower()}.{fqdn}")
                self._alt_names(sl.namespace, f"{ep.hostname.lower()}.{sl.service}", changed)
            for a in ep.addresses:
                if not ep.hostname:
                    changed.add(f"{_dashed(a)}.{fqdn}")
                if self._ep_ips is not None:  # else no endpoint PTR answer was ever given or cached
                    rev = _reverse_name(a)
                    if rev:
                        changed.add(rev)

    def _workload_names(self, we: WorkloadEntry, changed: set[str]) -> None:
        for se in self._se_selecting.get(we.namespace, {}).values():
            if _labels_match(se.workload_selector, we.labels):
                changed.update(self._se_names(se))
        # headless Services selecting VMs by label resolve to their addresses
        for name in self._svc_by_ns.get(we.namespace, ()):
            group = self._svc[(we.namespace, name)]
            if any(s.headless and _labels_match(s.selector, we.labels) for s in group.values()):
                changed.add(self._fqdn(we.namespace, name))
                self._alt_names(we.namespace, name, changed)

    # -- service entries --------------------------------------------------------------------------
    def _se_names(self, se: ServiceEntry) -> set[str]:
        return {h.lower().rstrip(".") for h in se.hosts}

    def _index_se(self, key: Key, se: ServiceEntry, changed: set[str]) -> None:
        for host in self._se_names(se):
            if host.startswith("*."):
                self._se_wild.setdefault(host[2:], {})[key] = se
            else:
                self._se_host.setdefault(host, {})[key] = se
                if not se.addresses and se.resolution in VIP_RESOLUTIONS:
                    prio = priority(se.creation_timestamp, se.uid, se.namespace, se.name)
                    self._vip_changed(self._vips.claim((se.namespace, host), key, prio), changed)
            changed.add(host)
        if se.workload_selector:
            self._se_selecting.setdefault(se.namespace, {})[key] = se

    def _unindex_se(self, key: Key, se: ServiceEntry, changed: set[str]) -> None:
        for host in self._se_names(se):
            if host.startswith("*."):
                _discard(self._se_wild, host[2:], key)
            else:
                _discard(self._se_host, host, key)
                self._vip_changed(self._vips.release((se.namespace, host), key), changed)
            changed.add(host)
        _discard(self._se_selecting, se.namespace, key)

    def _vip_changed(self, units: set[tuple[str, str]], changed: set[str]) -> None:
        for unit in units:
            changed.add(unit[1])
            new = self._vips.get(unit)
            for addr in self._vip_seen.get(unit, ()) + new:
                rev = _reverse_name(addr)
                if rev:
                    changed.add(rev)
            if new:
                self._vip_seen[unit] = new
            else:
                self._vip_seen.pop(unit, None)

    # ================================================================================= queries ====
    def view_for(self, ip: str) -> View | None:
        view = self._views.get(ip)
        if view is not None:
            return view
        pod = self.pod_for(ip)
        s = self.settings
        if pod is not None:
            view = pod_view(pod, self._domain, s.default_ndots, s.node_searches)
        elif ip in s.node_ips:
            view = node_view(s.node_searches)
        else:
            return None
        self._views[ip] = view
        return view

    def pods(self) -> list[Pod]:
        """Every pod in the table (sources deliver this node's pods only)."""
        return [r for r in self._records.values() if isinstance(r, Pod)]

    def pod_for(self, ip: str) -> Pod | None:
        by_key = self._pods_by_ip.get(ip)
        if not by_key:
            return None
        return next(reversed(by_key.values()))

    def vip_of(self, host: str, namespace: str) -> tuple[str, ...]:
        """Declared plain addresses, else the auto-allocated VIPs, of the entry for `host` seen from ns."""
        se = self._choose_se(host.lower().rstrip("."), namespace)
        if se is None:
            return ()
        if se.addresses:
            return tuple(a for a in map(_plain_ip, se.addresses) if a)
        return self._vips.get((se.namespace, host.lower().rstrip(".")))

    def endpoints_of(self, host: str, namespace: str) -> tuple[str, ...]:
        """Endpoint IPs (inline endpoints + selected WorkloadEntries) of the entry for `host` seen from ns."""
        se = self._choose_se(host.lower().rstrip("."), namespace)
        return self._se_endpoints(se) if se is not None else ()

    def view_independent(self, name: str) -> bool:
        """True when no view can get a table answer for `name`: every pod would forward it, so its
        upstream answer may be shared by all views. Conservative: the cluster domain, reverse names
        and ServiceEntry hosts (visibility differs by namespace) are never shared."""
        name = name.lower().rstrip(".")
        if self._in_domain(name) or name.endswith(".arpa") or name in self._se_host:
            return False
        if self._maybe_alt(name):
            return False
        if self._se_wild:
            labels = name.split(".")
            if any(".".join(labels[i:]) in self._se_wild for i in range(1, len(labels))):
                return False
        return True

    def _maybe_alt(self, name: str) -> bool:
        """Could some view answer `name` as an Istio alternate name? (Conservative: a Service of that
        name in that namespace is enough; whether it resolves is not checked.)"""
        labels = name.split(".")
        n = len(labels)
        if n == 1:
            return name in self._ns_by_svc  # `<svc>` in the Service's own namespace
        if n == 2 and labels[1] in self._ns_by_svc:
            return True  # `<host>.<svc>` (pod name) in the Service's own namespace
        if n in (2, 3) and (labels[1], labels[0]) in self._svc:
            return True  # `<svc>.<ns>`, `<svc>.<ns>.svc`
        return n in (3, 4) and (labels[2], labels[1]) in self._svc  # `<host>.<svc>.<ns>[.svc]`

    def vip_services(self) -> list[VipService]:
        """Every ServiceEntry host whose VIP must carry traffic (STATIC and DNS resolution): its VIPs
        (declared single addresses, else the allocated ones), ports and endpoints. One per
        (namespace, host); among several entries for the same unit the oldest wins, as in lookups."""
        out: list[VipService] = []
        for host, entries in self._se_host.items():
            units: dict[str, ServiceEntry] = {}
            ordered = sorted(entries.values(), key=lambda e: priority(e.creation_timestamp, e.uid, e.namespace, e.name))
            for se in ordered:
                if se.resolution in ("STATIC", "DNS") and se.ports:
                    units.setdefault(se.namespace, se)
            for ns, se in units.items():
                declared = tuple(a for a in map(_plain_ip, se.addresses) if a)
                vips = declared or self._vips.get((ns, host))
                if vips:
                    out.append(VipService(ns, host, vips, se.ports, se.resolution, self._se_workloads(se)))
        return out

    def _se_workloads(self, se: ServiceEntry) -> tuple[WorkloadEndpoint, ...]:
        eps = list(se.endpoints)
        if se.workload_selector:
            for we in self._we.get(se.namespace, {}).values():
                if _labels_match(se.workload_selector, we.labels):
                    eps.append(WorkloadEndpoint(we.address, we.ports, we.labels, we.network))
        return tuple(eps)

    def sizes(self) -> dict[str, int]:
        out = {k.value: n for k, n in self._counts.items()}
        out["vips"] = len(self._vips)
        return out

    def lookup(self, view: View, qname: str, qtype: int) -> Answer:
        name = qname.lower().rstrip(".")
        data = self._find(name, view.namespace)
        if data is not None:
            return self._answer(name, data, qtype, view.namespace)
        shortcut = self._shortcut(view, name, qtype)
        if shortcut is not None:
            return shortcut
        return NXDOMAIN if self._authoritative_nx(name) else FORWARD

    # -- name resolution --------------------------------------------------------------------------
    def _in_domain(self, name: str) -> bool:
        return name == self._domain or name.endswith("." + self._domain)

    def _authoritative_nx(self, name: str) -> bool:
        """May the table say a name it does not have does not exist?"""
        return self.synced and self.settings.nxdomain_in_cluster_domain and self._in_domain(name)

    def _find(self, name: str, namespace: str) -> _Data | None:
        """Data of a table name visible from namespace; None if the table does not have it."""
        entry = self._compiled.get(name)
        if entry is None:
            entry = self._compile(name)
            if entry is not None:
                self._compiled[name] = entry  # misses are not cached: random names must not grow memory
        if entry is not None and entry.fixed is not None:
            return entry.fixed
        if namespace and name.count(".") <= 1:
            # Alternate names relative to the asker's namespace; a Kubernetes name wins over a
            # ServiceEntry host of the same spelling, as for full names.
            local = self._local_alt(name, namespace)
            if local is not None:
                return local
        if entry is not None:
            data = entry.pick(namespace)
            if data is not None:
                return data
        return self._dynamic(name, namespace)

    def _compile(self, name: str) -> _Entry | None:
        if self._in_domain(name):
            rel = name[: -len(self._domain)].rstrip(".")
            data = self._compile_cluster(rel)
            if data is not None:
                return _Entry(fixed=data)
        if name.endswith(".arpa"):
            ptr = self._compile_ptr(name)
            if ptr is not None:
                return _Entry(fixed=ptr)
        else:
            alt = self._compile_alt(name)
            if alt is not None:
                return _Entry(fixed=alt)
        entries = self._se_host.get(name)
        if entries:
            return self._compile_se(name, entries)
        return None

    # -- Istio alternate names (pkg/dns/client generateAltHosts) ---------------------------------
    # A Kubernetes Service that resolves (not ExternalName, which Istio's table leaves out) answers
    # also as `<svc>.<ns>` and `<svc>.<ns>.svc`, and as `<svc>` to askers in its namespace; a
    # headless Service's endpoints with a hostname likewise as `<host>.<svc>.<ns>[.svc]` and
    # `<host>.<svc>`. Same data as the full name: these are what VMs, hostNetwork pods and apps with
    # their own search list send as absolute names.
    def _compile_alt(self, name: str) -> _Data | None:
        if self._in_domain(name):
            return None
        labels = name.split(".")
        n = len(labels)
        if n == 2:
            return self._service_alt(labels[1], labels[0])
        if n == 3:
            if labels[2] == "svc":
                data = self._service_alt(labels[1], labels[0])
                if data is not None:
                    return data
            return self._pod_alt(labels[2], labels[1], labels[0])
        if n == 4 and labels[3] == "svc":
            return self._pod_alt(labels[2], labels[1], labels[0])
        return None

    def _local_alt(self, name: str, namespace: str) -> _Data | None:
        if "." not in name:
            return self._service_alt(namespace, name)
        host, svc = name.split(".")
        return self._pod_alt(namespace, svc, host)

    def _cluster_data(self, fqdn: str) -> _Data | None:
        """The Kubernetes data of a name under the cluster domain (never a ServiceEntry's)."""
        entry = self._compiled.get(fqdn)
        if entry is None:
            entry = self._compile(fqdn)
            if entry is None:
                return None
            self._compiled[fqdn] = entry
        return entry.fixed

    def _service_alt(self, ns: str, name: str) -> _Data | None:
        if (ns, name) not in self._svc:
            return None
        data = self._cluster_data(self._fqdn(ns, name))
        if data is None or data.cname or not (data.v4 or data.v6):
            return None
        return data

    def _pod_alt(self, ns: str, svc: str, host: str) -> _Data | None:
        group = self._svc.get((ns, svc))
        if not group or not self._primary(group).headless or host.startswith("_"):
            return None  # Istio's pod names are those of headless Services
        data = self._cluster_data(f"{host}.{self._fqdn(ns, svc)}")
        if data is None or not any(
            ep.hostname.lower() == host for sl in self._slices.get((ns, svc), {}).values() for ep in sl.endpoints
        ):
            return None  # Istio names only endpoints with a hostname (StatefulSet pods), not IP labels
        return data

    def _compile_cluster(self, rel: str) -> _Data | None:
        if not rel:
            # The zone apex: SOA and NS as CoreDNS answers them (the SOA is the one every negative
            # answer cites: see soa()).
            return _Data(soa=True, ns=(f"ns.dns.{self._domain}",))
        if rel == "dns-version":
            return _Data(txt=(DNS_SCHEMA_VERSION,))  # spec 2.2
        if rel == "ns.dns":
            v4, v6 = _split_families(self._dns_service_ips())
            return _Data(v4=v4, v6=v6)
        labels = rel.split(".")
        if labels[-1] == "pod":
            if not self.settings.pod_records or len(labels) > 2:
                return None
            return EMPTY if len(labels) == 1 or self._namespace_exists(labels[0]) else None
        if labels[-1] != "svc":
            return None
        if len(labels) == 1:
            return EMPTY
        ns = labels[-2]
        if len(labels) == 2:
            return EMPTY if self._namespace_exists(ns) else None
        svc, prefix = labels[-3], labels[:-3]
        group = self._svc.get((ns, svc))
        if not group:
            return None
        primary = self._primary(group)
        if not prefix:
            return self._service_data(ns, svc, group, primary)
        if len(prefix) == 1 and prefix[0].startswith("_"):
            # "_tcp.<svc>": an empty non-terminal when some port uses that protocol
            return EMPTY if self._srv(ns, svc, group, primary, None, prefix[0][1:]) else None
        if len(prefix) == 1:
            return self._endpoint_data(ns, svc, group, primary, prefix[0])
        if len(prefix) == 2 and prefix[0].startswith("_") and prefix[1].startswith("_"):
            srv = self._srv(ns, svc, group, primary, prefix[0][1:], prefix[1][1:])
            return _Data(srv=srv) if srv else None
        return None

    def _dns_service_ips(self) -> tuple[str, ...]:
        if self.settings.dns_service_ips:
            return self.settings.dns_service_ips
        group = self._svc.get(DNS_SERVICE)
        return self._service_ips(self._primary(group)) if group else ()

    def soa(self, qname: str) -> RR:
        """The SOA record of the zone `qname` falls in: the cluster domain's (the apex answer, and the
        authority of negative answers under it), else the parent of qname, as Resolver._soa makes it.
        MNAME ns.dns.<zone> and RNAME hostmaster.<zone> as CoreDNS; the minimum is the table TTL."""
        name = qname.lower().rstrip(".")
        zone = self._domain if self._in_domain(name) else (name.split(".", 1)[-1] if "." in name else ".")
        ttl = self.settings.ttl
        mname = f"ns.dns.{self._domain}"
        rname = f"hostmaster.{self._domain}"
        return RR(zone, QTYPE.SOA, rdata=SOA(mname, rname, (1, 7200, 1800, 86400, ttl)), ttl=ttl)

    def _primary(self, group: dict[str, Service]) -> Service:
        local = group.get(self.settings.local_cluster)
        return local if local is not None else group[min(group)]

    def _ordered_clusters(self, group: dict[str, Service]) -> list[Service]:
        local = self.settings.local_cluster
        return [group[c] for c in sorted(group, key=lambda c: (c != local, c))]

    def _service_data(self, ns: str, name: str, group: dict[str, Service], primary: Service) -> _Data | None:
        if primary.type == "ExternalName":
            return _Data(cname=primary.external_name.lower().rstrip("."))
        srv = self._srv(ns, name, group, primary, None, None)
        if primary.headless:
            eps = list(self._headless_endpoints(ns, name, group, primary))
            local = self.settings.local_cluster
            v4, v6 = _split_families([a for a, _, c in eps if c == local] + [a for a, _, c in eps if c != local])
            if not v4 and not v6:
                return None  # spec 2.4.1: no ready endpoints -> NXDOMAIN (CoreDNS: for every type)
            if len({c == local for _, _, c in eps}) == 1:
                return _Data(v4=v4, v6=v6, srv=srv)  # one cluster (or only remote ones): shuffled
            # The local cluster's endpoints first (as its ClusterIP), each tier shuffled per answer.
            l4, l6 = _split_families(a for a, _, c in eps if c == local)
            return _Data(v4=v4, v6=v6, srv=srv, ranked=True, tier4=len(l4) or len(v4), tier6=len(l6) or len(v6))
        # Multicluster: the local cluster's ClusterIP first, then the others by cluster name.
        clusters = [s for s in self._ordered_clusters(group) if s.type != "ExternalName" and self._service_ips(s)]
        ips = [ip for s in clusters for ip in self._service_ips(s)]
        v4, v6 = _split_families(ips)
        return _Data(v4=v4, v6=v6, ranked=len(clusters) > 1, srv=srv)

    def _headless_endpoints(
        self, ns: str, name: str, group: dict[str, Service], primary: Service
    ) -> Iterable[tuple[str, str, str]]:
        """(address, endpoint name label, cluster) of every published endpoint, union over clusters."""
        for sl in self._slices.get((ns, name), {}).values():
            svc = group.get(sl.cluster, primary)
            for ep in sl.endpoints:
                if ep.ready or svc.publish_not_ready:
                    for a in ep.addresses:
                        yield a, (ep.hostname.lower() if ep.hostname else _dashed(a)), sl.cluster
        # A headless Service selecting VMs: WorkloadEntry addresses (no per-endpoint names).
        if primary.selector:
            for we in self._we.get(ns, {}).values():
                if _labels_match(primary.selector, we.labels):
                    yield we.address, "", we.cluster

    def _endpoint_data(
        self, ns: str, name: str, group: dict[str, Service], primary: Service, label: str
    ) -> _Data | None:
        # Every Service's endpoints have names (CoreDNS answers them for ClusterIP Services too, and
        # names them in PTR answers); an ExternalName Service has none.
        if primary.type == "ExternalName":
            return None
        found = [(a, c) for a, n, c in self._headless_endpoints(ns, name, group, primary) if n == label]
        if not found:
            return None
        # A pod name names one pod: the local cluster's when it has one by that name, else the
        # others' (Istio BuildNameTable writes remote pod names only where no local one exists).
        local = [a for a, c in found if c == self.settings.local_cluster]
        v4, v6 = _split_families(local or [a for a, _ in found])
        return _Data(v4=v4, v6=v6)

    def _srv(
        self,
        ns: str,
        name: str,
        group: dict[str, Service],
        primary: Service,
        port_name: str | None,
        proto: str | None,
    ) -> tuple[tuple[int, int, int, str], ...]:
        """SRV data (priority, weight, port, target); port_name/proto None match any (a bare SRV query)."""

        def wanted(p_name: str, p_proto: str) -> bool:
            if proto is not None and p_proto.lower() != proto:
                return False
            return port_name is None or (bool(p_name) and p_name.lower() == port_name)

        fqdn = self._fqdn(ns, name)
        if primary.type == "ExternalName":
            return ()
        if not primary.headless:
            return tuple((0, 100, p.port, fqdn) for p in primary.ports if wanted(p.name, p.protocol))
        out: list[tuple[int, int, int, str]] = []
        for sl in self._slices.get((ns, name), {}).values():
            ports = [p for p in sl.ports if wanted(p.name, p.protocol)]
            if not ports:
                continue
            svc = group.get(sl.cluster, primary)
            for ep in sl.endpoints:
                if not (ep.ready or svc.publish_not_ready):
                    continue
                for a in ep.addresses[:1]:  # one target per endpoint, as CoreDNS
                    label = ep.hostname.lower() if ep.hostname else _dashed(a)
                    out.extend((0, 0, p.port, f"{label}.{fqdn}") for p in ports)
        if out:
            weight = max(1, 100 // len(out))
            out = [(pr, weight, port, t) for pr, _, port, t in dict.fromkeys(out)]
        return tuple(out)

    def _compile_ptr(self, name: str) -> _Data | None:
        ip = _ip_from_reverse(name)
        if ip is None:
            return None
        owners = self._ptr.get(ip)
        if not owners:
            return self._endpoint_ptr(ip)
        local = [o for o in owners if o[0] == self.settings.local_cluster]
        chosen = local or sorted(owners)
        return _Data(ptr=tuple(dict.fromkeys(self._fqdn(ns, n) for _, ns, n in sorted(chosen))))

    def _endpoint_ptr(self, ip: str) -> _Data | None:
        """Spec 2.4.3, as CoreDNS: an IP that is no ClusterIP names every published endpoint with it,
        ``<hostname>.<svc>.<ns>.svc.<zone>`` (hostname or the IP label), for any Service but
        ExternalName. Of several clusters, the local one's when it has the IP (as for ClusterIPs)."""
        if self._ep_ips is None:
            self._ep_ips = {}
            for slices in self._slices.values():
                for key, sl in slices.items():
                    for ep in sl.endpoints:
                        for a in ep.addresses:
                            self._ep_ips.setdefault(a, {})[key] = sl
        found: set[tuple[bool, str]] = set()
        for sl in self._ep_ips.get(ip, {}).values():
            group = self._svc.get((sl.namespace, sl.service))
            if not group:
                continue
            primary = self._primary(group)
            if primary.type == "ExternalName":
                continue
            svc = group.get(sl.cluster, primary)
            fqdn = self._fqdn(sl.namespace, sl.service)
            for ep in sl.endpoints:
                if ip in ep.addresses and (ep.ready or svc.publish_not_ready):
                    label = ep.hostname.lower() if ep.hostname else _dashed(ip)
                    found.add((sl.cluster != self.settings.local_cluster, f"{label}.{fqdn}"))
        if not found:
            return None
        local = [n for remote, n in found if not remote]
        return _Data(ptr=tuple(sorted(local or [n for _, n in found])))

    def _compile_se(self, host: str, entries: dict[Key, ServiceEntry]) -> _Entry | None:
        alts = []
        ordered = sorted(entries.values(), key=lambda e: priority(e.creation_timestamp, e.uid, e.namespace, e.name))
        for se in ordered:
            data = self._se_data(se, host)
            if data is not None:
                alts.append((se, data))
        return _Entry(alts=tuple(alts)) if alts else None

    def _se_data(self, se: ServiceEntry, host: str) -> _Data | None:
        if se.addresses:
            # Declared addresses win; CIDR ranges cannot be answered (Istio skips them too).
            v4, v6 = _split_families(a for a in map(_plain_ip, se.addresses) if a)
            return _Data(v4=v4, v6=v6) if v4 or v6 else None
        if self.settings.answer_vips and se.resolution in VIP_RESOLUTIONS:
            v4, v6 = _split_families(self._vips.get((se.namespace, host)))
            if v4 or v6:
                return _Data(v4=v4, v6=v6)
        if se.resolution == "STATIC":
            v4, v6 = _split_families(self._se_endpoints(se))
            return _Data(v4=v4, v6=v6)
        return None  # DNS / DNS_ROUND_ROBIN without an address: the real name resolves upstream

    def _se_endpoints(self, se: ServiceEntry) -> tuple[str, ...]:
        addrs = [a for a in (_plain_ip(ep.address) for ep in se.endpoints) if a]
        if se.workload_selector:
            for we in self._we.get(se.namespace, {}).values():
                if _labels_match(se.workload_selector, we.labels):
                    ip = _plain_ip(we.address)
                    if ip:
                        addrs.append(ip)
        return tuple(dict.fromkeys(addrs))

    def _choose_se(self, host: str, namespace: str) -> ServiceEntry | None:
        entries = self._se_host.get(host) or {}
        ordered = sorted(entries.values(), key=lambda e: priority(e.creation_timestamp, e.uid, e.namespace, e.name))
        seen = [se for se in ordered if visible(se, namespace)]
        own = [se for se in seen if se.namespace == namespace]
        return (own or seen)[0] if seen else None

    def _dynamic(self, name: str, namespace: str) -> _Data | None:
        """Names not worth caching per name: wildcard entries, pod A records, VIP PTRs."""
        if self._se_wild:
            labels = name.split(".")
            for i in range(1, len(labels)):  # longest suffix first
                entries = self._se_wild.get(".".join(labels[i:]))
                if not entries:
                    continue
                alt = _Entry(
                    alts=tuple(
                        (se, d)
                        for se in sorted(
                            entries.values(),
                            key=lambda e: priority(e.creation_timestamp, e.uid, e.namespace, e.name),
                        )
                        if (d := self._wild_data(se)) is not None
                    )
                )
                data = alt.pick(namespace)
                if data is not None:
                    return data
        if self.settings.pod_records and name.endswith(f".pod.{self._domain}"):
            return self._pod_record(name)
        if name.endswith(".arpa"):
            return self._vip_ptr(name, namespace)
        return None

    @staticmethod
    def _wild_data(se: ServiceEntry) -> _Data | None:
        # A wildcard has no VIP; without declared addresses its names resolve upstream.
        v4, v6 = _split_families(a for a in map(_plain_ip, se.addresses) if a)
        return _Data(v4=v4, v6=v6) if v4 or v6 else None

    def _pod_record(self, name: str) -> _Data | None:
        labels = name[: -len(f".pod.{self._domain}")].split(".")
        if len(labels) != 2 or not self._namespace_exists(labels[1]):
            return None  # CoreDNS: pod names of a namespace that does not exist are NXDOMAIN
        dashed = labels[0]
        text = dashed.replace("-", ".") if dashed.count("-") == 3 else dashed.replace("-", ":")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None
        return _Data(v6=(str(ip),)) if ip.version == 6 else _Data(v4=(str(ip),))

    def _vip_ptr(self, name: str, namespace: str) -> _Data | None:
        ip = _ip_from_reverse(name)
        unit = self._vips.unit_at(ip) if ip else None
        if unit is None:
            return None
        se = self._choose_se(unit[1], namespace)
        if se is None or se.namespace != unit[0]:
            return None
        return _Data(ptr=(unit[1],))

    # -- answers ----------------------------------------------------------------------------------
    def _rrs(self, name: str, data: _Data, qtype: int) -> list[RR]:
        ttl = self.settings.ttl
        if qtype == QTYPE.A or qtype == QTYPE.AAAA:
            addrs = data.v4 if qtype == QTYPE.A else data.v6
            if len(addrs) > 1:
                if not data.ranked:
                    addrs = tuple(random.sample(addrs, len(addrs)))
                elif tier := (data.tier4 if qtype == QTYPE.A else data.tier6):
                    head, rest = addrs[:tier], addrs[tier:]
                    addrs = tuple(random.sample(head, len(head)) + random.sample(rest, len(rest)))
            make = A if qtype == QTYPE.A else AAAA
            return [RR(name, qtype, rdata=make(a), ttl=ttl) for a in addrs]
        if qtype == QTYPE.SRV:
            return [RR(name, QTYPE.SRV, rdata=SRV(p, w, port, t), ttl=ttl) for p, w, port, t in data.srv]
        if qtype == QTYPE.PTR:
            return [RR(name, QTYPE.PTR, rdata=PTR(t), ttl=ttl) for t in data.ptr]
        if qtype == QTYPE.TXT:
            return [RR(name, QTYPE.TXT, rdata=TXT(t), ttl=DNS_VERSION_TTL) for t in data.txt]
        if qtype == QTYPE.SOA and data.soa:
            return [self.soa(name)]
        if qtype == QTYPE.NS:
            return [RR(name, QTYPE.NS, rdata=NS(t), ttl=ttl) for t in data.ns]
        return []  # a type the name lacks: NODATA (istio#31250), never NXDOMAIN

    def _answer(self, name: str, data: _Data, qtype: int, namespace: str, depth: int = 0) -> Answer:
        if not data.cname:
            rrs = tuple(self._rrs(name, data, qtype))
            if qtype == QTYPE.NS and data.ns:
                return Answer(AnswerKind.RECORDS, rrs, additional=self._glue(data.ns, namespace))
            return Answer(AnswerKind.RECORDS, rrs, ordered=data.ranked)
        target = data.cname
        cname = RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=self.settings.ttl)
        if qtype == QTYPE.CNAME:
            return Answer(AnswerKind.RECORDS, (cname,))
        tdata = self._find(target, namespace) if depth < MAX_CNAME_CHAIN else None
        if tdata is not None:
            sub = self._answer(target, tdata, qtype, namespace, depth + 1)
            return Answer(sub.kind, (cname,) + sub.records, sub.target, sub.authoritative, sub.ordered)
        if self._authoritative_nx(target):
            return Answer(AnswerKind.NXDOMAIN, (cname,))
        # The target is outside the table: SEARCH_CNAME is the kind that carries "resolve `target`
        # upstream and append", whether the CNAME came from the search path or an ExternalName.
        return Answer(AnswerKind.SEARCH_CNAME, (cname,), target=target, authoritative=False)

    def _glue(self, servers: tuple[str, ...], namespace: str) -> tuple[RR, ...]:
        out: list[RR] = []
        for server in servers:
            data = self._find(server, namespace)
            if data is not None:
                out += self._rrs(server, data, QTYPE.A) + self._rrs(server, data, QTYPE.AAAA)
        return tuple(out)

    # -- server-side search path ------------------------------------------------------------------
    def _shortcut(self, view: View, name: str, qtype: int) -> Answer | None:
        """Answer ``<base>.<search>`` with what the pod's resolver would end up with, in one round trip.

        The asked name must be one the table may call non-existent (under the cluster domain, synced),
        otherwise it could be real upstream. Of the view's searches the first one the name ends with is
        taken as the expansion (the most specific, as Istio does). The pod would next try base with each
        later search, then base itself, so the answer points at the first of those that exists:

        * a later expansion that the table has -> CNAME to it, plus its records (see below);
        * a later expansion under the cluster domain that the table lacks -> known not to exist, skip;
        * a later expansion under another domain (node searches) -> unknown: skipped only if
          `search_past_node_domains`, else no shortcut;
        * then base: a table name -> CNAME + records; under the cluster domain but unknown -> no
          shortcut (NXDOMAIN anyway); a single label -> no shortcut (the pod asks the bare name last;
          that goes upstream as normal DNS); external with at least one dot -> CNAME + `target`, but
          only when the asked name ends with the pod's own ``<ns>.svc.<domain>`` search.

        Why that last restriction: a name can be an expansion and a literal query at once.
        ``api.dev.svc.cluster.local`` is "api.dev + svc.cluster.local" or the full name of service api
        in namespace dev; if that service does not exist the literal answer is NXDOMAIN, while the
        expansion reading would send the pod to the public ``api.dev``. Names under the pod's own
        namespace search are the first expansion a ClusterFirst resolver tries, which is where the
        round trips are saved; a literal query there names something in the pod's own namespace by a
        multi-label FQDN, whose expansion reading leads to the same upstream name the pod's resolver
        would end with anyway — except inside an existing Service's subtree (``kafka-2.kafka.<ns>...``,
        ``_x._tcp.web.<ns>...``), which is left to NXDOMAIN.

        A name that is an alias is one for every type (RFC 1034 3.6.2): the answer is the CNAME plus
        the target's records of qtype, or the CNAME alone (NOERROR) when the target has none. Never
        CNAME for A and NXDOMAIN for AAAA: musl sends both at once and moves to the next search domain
        on NXDOMAIN in either (src/network/lookup_name.c, name_from_dns), so a split answer saves it
        nothing. Why CNAME alone gives each resolver what it would have got without the shortcut:

        * musl stops at the first name where neither answer is NXDOMAIN. Without the shortcut that is
          the target (it exists, so both of its answers are NOERROR); with it, the asked name, whose
          answers carry exactly the target's records. Same addresses, or none (EAI_NODATA) in both.
        * glibc (__res_context_search) stops at the first name with an answer that has records, and a
          CNAME is one; on NODATA it goes on. Without the shortcut it passes the target only for types
          the target lacks and then tries the names after it. So CNAME alone is right only if those
          names hold nothing the target lacks: `_rest_adds_nothing` requires each of them to be known
          not to exist, or to be the target's alias (``web.b``, the Istio alternate name of
          ``web.b.svc.<domain>``). Otherwise there is no shortcut for any type. A target that is
          itself a CNAME ends glibc there for every type, so it needs no such check.
        """
        if not self._authoritative_nx(name):
            return None
        own = f"{view.namespace}.svc.{self._domain}"
        for i, search in enumerate(view.searches):
            if name.endswith("." + search):
                base = name[: -len(search) - 1]
                return self._shortcut_from(view, name, base, view.searches[i + 1 :], qtype, search == own)
        return None

    def _shortcut_from(
        self, view: View, name: str, base: str, later: tuple[str, ...], qtype: int, external_ok: bool
    ) -> Answer | None:
        ns = view.namespace
        for i, search in enumerate(later):
            cand = f"{base}.{search}"
            data = self._find(cand, ns)
            if data is not None:
                if not data.cname and not self._rest_adds_nothing(base, later[i + 1 :], data, ns):
                    return None
                return self._cname_to(name, cand, data, qtype, ns)
            if self._authoritative_nx(cand):
                continue
            if not self.settings.search_past_node_domains:
                return None
        data = self._find(base, ns)
        if data is not None:
            return self._cname_to(name, base, data, qtype, ns)
        if not external_ok or "." not in base or self._in_domain(base):
            return None
        if base.rsplit(".", 1)[1] in self._svc_by_ns.get(ns, ()):
            # Read literally, the name is inside that Service's subtree (an endpoint or SRV name that
            # does not exist): NXDOMAIN, not the public <x>.<service> name.
            return None
        cname = RR(name, QTYPE.CNAME, rdata=CNAME(base), ttl=self.settings.ttl)
        if qtype == QTYPE.CNAME:
            return Answer(AnswerKind.SEARCH_CNAME, (cname,))
        return Answer(AnswerKind.SEARCH_CNAME, (cname,), target=base, authoritative=False)

    def _rest_adds_nothing(self, base: str, rest: tuple[str, ...], target: _Data, ns: str) -> bool:
        """Would every name the pod tries after the target (the remaining expansions, then `base` as
        it is) answer nothing the target lacks? Unknown names count as "might"."""
        for search in rest:
            cand = f"{base}.{search}"
            if self._find(cand, ns) is not None:
                return False
            if not self._authoritative_nx(cand) and not self.settings.search_past_node_domains:
                return False
        data = self._find(base, ns)
        if data is not None:
            return data.same_records(target)
        return self._authoritative_nx(base)

    def _cname_to(self, name: str, target: str, data: _Data, qtype: int, ns: str) -> Answer | None:
        cname = RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=self.settings.ttl)
        if qtype == QTYPE.CNAME:
            return Answer(AnswerKind.SEARCH_CNAME, (cname,))
        sub = self._answer(target, data, qtype, ns)
        if sub.kind is AnswerKind.NXDOMAIN:
            return None  # the chain ends nowhere: the pod's resolver would search on (NXDOMAIN here)
        # CNAME + records, or the CNAME alone when the target lacks qtype (NOERROR): see _shortcut.
        return Answer(AnswerKind.SEARCH_CNAME, (cname,) + sub.records, sub.target, sub.authoritative, sub.ordered)


def _discard(index: dict, outer: object, inner: object) -> None:
    """Remove index[outer][inner] (dict or set), dropping index[outer] when it empties."""
    bucket = index.get(outer)
    if bucket is None:
        return
    if isinstance(bucket, set):
        bucket.discard(inner)
    else:
        bucket.pop(inner, None)
    if not bucket:
        del index[outer]
