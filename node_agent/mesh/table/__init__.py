"""The mesh's name table, answered in the view of the asking pod.

Sources feed registry records (model.py) through `apply` (incremental) and `replace` (full resync);
the responder calls `view_for(ip)` once per query and `lookup(view, qname, qtype)`.

Storage is two-level so updates stay cheap and lookups stay O(1). The modules, each importing only
those before it:

* ips: address helpers (families, reverse names, CoreDNS's dashed IP labels);
* index: raw indexes keyed by what a record is about ((ns, service) groups, hosts, namespaces, IPs),
  updated per change in O(size of that record), and the names each change invalidates;
* reverse: the names an address has (ClusterIPs, endpoint IPs, ServiceEntry VIPs);
* compile: per-name *compiled* data (addresses as strings, CNAME, SRV, PTR), built lazily on first
  lookup and dropped when a change touches that name;
* answer: `Answer`, `AnswerKind` and the records built per lookup from compiled data (answers are
  shuffled), following CNAME chains;
* search: the server-side search shortcut;
* this module: `NameTable`, the record bookkeeping (owners, snapshots) and the public queries.

Answer contract for the responder:

* RECORDS: NOERROR, AA, `records` is the answer section (empty = NODATA); may include a CNAME chain
  through table names (ExternalName services pointing at table names). `additional` goes in the
  additional section (the zone apex's NS answer carries its name server's addresses). `ordered`:
  the address order carries meaning (multicluster, local first): do not rotate it.
* SEARCH_CNAME: an answer whose CNAME chain leaves the table or comes from the server-side search
  path (see search.py). `records` starts with the CNAME ``<qname> -> <name>``; names the table has
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

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from node_agent.dns import build
from node_agent.mesh.model import (
    Change,
    Key,
    Kind,
    Pod,
    Port,
    Record,
    ServiceEntry,
    Snapshot,
    WorkloadEndpoint,
)
from node_agent.mesh.table.answer import FORWARD, NXDOMAIN, Answer, AnswerKind, answer, soa
from node_agent.mesh.table.compile import Compiler
from node_agent.mesh.table.index import Index
from node_agent.mesh.table.ips import plain_ips
from node_agent.mesh.table.search import shortcut
from node_agent.mesh.views import View, node_view, pod_view
from node_agent.mesh.vip import claim_order, oldest_first
from node_agent.settings import TableSettings

__all__ = ["Answer", "AnswerKind", "NameTable", "VipService", "View"]


@dataclass(frozen=True)
class VipService:
    """A ServiceEntry host whose VIPs the kernel translates to backends."""

    namespace: str
    host: str
    vips: tuple[str, ...]
    ports: tuple[Port, ...]
    resolution: str  # STATIC: endpoint addresses are IPs; DNS: resolve endpoints (or the host) upstream
    endpoints: tuple[WorkloadEndpoint, ...]


class NameTable:
    def __init__(self, settings: TableSettings) -> None:
        self.settings = settings
        self.on_pod_change: Callable[[Pod | None, Pod | None], None] | None = None
        self._records: dict[Key, Record] = {}
        self._owner: dict[Key, tuple[str, str]] = {}  # key -> (source, cluster) of the snapshot owning it
        self._cluster_owner: dict[str, tuple[str, str]] = {}  # last replace per cluster
        self._counts: dict[Kind, int] = dict.fromkeys(Kind, 0)
        self._views: dict[str, View] = {}  # asker IP -> view, dropped when a pod with that IP changes
        self._index = Index(settings)
        self._names = Compiler(self._index)

    @property
    def synced(self) -> bool:
        """Set by the agent once every source has listed everything: from then on the table may call
        names under the cluster domain it lacks non-existent."""
        return self._names.synced

    @synced.setter
    def synced(self, value: bool) -> None:
        self._names.synced = value

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
        for key, record in sorted(incoming.items(), key=lambda item: claim_order(item[1])):
            self._upsert(key, record, owner, changed, pod_events)
        return self._finish(changed, pod_events)

    def _finish(self, changed: set[str], pod_events: list[tuple[Pod | None, Pod | None]]) -> set[str]:
        self._names.invalidate(changed)
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
            self._index.remove(key, old, changed)
        else:
            self._owner[key] = owner
            if old == record:
                return
            if old is None:
                self._counts[key.kind] += 1
            else:
                self._index.remove(key, old, changed)
            self._records[key] = record
            self._index.add(key, record, changed)
        if key.kind is Kind.POD:
            before = old if isinstance(old, Pod) else None
            after = record if isinstance(record, Pod) else None
            for pod in (before, after):
                for ip in pod.ips if pod is not None else ():
                    self._views.pop(ip, None)
            pod_events.append((before, after))

    # ================================================================================= queries ====
    def view_for(self, ip: str) -> View | None:
        view = self._views.get(ip)
        if view is not None:
            return view
        pod = self.pod_for(ip)
        s = self.settings
        if pod is not None:
            view = pod_view(pod, self._index.domain, s.default_ndots, s.node_searches)
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
        by_key = self._index.pods_by_ip.get(ip)
        if not by_key:
            return None
        return next(reversed(by_key.values()))

    def vip_of(self, host: str, namespace: str) -> tuple[str, ...]:
        """Declared plain addresses, else the auto-allocated VIPs, of the entry for `host` seen from ns."""
        host = host.lower().rstrip(".")
        se = self._index.se_for(host, namespace)
        if se is None:
            return ()
        if se.addresses:
            return plain_ips(se.addresses)
        return self._index.vips.get((se.namespace, host))

    def endpoints_of(self, host: str, namespace: str) -> tuple[str, ...]:
        """Endpoint IPs (inline endpoints + selected WorkloadEntries) of the entry for `host` seen from ns."""
        se = self._index.se_for(host.lower().rstrip("."), namespace)
        return self._index.se_endpoints(se) if se is not None else ()

    def view_independent(self, name: str) -> bool:
        """True when no view can get a table answer for `name`: every pod would forward it, so its
        upstream answer may be shared by all views. Conservative: the cluster domain, reverse names
        and ServiceEntry hosts (visibility differs by namespace) are never shared."""
        name = name.lower().rstrip(".")
        if self._index.in_domain(name) or name.endswith(".arpa") or name in self._index.se_host:
            return False
        if self._maybe_alt(name):
            return False
        return next(self._index.wild_entries(name), None) is None

    def _maybe_alt(self, name: str) -> bool:
        """Could some view answer `name` as an Istio alternate name? (Conservative: a Service of that
        name in that namespace is enough; whether it resolves is not checked.)"""
        labels = name.split(".")
        n = len(labels)
        if n == 1:
            return name in self._index.ns_by_svc  # `<svc>` in the Service's own namespace
        if n == 2 and labels[1] in self._index.ns_by_svc:
            return True  # `<host>.<svc>` (pod name) in the Service's own namespace
        if n in (2, 3) and (labels[1], labels[0]) in self._index.svc:
            return True  # `<svc>.<ns>`, `<svc>.<ns>.svc`
        return n in (3, 4) and (labels[2], labels[1]) in self._index.svc  # `<host>.<svc>.<ns>[.svc]`

    def vip_services(self) -> list[VipService]:
        """Every ServiceEntry host whose VIP must carry traffic (STATIC and DNS resolution): its VIPs
        (declared single addresses, else the allocated ones), ports and endpoints. One per
        (namespace, host); among several entries for the same unit the oldest wins, as in lookups."""
        out: list[VipService] = []
        for host, entries in self._index.se_host.items():
            units: dict[str, ServiceEntry] = {}
            for se in oldest_first(entries.values()):
                if se.resolution in ("STATIC", "DNS") and se.ports:
                    units.setdefault(se.namespace, se)
            for ns, se in units.items():
                vips = plain_ips(se.addresses) or self._index.vips.get((ns, host))
                if vips:
                    out.append(VipService(ns, host, vips, se.ports, se.resolution, self._index.se_workloads(se)))
        return out

    def sizes(self) -> dict[str, int]:
        out = {k.value: n for k, n in self._counts.items()}
        out["vips"] = len(self._index.vips)
        return out

    def lookup(self, view: View, qname: str, qtype: int) -> Answer:
        name = qname.lower().rstrip(".")
        data = self._names.find(name, view.namespace)
        if data is not None:
            return answer(self._names, name, data, qtype, view.namespace)
        search = shortcut(self._names, view, name, qtype)
        if search is not None:
            return search
        return NXDOMAIN if self._names.authoritative_nx(name) else FORWARD

    def soa(self, qname: str) -> build.Record:
        """The SOA record of the zone `qname` falls in (see answer.soa)."""
        return soa(self._index, qname)
