"""Reverse names (PTR): which names an address has, read from the index.

Three kinds of address have names: a Service's ClusterIP (its Service names), an endpoint's IP (spec
2.4.3: its endpoint names) and a ServiceEntry VIP (its host, for the askers who see that entry).
These functions return the target names; compile.py wraps them as compiled data (ClusterIPs and
endpoint IPs are cached per name, VIP PTRs depend on the asker and are not).
"""

from __future__ import annotations

from node_agent.mesh.table.index import Index
from node_agent.mesh.table.ips import endpoint_label, ip_from_reverse


def ptr_names(index: Index, name: str) -> tuple[str, ...] | None:
    """The names of the address `name` is the reverse name of, None if it has none (or is not one).
    A ClusterIP names its Services (the local cluster's when it has the IP), else an endpoint IP
    its endpoints."""
    ip = ip_from_reverse(name)
    if ip is None:
        return None
    owners = index.ptr.get(ip)
    if not owners:
        return _endpoint_ptr(index, ip)
    local = [o for o in owners if o[0] == index.settings.local_cluster]
    chosen = local or sorted(owners)
    return tuple(dict.fromkeys(index.fqdn(ns, n) for _, ns, n in sorted(chosen)))


def _endpoint_ptr(index: Index, ip: str) -> tuple[str, ...] | None:
    """Spec 2.4.3, as CoreDNS: an IP that is no ClusterIP names every published endpoint with it,
    ``<hostname>.<svc>.<ns>.svc.<zone>`` (hostname or the IP label), for any Service but
    ExternalName. Of several clusters, the local one's when it has the IP (as for ClusterIPs)."""
    found: set[tuple[bool, str]] = set()
    local_cluster = index.settings.local_cluster
    for sl in index.endpoint_ips().get(ip, {}).values():
        group = index.svc.get((sl.namespace, sl.service))
        if not group:
            continue
        primary = index.primary(group)
        if primary.type == "ExternalName":
            continue
        fqdn = index.fqdn(sl.namespace, sl.service)
        for ep in index.published(sl, group, primary):
            if ip in ep.addresses:
                found.add((sl.cluster != local_cluster, f"{endpoint_label(ep.hostname, ip)}.{fqdn}"))
    if not found:
        return None
    local = [n for remote, n in found if not remote]
    return tuple(sorted(local or [n for _, n in found]))


def vip_host(index: Index, name: str, namespace: str) -> str | None:
    """The ServiceEntry host whose VIP `name` is the reverse name of, if an asker in `namespace`
    sees the entry that holds the VIP."""
    ip = ip_from_reverse(name)
    unit = index.vips.unit_at(ip) if ip else None
    if unit is None:
        return None
    se = index.se_for(unit[1], namespace)
    if se is None or se.namespace != unit[0]:
        return None
    return unit[1]
