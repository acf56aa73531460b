"""Per-name compiled data: what a name answers, built from the index on first lookup and kept until a
change names it (`Compiler.invalidate`).

Compiled here: the cluster domain (zone apex, dns-version, Services, endpoints, SRV, namespaces and
pod names), Istio's alternate names of Services and endpoints, reverse names (via reverse.py) and
ServiceEntry hosts (one alternative per entry, chosen per asker's namespace). Names not worth
caching per name (wildcard entries, pod-IP names, VIP PTRs) are computed per lookup (`_dynamic`).
Addresses are kept as strings; answer.py turns the data into records.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from node_agent.mesh.model import Key, Service, ServiceEntry
from node_agent.mesh.table.index import VIP_RESOLUTIONS, Index, labels_match, pick_visible
from node_agent.mesh.table.ips import endpoint_label, plain_ips, split_families
from node_agent.mesh.table.reverse import ptr_names, vip_host
from node_agent.mesh.vip import oldest_first

DNS_SCHEMA_VERSION = "1.1.0"  # kubernetes/dns docs/specification.md, section 1


class Data:
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

    def same_records(self, other: Data) -> bool:
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


EMPTY = Data()  # an existing name with no records (empty non-terminal)


class Entry:
    """A compiled name: fixed data, or ServiceEntry alternatives chosen by the asker's namespace."""

    __slots__ = ("fixed", "alts")

    def __init__(self, fixed: Data | None = None, alts: tuple[tuple[ServiceEntry, Data], ...] = ()):
        self.fixed = fixed
        self.alts = alts  # oldest first

    def pick(self, namespace: str) -> Data | None:
        return self.fixed if self.fixed is not None else pick_visible(self.alts, namespace)


class Compiler:
    def __init__(self, index: Index) -> None:
        self.index = index
        self.settings = index.settings
        self.synced = False  # see NameTable.synced
        self._domain = index.domain
        self._compiled: dict[str, Entry] = {}

    def invalidate(self, changed: set[str]) -> None:
        if len(changed) > len(self._compiled):
            self._compiled.clear()
        else:
            for name in changed:
                self._compiled.pop(name, None)

    def authoritative_nx(self, name: str) -> bool:
        """May the table say a name it does not have does not exist?"""
        return self.synced and self.settings.nxdomain_in_cluster_domain and self.index.in_domain(name)

    def find(self, name: str, namespace: str) -> Data | None:
        """Data of a table name visible from namespace; None if the table does not have it."""
        entry = self._entry(name)
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

    def _entry(self, name: str) -> Entry | None:
        entry = self._compiled.get(name)
        if entry is None:
            entry = self._compile(name)
            if entry is not None:
                self._compiled[name] = entry  # misses are not cached: random names must not grow memory
        return entry

    def _compile(self, name: str) -> Entry | None:
        if self.index.in_domain(name):
            rel = name[: -len(self._domain)].rstrip(".")
            data = self._compile_cluster(rel)
            if data is not None:
                return Entry(fixed=data)
        if name.endswith(".arpa"):
            ptr = ptr_names(self.index, name)
            if ptr is not None:
                return Entry(fixed=Data(ptr=ptr))
        else:
            alt = self._compile_alt(name)
            if alt is not None:
                return Entry(fixed=alt)
        entries = self.index.se_host.get(name)
        if entries:
            return self._compile_se(name, entries)
        return None

    # -- Istio alternate names (pkg/dns/client generateAltHosts) ---------------------------------
    # A Kubernetes Service that resolves (not ExternalName, which Istio's table leaves out) answers
    # also as `<svc>.<ns>` and `<svc>.<ns>.svc`, and as `<svc>` to askers in its namespace; a
    # headless Service's endpoints with a hostname likewise as `<host>.<svc>.<ns>[.svc]` and
    # `<host>.<svc>`. Same data as the full name: these are what VMs, hostNetwork pods and apps with
    # their own search list send as absolute names.
    def _compile_alt(self, name: str) -> Data | None:
        if self.index.in_domain(name):
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

    def _local_alt(self, name: str, namespace: str) -> Data | None:
        if "." not in name:
            return self._service_alt(namespace, name)
        host, svc = name.split(".")
        return self._pod_alt(namespace, svc, host)

    def _cluster_data(self, fqdn: str) -> Data | None:
        """The Kubernetes data of a name under the cluster domain (never a ServiceEntry's)."""
        entry = self._entry(fqdn)
        return entry.fixed if entry is not None else None

    def _service_alt(self, ns: str, name: str) -> Data | None:
        if (ns, name) not in self.index.svc:
            return None
        data = self._cluster_data(self.index.fqdn(ns, name))
        if data is None or data.cname or not (data.v4 or data.v6):
            return None
        return data

    def _pod_alt(self, ns: str, svc: str, host: str) -> Data | None:
        group = self.index.svc.get((ns, svc))
        if not group or not self.index.primary(group).headless or host.startswith("_"):
            return None  # Istio's pod names are those of headless Services
        data = self._cluster_data(f"{host}.{self.index.fqdn(ns, svc)}")
        if data is None or not any(
            ep.hostname.lower() == host for sl in self.index.slices.get((ns, svc), {}).values() for ep in sl.endpoints
        ):
            return None  # Istio names only endpoints with a hostname (StatefulSet pods), not IP labels
        return data

    def _compile_cluster(self, rel: str) -> Data | None:
        if not rel:
            # The zone apex: SOA and NS as CoreDNS answers them (the SOA is the one every negative
            # answer cites: see soa()).
            return Data(soa=True, ns=(f"ns.dns.{self._domain}",))
        if rel == "dns-version":
            return Data(txt=(DNS_SCHEMA_VERSION,))  # spec 2.2
        if rel == "ns.dns":
            v4, v6 = split_families(self.index.dns_service_ips())
            return Data(v4=v4, v6=v6)
        labels = rel.split(".")
        if labels[-1] == "pod":
            if not self.settings.pod_records or len(labels) > 2:
                return None
            return EMPTY if len(labels) == 1 or self.index.namespace_exists(labels[0]) else None
        if labels[-1] != "svc":
            return None
        if len(labels) == 1:
            return EMPTY
        ns = labels[-2]
        if len(labels) == 2:
            return EMPTY if self.index.namespace_exists(ns) else None
        svc, prefix = labels[-3], labels[:-3]
        group = self.index.svc.get((ns, svc))
        if not group:
            return None
        primary = self.index.primary(group)
        if not prefix:
            return self._service_data(ns, svc, group, primary)
        if len(prefix) == 1 and prefix[0].startswith("_"):
            # "_tcp.<svc>": an empty non-terminal when some port uses that protocol
            return EMPTY if self._srv(ns, svc, group, primary, None, prefix[0][1:]) else None
        if len(prefix) == 1:
            return self._endpoint_data(ns, svc, group, primary, prefix[0])
        if len(prefix) == 2 and prefix[0].startswith("_") and prefix[1].startswith("_"):
            srv = self._srv(ns, svc, group, primary, prefix[0][1:], prefix[1][1:])
            return Data(srv=srv) if srv else None
        return None

    def _service_data(self, ns: str, name: str, group: dict[str, Service], primary: Service) -> Data | None:
        if primary.type == "ExternalName":
            return Data(cname=primary.external_name.lower().rstrip("."))
        srv = self._srv(ns, name, group, primary, None, None)
        if primary.headless:
            eps = list(self._headless_endpoints(ns, name, group, primary))
            local = self.settings.local_cluster
            v4, v6 = split_families([a for a, _, c in eps if c == local] + [a for a, _, c in eps if c != local])
            if not v4 and not v6:
                return None  # spec 2.4.1: no ready endpoints -> NXDOMAIN (CoreDNS: for every type)
            if len({c == local for _, _, c in eps}) == 1:
                return Data(v4=v4, v6=v6, srv=srv)  # one cluster (or only remote ones): shuffled
            # The local cluster's endpoints first (as its ClusterIP), each tier shuffled per answer.
            l4, l6 = split_families(a for a, _, c in eps if c == local)
            return Data(v4=v4, v6=v6, srv=srv, ranked=True, tier4=len(l4) or len(v4), tier6=len(l6) or len(v6))
        # Multicluster: the local cluster's ClusterIP first, then the others by cluster name.
        index = self.index
        clusters = [s for s in index.ordered_clusters(group) if s.type != "ExternalName" and index.service_ips(s)]
        ips = [ip for s in clusters for ip in index.service_ips(s)]
        v4, v6 = split_families(ips)
        return Data(v4=v4, v6=v6, ranked=len(clusters) > 1, srv=srv)

    def _headless_endpoints(
        self, ns: str, name: str, group: dict[str, Service], primary: Service
    ) -> Iterable[tuple[str, str, str]]:
        """(address, endpoint name label, cluster) of every published endpoint, union over clusters."""
        for sl in self.index.slices.get((ns, name), {}).values():
            for ep in self.index.published(sl, group, primary):
                for a in ep.addresses:
                    yield a, endpoint_label(ep.hostname, a), sl.cluster
        # A headless Service selecting VMs: WorkloadEntry addresses (no per-endpoint names).
        if primary.selector:
            for we in self.index.we.get(ns, {}).values():
                if labels_match(primary.selector, we.labels):
                    yield we.address, "", we.cluster

    def _endpoint_data(
        self, ns: str, name: str, group: dict[str, Service], primary: Service, label: str
    ) -> Data | None:
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
        v4, v6 = split_families(local or [a for a, _ in found])
        return Data(v4=v4, v6=v6)

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

        fqdn = self.index.fqdn(ns, name)
        if primary.type == "ExternalName":
            return ()
        if not primary.headless:
            return tuple((0, 100, p.port, fqdn) for p in primary.ports if wanted(p.name, p.protocol))
        out: list[tuple[int, int, int, str]] = []
        for sl in self.index.slices.get((ns, name), {}).values():
            ports = [p for p in sl.ports if wanted(p.name, p.protocol)]
            if not ports:
                continue
            for ep in self.index.published(sl, group, primary):
                for a in ep.addresses[:1]:  # one target per endpoint, as CoreDNS
                    label = endpoint_label(ep.hostname, a)
                    out.extend((0, 0, p.port, f"{label}.{fqdn}") for p in ports)
        if out:
            weight = max(1, 100 // len(out))
            out = [(pr, weight, port, t) for pr, _, port, t in dict.fromkeys(out)]
        return tuple(out)

    def _compile_se(self, host: str, entries: dict[Key, ServiceEntry]) -> Entry | None:
        alts = []
        for se in oldest_first(entries.values()):
            data = self._se_data(se, host)
            if data is not None:
                alts.append((se, data))
        return Entry(alts=tuple(alts)) if alts else None

    def _se_data(self, se: ServiceEntry, host: str) -> Data | None:
        if se.addresses:
            return self._declared(se)  # declared addresses win
        if self.settings.answer_vips and se.resolution in VIP_RESOLUTIONS:
            v4, v6 = split_families(self.index.vips.get((se.namespace, host)))
            if v4 or v6:
                return Data(v4=v4, v6=v6)
        if se.resolution == "STATIC":
            v4, v6 = split_families(self.index.se_endpoints(se))
            return Data(v4=v4, v6=v6)
        return None  # DNS / DNS_ROUND_ROBIN without an address: the real name resolves upstream

    def _dynamic(self, name: str, namespace: str) -> Data | None:
        """Names not worth caching per name: wildcard entries, pod A records, VIP PTRs."""
        for entries in self.index.wild_entries(name):
            # A wildcard has no VIP; without declared addresses its names resolve upstream.
            alts = ((se, d) for se in oldest_first(entries.values()) if (d := self._declared(se)) is not None)
            data = pick_visible(alts, namespace)
            if data is not None:
                return data
        if self.settings.pod_records and name.endswith(f".pod.{self._domain}"):
            return self._pod_record(name)
        if name.endswith(".arpa"):
            host = vip_host(self.index, name, namespace)
            return Data(ptr=(host,)) if host is not None else None
        return None

    @staticmethod
    def _declared(se: ServiceEntry) -> Data | None:
        """The entry's declared addresses, None when it declares none that can be answered."""
        v4, v6 = split_families(plain_ips(se.addresses))
        return Data(v4=v4, v6=v6) if v4 or v6 else None

    def _pod_record(self, name: str) -> Data | None:
        labels = name[: -len(f".pod.{self._domain}")].split(".")
        if len(labels) != 2 or not self.index.namespace_exists(labels[1]):
            return None  # CoreDNS: pod names of a namespace that does not exist are NXDOMAIN
        dashed = labels[0]
        text = dashed.replace("-", ".") if dashed.count("-") == 3 else dashed.replace("-", ":")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None
        return Data(v6=(str(ip),)) if ip.version == 6 else Data(v4=(str(ip),))
