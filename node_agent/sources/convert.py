"""Kubernetes / Istio API objects (JSON-shaped dicts) -> model records.

Shared by the static YAML source and the Kubernetes API source (watch events), so both agree on every
detail. Input is what the API server returns: camelCase fields, absent fields omitted or null.
Kinds not read give None (`read_kinds()` lists the ones read); malformed objects raise ValueError with
the object named.

v1 Endpoints (static files only; the API source watches EndpointSlices) become EndpointSlices the way
the EndpointSlice mirroring controller makes them, see `endpoints`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from node_agent.mesh.model import (
    DNSConfig,
    Endpoint,
    EndpointSlice,
    Namespace,
    Pod,
    Port,
    Record,
    Service,
    ServiceEntry,
    WorkloadEndpoint,
    WorkloadEntry,
)

ISTIO_GROUP = "networking.istio.io"
OPT_OUT_ANNOTATION = "dns.node-agent.io/steer"  # "false": this pod's DNS is not steered
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"  # "true": Endpoints not mirrored to slices
MIRRORED_MARK = ":endpoints:"  # in the names of slices made from Endpoints (see `endpoints`)

Obj = Mapping[str, Any]


def to_record(obj: Obj, cluster: str) -> Record | None:
    """Convert one API object of a kind that makes one record; None for kinds not read, and for
    objects that name nothing (an EndpointSlice no Service owns). Endpoints: see `to_records`."""
    convert = _CONVERTERS.get((_group(str(obj.get("apiVersion") or "")), obj.get("kind", "")))
    if convert is None:  # not read, or a kind of several records
        records = to_records(obj, cluster)
        if records:
            raise ValueError(f"{describe(obj)}: a kind of several records, read with to_records")
        return None
    try:
        return convert(obj, cluster)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"bad {describe(obj)}: {e}") from e


def to_records(obj: Obj, cluster: str) -> list[Record] | None:
    """Convert one API object; None for kinds not read, else its records (v1 Endpoints: one
    EndpointSlice per port set and address family; none for objects that name nothing)."""
    key = (_group(str(obj.get("apiVersion") or "")), obj.get("kind", ""))
    single = _CONVERTERS.get(key)
    multi = _MULTI_CONVERTERS.get(key)
    try:
        if single is not None:
            record = single(obj, cluster)
            return [] if record is None else [record]
        if multi is not None:
            return list(multi(obj, cluster))
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"bad {describe(obj)}: {e}") from e
    return None


def describe(obj: Obj) -> str:
    """`Kind namespace/name` (`Kind name` for cluster-scoped kinds), for messages."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name") or "(no name)"
    return f"{obj.get('kind')} {meta['namespace']}/{name}" if meta.get("namespace") else f"{obj.get('kind')} {name}"


def read_kinds() -> list[str]:
    """`group/Kind` (`Kind` for core) of every kind `to_records` reads."""
    kinds = sorted([*_CONVERTERS, *_MULTI_CONVERTERS], key=lambda gk: (gk[0] != "", gk))
    return [f"{g}/{k}" if g else k for g, k in kinds]


def read_groups_of(kind: str) -> list[str]:
    """The API groups `kind` is read in ("" = core); empty when no group of it is read."""
    return [g for g, k in [*_CONVERTERS, *_MULTI_CONVERTERS] if k == kind]


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def _labels(m: Obj | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (m or {}).items()))


def _strs(items: Any) -> tuple[str, ...]:
    return tuple(str(i) for i in (items or ()))


def _ns_name(obj: Obj) -> tuple[str, str]:
    meta = _meta(obj)
    name = meta.get("name")
    if not name:
        raise ValueError("metadata.name missing")
    return str(meta.get("namespace") or "default"), str(name)


# -- core/v1 ---------------------------------------------------------------------------------------
def pod(obj: Obj, cluster: str) -> Pod:
    ns, name = _ns_name(obj)
    meta, spec, status = _meta(obj), _spec(obj), obj.get("status") or {}
    ips = _strs(i.get("ip") for i in status.get("podIPs") or () if i.get("ip"))
    if not ips and status.get("podIP"):
        ips = (str(status["podIP"]),)
    annotations = meta.get("annotations") or {}
    return Pod(
        namespace=ns,
        name=name,
        ips=ips,
        uid=str(meta.get("uid") or ""),
        cluster=cluster,
        node_name=str(spec.get("nodeName") or ""),
        hostname=str(spec.get("hostname") or ""),
        subdomain=str(spec.get("subdomain") or ""),
        labels=_labels(meta.get("labels")),
        dns_policy=str(spec.get("dnsPolicy") or "ClusterFirst"),
        dns_config=_dns_config(spec.get("dnsConfig")),
        opt_out=str(annotations.get(OPT_OUT_ANNOTATION, "")).lower() == "false",
        host_network=bool(spec.get("hostNetwork")),
    )


def _dns_config(cfg: Obj | None) -> DNSConfig | None:
    if cfg is None:
        return None
    options = tuple(
        (str(o.get("name")), "" if o.get("value") is None else str(o.get("value")))
        for o in cfg.get("options") or ()
        if o.get("name")
    )
    ndots = 5
    for k, v in options:
        if k == "ndots" and v.isdigit():
            ndots = int(v)
    return DNSConfig(
        searches=_strs(cfg.get("searches")),
        ndots=ndots,
        nameservers=_strs(cfg.get("nameservers")),
        options=options,
    )


def _k8s_ports(items: Any) -> tuple[Port, ...]:
    out = []
    for p in items or ():
        target = p.get("targetPort")
        out.append(
            Port(
                port=int(p["port"]),
                name=str(p.get("name") or ""),
                protocol=str(p.get("protocol") or "TCP"),
                target_port=target if isinstance(target, int) else 0,
            )
        )
    return tuple(out)


def service(obj: Obj, cluster: str) -> Service:
    ns, name = _ns_name(obj)
    spec = _spec(obj)
    ips = _strs(spec.get("clusterIPs"))
    if not ips and spec.get("clusterIP"):
        ips = (str(spec["clusterIP"]),)
    return Service(
        namespace=ns,
        name=name,
        type=str(spec.get("type") or "ClusterIP"),
        cluster_ips=ips,
        external_name=str(spec.get("externalName") or ""),
        ports=_k8s_ports(spec.get("ports")),
        selector=_labels(spec.get("selector")),
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
        cluster=cluster,
    )


def namespace(obj: Obj, cluster: str) -> Namespace:
    name = _meta(obj).get("name")
    if not name:
        raise ValueError("metadata.name missing")
    return Namespace(name=str(name), labels=_labels(_meta(obj).get("labels")), cluster=cluster)


def endpoints(obj: Obj, cluster: str) -> list[EndpointSlice]:
    """v1 Endpoints -> EndpointSlices, as the EndpointSlice mirroring controller makes them:
    `addresses` ready, `notReadyAddresses` not ready, hostname and targetRef pod kept, one slice per
    distinct port set (a subset each, subsets with equal ports merged) and address family. The
    service is the Endpoints' name (that is what ties an Endpoints to its Service).

    Names: ``<endpoints name>:endpoints:<port set index>:<IPv4|IPv6>``. A ":" is not allowed in a
    Kubernetes object name, so these never collide with real EndpointSlices of the same service;
    `MIRRORED_MARK` tells them apart. When a source has real slices for the same service too, the
    mirrored ones must go (the table would count every endpoint twice): see `static.parse`.

    Honoured like the controller: label ``endpointslice.kubernetes.io/skip-mirror: "true"`` ->
    no slices. Not copied from it: it skips Endpoints whose Service has a selector (the EndpointSlice
    controller covers those from pods); a file has no such controller, so its Endpoints are mirrored.
    """
    ns, name = _ns_name(obj)
    labels = _meta(obj).get("labels") or {}
    if str(labels.get(SKIP_MIRROR_LABEL, "")).lower() == "true":
        return []
    # (ports, family) -> endpoints, in order of first appearance
    groups: dict[tuple[tuple[Port, ...], str], list[Endpoint]] = {}
    port_sets: list[tuple[Port, ...]] = []
    for subset in obj.get("subsets") or ():
        ports = tuple(
            Port(port=int(p["port"]), name=str(p.get("name") or ""), protocol=str(p.get("protocol") or "TCP"))
            for p in subset.get("ports") or ()
        )
        if ports not in port_sets:
            port_sets.append(ports)
        for field_name, ready in (("addresses", True), ("notReadyAddresses", False)):
            for addr in subset.get(field_name) or ():
                ip = addr.get("ip")
                if not ip:
                    raise ValueError(f"subsets[].{field_name}[].ip missing")
                family = "IPv6" if ipaddress.ip_address(str(ip)).version == 6 else "IPv4"
                target = addr.get("targetRef") or {}
                groups.setdefault((ports, family), []).append(
                    Endpoint(
                        addresses=(str(ip),),
                        ready=ready,
                        hostname=str(addr.get("hostname") or ""),
                        target_pod=str(target.get("name") or "") if target.get("kind") == "Pod" else "",
                    )
                )
    return [
        EndpointSlice(
            namespace=ns,
            name=f"{name}{MIRRORED_MARK}{port_sets.index(ports)}:{family}",
            service=name,
            endpoints=tuple(eps),
            ports=ports,
            address_type=family,
            cluster=cluster,
        )
        for (ports, family), eps in groups.items()
    ]


def is_mirrored(sl: EndpointSlice) -> bool:
    """A slice `endpoints` made from v1 Endpoints (not a real EndpointSlice)."""
    return MIRRORED_MARK in sl.name


# -- discovery.k8s.io/v1 ---------------------------------------------------------------------------
def endpoint_slice(obj: Obj, cluster: str) -> EndpointSlice | None:
    ns, name = _ns_name(obj)
    svc = (_meta(obj).get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not svc:
        return None  # a slice not owned by a Service names nothing
    endpoints = []
    for ep in obj.get("endpoints") or ():
        cond = ep.get("conditions") or {}
        ready = cond.get("ready")
        target = ep.get("targetRef") or {}
        endpoints.append(
            Endpoint(
                addresses=_strs(ep.get("addresses")),
                ready=True if ready is None else bool(ready),  # API: nil means "unknown", take as ready
                hostname=str(ep.get("hostname") or ""),
                target_pod=str(target.get("name") or "") if target.get("kind") == "Pod" else "",
            )
        )
    ports = tuple(
        Port(port=int(p["port"]), name=str(p.get("name") or ""), protocol=str(p.get("protocol") or "TCP"))
        for p in obj.get("ports") or ()
        if p.get("port") is not None
    )
    return EndpointSlice(
        namespace=ns,
        name=name,
        service=str(svc),
        endpoints=tuple(endpoints),
        ports=ports,
        address_type=str(obj.get("addressType") or "IPv4"),
        cluster=cluster,
    )


# -- networking.istio.io ---------------------------------------------------------------------------
def _port_map(m: Obj | None) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(k), int(v)) for k, v in (m or {}).items()))


def service_entry(obj: Obj, cluster: str) -> ServiceEntry:
    ns, name = _ns_name(obj)
    meta, spec = _meta(obj), _spec(obj)
    ports = tuple(
        Port(
            port=int(p["number"]),
            name=str(p.get("name") or ""),
            protocol=str(p.get("protocol") or "TCP"),
            target_port=int(p.get("targetPort") or 0),
        )
        for p in spec.get("ports") or ()
    )
    endpoints = tuple(
        WorkloadEndpoint(
            address=str(e.get("address") or ""),
            ports=_port_map(e.get("ports")),
            labels=_labels(e.get("labels")),
            network=str(e.get("network") or ""),
        )
        for e in spec.get("endpoints") or ()
    )
    selector = (spec.get("workloadSelector") or {}).get("labels")
    return ServiceEntry(
        namespace=ns,
        name=name,
        hosts=tuple(h.lower().rstrip(".") for h in _strs(spec.get("hosts"))),
        uid=str(meta.get("uid") or ""),
        creation_timestamp=str(meta.get("creationTimestamp") or ""),
        addresses=_strs(spec.get("addresses")),
        ports=ports,
        location=str(spec.get("location") or "MESH_EXTERNAL"),
        resolution=str(spec.get("resolution") or "NONE"),
        endpoints=endpoints,
        workload_selector=_labels(selector),
        export_to=_strs(spec.get("exportTo")),
        cluster=cluster,
    )


def workload_entry(obj: Obj, cluster: str) -> WorkloadEntry:
    ns, name = _ns_name(obj)
    spec = _spec(obj)
    # Selection uses spec.labels; metadata labels fill in keys spec does not set.
    labels = dict(_meta(obj).get("labels") or {})
    labels.update(spec.get("labels") or {})
    return WorkloadEntry(
        namespace=ns,
        name=name,
        address=str(spec.get("address") or ""),
        labels=_labels(labels),
        ports=_port_map(spec.get("ports")),
        network=str(spec.get("network") or ""),
        cluster=cluster,
    )


_CONVERTERS: dict[tuple[str, str], Callable[[Obj, str], Record | None]] = {
    ("", "Pod"): pod,
    ("", "Service"): service,
    ("", "Namespace"): namespace,
    ("discovery.k8s.io", "EndpointSlice"): endpoint_slice,
    (ISTIO_GROUP, "ServiceEntry"): service_entry,
    (ISTIO_GROUP, "WorkloadEntry"): workload_entry,
}

_MULTI_CONVERTERS: dict[tuple[str, str], Callable[[Obj, str], list[EndpointSlice]]] = {
    ("", "Endpoints"): endpoints,
}
