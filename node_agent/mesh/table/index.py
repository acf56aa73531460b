"""The table's raw indexes: registry records keyed by what they are about, updated per change.

`Index.add` / `Index.remove` cost O(size of that record) and add to `changed` every name whose answer
the record may affect (the cache-invalidation contract of the package: entries ``*.suffix`` stand for
every name under suffix). Nothing here builds answers; compile.py and reverse.py read these indexes.
The queries at the end are the ones several answer builders share.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from node_agent.mesh.model import (
    Endpoint,
    EndpointSlice,
    Key,
    Namespace,
    Pod,
    Record,
    Service,
    ServiceEntry,
    WorkloadEndpoint,
    WorkloadEntry,
)
from node_agent.mesh.table.ips import dashed, plain_ips, reverse_name
from node_agent.mesh.vip import VipAllocator, oldest_first, se_priority
from node_agent.settings import TableSettings

# Istio auto-allocates VIPs only for these resolutions (not DNS_ROUND_ROBIN), and never for wildcards.
VIP_RESOLUTIONS = frozenset({"NONE", "STATIC", "DNS"})
# The DNS Service the zone's NS record points at when TableSettings.dns_service_ips is empty (the
# name every kubeadm/managed cluster keeps for CoreDNS).
DNS_SERVICE = ("kube-system", "kube-dns")


def labels_match(selector: tuple[tuple[str, str], ...], labels: tuple[tuple[str, str], ...]) -> bool:
    if not selector:
        return False
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)


def visible(se: ServiceEntry, namespace: str) -> bool:
    """exportTo: "*" (or empty) everyone, "." own namespace, "~" nobody, else listed namespaces."""
    for e in se.export_to or ("*",):
        if e == "*" or e == namespace or (e == "." and namespace == se.namespace):
            return True
    return False


T = TypeVar("T")


def pick_visible(alternatives: Iterable[tuple[ServiceEntry, T]], namespace: str) -> T | None:
    """Of ServiceEntry alternatives, oldest first, the one an asker in `namespace` gets: like an Istio
    sidecar scope, a visible entry in the asker's own namespace wins, then the oldest visible one."""
    chosen = None
    for se, value in alternatives:
        if visible(se, namespace):
            if se.namespace == namespace:
                return value
            if chosen is None:
                chosen = value
    return chosen


def discard(index: dict, outer: object, inner: object) -> None:
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


class Index:
    def __init__(self, settings: TableSettings) -> None:
        self.settings = settings
        self.domain = settings.cluster_domain.lower().strip(".")
        self.pods_by_ip: dict[str, dict[Key, Pod]] = {}
        self.svc: dict[tuple[str, str], dict[str, Service]] = {}  # (ns, name) -> cluster -> Service
        self.svc_by_ns: dict[str, set[str]] = {}  # ns -> service names (namespace ENTs, VM selection)
        self.ns_by_svc: dict[str, set[str]] = {}  # service name -> namespaces (Istio alternate names)
        self.slices: dict[tuple[str, str], dict[Key, EndpointSlice]] = {}  # (ns, service) -> slices
        # endpoint IP -> slices, for endpoint PTRs. Built on the first PTR query that needs it (bulk
        # loads skip the work, and the reverse names in their change sets, until someone asks).
        self._ep_ips: dict[str, dict[Key, EndpointSlice]] | None = None
        # Namespaces exist (CoreDNS: <ns>.svc.<zone> NODATA, pod names answered) by a Namespace record
        # of any cluster, or by holding a Service or a Pod (sources that deliver no Namespaces).
        self.namespaces: dict[str, set[str]] = {}  # namespace -> clusters with a Namespace record
        self.pods_by_ns: dict[str, int] = {}
        self.ptr: dict[str, set[tuple[str, str, str]]] = {}  # service IP -> {(cluster, ns, name)}
        self.se_host: dict[str, dict[Key, ServiceEntry]] = {}
        self.se_wild: dict[str, dict[Key, ServiceEntry]] = {}  # "example.com" for "*.example.com"
        self.se_selecting: dict[str, dict[Key, ServiceEntry]] = {}  # ns -> entries with workloadSelector
        self.we: dict[str, dict[Key, WorkloadEntry]] = {}  # ns -> workload entries
        self.vips = VipAllocator()
        self._vip_seen: dict[tuple[str, str], tuple[str, ...]] = {}

    # ================================================================================= updates ====
    def add(self, key: Key, r: Record, changed: set[str]) -> None:
        if isinstance(r, Pod):
            self._index_pod(key, r)
            n = self.pods_by_ns.get(r.namespace, 0)
            self.pods_by_ns[r.namespace] = n + 1
            if n == 0:
                self._namespace_names(r.namespace, changed)
        elif isinstance(r, Namespace):
            self.namespaces.setdefault(r.name, set()).add(r.cluster)
            self._namespace_names(r.name, changed)
        elif isinstance(r, Service):
            self._index_service(r, changed)
        elif isinstance(r, EndpointSlice):
            self.slices.setdefault((r.namespace, r.service), {})[key] = r
            if self._ep_ips is not None:
                for ep in r.endpoints:
                    for a in ep.addresses:
                        self._ep_ips.setdefault(a, {})[key] = r
            self._slice_names(r, changed)
        elif isinstance(r, ServiceEntry):
            self._index_se(key, r, changed)
        elif isinstance(r, WorkloadEntry):
            self.we.setdefault(r.namespace, {})[key] = r
            self._workload_names(r, changed)

    def remove(self, key: Key, r: Record, changed: set[str]) -> None:
        if isinstance(r, Pod):
            for ip in r.ips:
                discard(self.pods_by_ip, ip, key)
            n = self.pods_by_ns.get(r.namespace, 0) - 1
            if n > 0:
                self.pods_by_ns[r.namespace] = n
            else:
                self.pods_by_ns.pop(r.namespace, None)
                self._namespace_names(r.namespace, changed)
        elif isinstance(r, Namespace):
            discard(self.namespaces, r.name, r.cluster)
            self._namespace_names(r.name, changed)
        elif isinstance(r, Service):
            self._unindex_service(r, changed)
        elif isinstance(r, EndpointSlice):
            discard(self.slices, (r.namespace, r.service), key)
            if self._ep_ips is not None:
                for ep in r.endpoints:
                    for a in ep.addresses:
                        discard(self._ep_ips, a, key)
            self._slice_names(r, changed)
        elif isinstance(r, ServiceEntry):
            self._unindex_se(key, r, changed)
        elif isinstance(r, WorkloadEntry):
            discard(self.we, r.namespace, key)
            self._workload_names(r, changed)

    # -- pods -------------------------------------------------------------------------------------
    def _index_pod(self, key: Key, pod: Pod) -> None:
        if pod.host_network:
            return  # its IP is the node's: asks in the node's view
        for ip in pod.ips:
            by_key = self.pods_by_ip.setdefault(ip, {})
            by_key.pop(key, None)
            by_key[key] = pod  # last updated wins an IP shared during pod churn

    # -- services ---------------------------------------------------------------------------------
    def _index_service(self, svc: Service, changed: set[str]) -> None:
        self.svc.setdefault((svc.namespace, svc.name), {})[svc.cluster] = svc
        self.svc_by_ns.setdefault(svc.namespace, set()).add(svc.name)
        self.ns_by_svc.setdefault(svc.name, set()).add(svc.namespace)
        for ip in self.service_ips(svc):
            self.ptr.setdefault(ip, set()).add((svc.cluster, svc.namespace, svc.name))
        self._service_names(svc, changed)

    def _unindex_service(self, svc: Service, changed: set[str]) -> None:
        group = self.svc.get((svc.namespace, svc.name))
        if group is not None and group.get(svc.cluster) is not None:
            del group[svc.cluster]
            if not group:
                del self.svc[(svc.namespace, svc.name)]
                discard(self.svc_by_ns, svc.namespace, svc.name)
                discard(self.ns_by_svc, svc.name, svc.namespace)
        for ip in self.service_ips(svc):
            discard(self.ptr, ip, (svc.cluster, svc.namespace, svc.name))
        self._service_names(svc, changed)

    def _port_names(self, fqdn: str, ports: Iterable, changed: set[str]) -> None:
        for p in ports:
            proto = p.protocol.lower()
            changed.add(f"_{proto}.{fqdn}")
            if p.name:
                changed.add(f"_{p.name.lower()}._{proto}.{fqdn}")

    def _namespace_names(self, ns: str, changed: set[str]) -> None:
        """Names whose answer depends on whether namespace `ns` exists."""
        svc = f"{ns}.svc.{self.domain}"
        if svc in changed:
            return  # a bulk load touches a namespace once per Service: the names are in already
        changed.add(svc)
        changed.add(f"{ns}.pod.{self.domain}")
        changed.add(f"*.{ns}.pod.{self.domain}")  # pod-IP names

    @staticmethod
    def _alt_names(namespace: str, short: str, changed: set[str]) -> None:
        """Istio's alternate names of ``<short>.<namespace>.svc.<domain>`` (the bare one in every view)."""
        changed.add(f"{short}.{namespace}")
        changed.add(f"{short}.{namespace}.svc")
        changed.add(short)

    def _service_names(self, svc: Service, changed: set[str]) -> None:
        fqdn = self.fqdn(svc.namespace, svc.name)
        changed.add(fqdn)
        self._alt_names(svc.namespace, svc.name, changed)
        self._namespace_names(svc.namespace, changed)
        self._port_names(fqdn, svc.ports, changed)
        if (svc.namespace, svc.name) == DNS_SERVICE and not self.settings.dns_service_ips:
            changed.update((self.domain, f"ns.dns.{self.domain}"))  # NS glue
        for ip in self.service_ips(svc):
            rev = reverse_name(ip)
            if rev:
                changed.add(rev)
        # endpoint names and SRV targets depend on the service existing / being headless
        for sl in self.slices.get((svc.namespace, svc.name), {}).values():
            self._slice_names(sl, changed)

    def _slice_names(self, sl: EndpointSlice, changed: set[str]) -> None:
        fqdn = self.fqdn(sl.namespace, sl.service)
        changed.add(fqdn)
        self._alt_names(sl.namespace, sl.service, changed)  # they exist only while the service resolves
        self._port_names(fqdn, sl.ports, changed)
        for ep in sl.endpoints:
            if ep.hostname:
                changed.add(f"{ep.hostname.lower()}.{fqdn}")
                self._alt_names(sl.namespace, f"{ep.hostname.lower()}.{sl.service}", changed)
            for a in ep.addresses:
                if not ep.hostname:
                    changed.add(f"{dashed(a)}.{fqdn}")
                if self._ep_ips is not None:  # else no endpoint PTR answer was ever given or cached
                    rev = reverse_name(a)
                    if rev:
                        changed.add(rev)

    def _workload_names(self, we: WorkloadEntry, changed: set[str]) -> None:
        for se in self.se_selecting.get(we.namespace, {}).values():
            if labels_match(se.workload_selector, we.labels):
                changed.update(self._se_names(se))
        # headless Services selecting VMs by label resolve to their addresses
        for name in self.svc_by_ns.get(we.namespace, ()):
            group = self.svc[(we.namespace, name)]
            if any(s.headless and labels_match(s.selector, we.labels) for s in group.values()):
                changed.add(self.fqdn(we.namespace, name))
                self._alt_names(we.namespace, name, changed)

    # -- service entries --------------------------------------------------------------------------
    @staticmethod
    def _se_names(se: ServiceEntry) -> set[str]:
        return {h.lower().rstrip(".") for h in se.hosts}

    def _index_se(self, key: Key, se: ServiceEntry, changed: set[str]) -> None:
        for host in self._se_names(se):
            if host.startswith("*."):
                self.se_wild.setdefault(host[2:], {})[key] = se
            else:
                self.se_host.setdefault(host, {})[key] = se
                if not se.addresses and se.resolution in VIP_RESOLUTIONS:
                    self._vip_changed(self.vips.claim((se.namespace, host), key, se_priority(se)), changed)
            changed.add(host)
        if se.workload_selector:
            self.se_selecting.setdefault(se.namespace, {})[key] = se

    def _unindex_se(self, key: Key, se: ServiceEntry, changed: set[str]) -> None:
        for host in self._se_names(se):
            if host.startswith("*."):
                discard(self.se_wild, host[2:], key)
            else:
                discard(self.se_host, host, key)
                self._vip_changed(self.vips.release((se.namespace, host), key), changed)
            changed.add(host)
        discard(self.se_selecting, se.namespace, key)

    def _vip_changed(self, units: set[tuple[str, str]], changed: set[str]) -> None:
        for unit in units:
            changed.add(unit[1])
            new = self.vips.get(unit)
            for addr in self._vip_seen.get(unit, ()) + new:
                rev = reverse_name(addr)
                if rev:
                    changed.add(rev)
            if new:
                self._vip_seen[unit] = new
            else:
                self._vip_seen.pop(unit, None)

    # ================================================================================= queries ====
    def fqdn(self, namespace: str, name: str) -> str:
        return f"{name}.{namespace}.svc.{self.domain}"

    def in_domain(self, name: str) -> bool:
        return name == self.domain or name.endswith("." + self.domain)

    def namespace_exists(self, ns: str) -> bool:
        return ns in self.namespaces or ns in self.svc_by_ns or ns in self.pods_by_ns

    @staticmethod
    def service_ips(svc: Service) -> tuple[str, ...]:
        if svc.type == "ExternalName" or svc.headless:
            return ()
        return tuple(ip for ip in svc.cluster_ips if ip and ip != "None")

    def primary(self, group: dict[str, Service]) -> Service:
        local = group.get(self.settings.local_cluster)
        return local if local is not None else group[min(group)]

    def ordered_clusters(self, group: dict[str, Service]) -> list[Service]:
        local = self.settings.local_cluster
        return [group[c] for c in sorted(group, key=lambda c: (c != local, c))]

    def dns_service_ips(self) -> tuple[str, ...]:
        if self.settings.dns_service_ips:
            return self.settings.dns_service_ips
        group = self.svc.get(DNS_SERVICE)
        return self.service_ips(self.primary(group)) if group else ()

    def endpoint_ips(self) -> dict[str, dict[Key, EndpointSlice]]:
        """Endpoint IP -> slices, built on first use and kept up to date from then on."""
        if self._ep_ips is None:
            self._ep_ips = {}
            for slices in self.slices.values():
                for key, sl in slices.items():
                    for ep in sl.endpoints:
                        for a in ep.addresses:
                            self._ep_ips.setdefault(a, {})[key] = sl
        return self._ep_ips

    def published(self, sl: EndpointSlice, group: dict[str, Service], primary: Service) -> Iterator[Endpoint]:
        """The endpoints of a slice that DNS names: the ready ones, or all of them when the slice's
        Service (`group`'s of the slice's cluster, else `primary`) publishes not-ready addresses."""
        svc = group.get(sl.cluster, primary)
        return (ep for ep in sl.endpoints if ep.ready or svc.publish_not_ready)

    def se_for(self, host: str, namespace: str) -> ServiceEntry | None:
        """The ServiceEntry for `host` an asker in `namespace` sees (own namespace first, then oldest)."""
        entries = self.se_host.get(host) or {}
        return pick_visible(((se, se) for se in oldest_first(entries.values())), namespace)

    def wild_entries(self, name: str) -> Iterator[dict[Key, ServiceEntry]]:
        """The wildcard entries `name` falls under, longest suffix first."""
        if self.se_wild:
            labels = name.split(".")
            for i in range(1, len(labels)):
                entries = self.se_wild.get(".".join(labels[i:]))
                if entries:
                    yield entries

    def _selected(self, se: ServiceEntry) -> Iterator[WorkloadEntry]:
        if se.workload_selector:
            for we in self.we.get(se.namespace, {}).values():
                if labels_match(se.workload_selector, we.labels):
                    yield we

    def se_endpoints(self, se: ServiceEntry) -> tuple[str, ...]:
        """Endpoint IPs of an entry: inline endpoints, then the WorkloadEntries it selects."""
        addrs = plain_ips(ep.address for ep in se.endpoints) + plain_ips(we.address for we in self._selected(se))
        return tuple(dict.fromkeys(addrs))

    def se_workloads(self, se: ServiceEntry) -> tuple[WorkloadEndpoint, ...]:
        """Inline endpoints, then the WorkloadEntries the entry selects."""
        selected = (WorkloadEndpoint(we.address, we.ports, we.labels, we.network) for we in self._selected(se))
        return se.endpoints + tuple(selected)
