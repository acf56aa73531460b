"""The registry model: what sources report and the name table consumes.

Sources (static YAML, Kubernetes API) turn their input into these frozen records and hand them to the
name table as `Change`s; nothing downstream knows where a record came from. Field names follow the
Kubernetes / Istio API so the mapping stays obvious.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    POD = "Pod"
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    SERVICE_ENTRY = "ServiceEntry"
    WORKLOAD_ENTRY = "WorkloadEntry"
    NAMESPACE = "Namespace"


@dataclass(frozen=True)
class Port:
    port: int
    name: str = ""
    protocol: str = "TCP"  # TCP / UDP / SCTP, or an Istio protocol (HTTP, GRPC, TLS, ...)
    target_port: int = 0  # ServiceEntry targetPort; 0 means "same as port"


@dataclass(frozen=True)
class DNSConfig:
    """A pod's effective resolver settings (spec.dnsConfig merged over the dnsPolicy defaults)."""

    searches: tuple[str, ...] = ()
    ndots: int = 5
    nameservers: tuple[str, ...] = ()
    # spec.dnsConfig.options as written, (name, value) pairs; None = the producer did not record them
    # (then `ndots` is taken as set). Lets a view tell "ndots unset" from "ndots: 5" (dnsPolicy None).
    options: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[str, ...]
    uid: str = ""
    cluster: str = "Kubernetes"
    node_name: str = ""
    hostname: str = ""
    subdomain: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    # dnsPolicy as in the pod spec; dns_config holds spec.dnsConfig as written (may be partial).
    dns_policy: str = "ClusterFirst"
    dns_config: DNSConfig | None = None
    opt_out: bool = False  # annotation dns.node-agent.io/steer: "false"
    host_network: bool = False


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"  # ClusterIP, NodePort, LoadBalancer, ExternalName
    cluster_ips: tuple[str, ...] = ()  # empty or ("None",) means headless
    external_name: str = ""
    ports: tuple[Port, ...] = ()
    selector: tuple[tuple[str, str], ...] = ()
    publish_not_ready: bool = False
    cluster: str = "Kubernetes"

    @property
    def headless(self) -> bool:
        return self.type != "ExternalName" and (not self.cluster_ips or self.cluster_ips[0] == "None")


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    hostname: str = ""  # StatefulSet pods: <hostname>.<svc>.<ns>.svc.<domain>
    target_pod: str = ""  # name of the pod behind it, when known


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str  # label kubernetes.io/service-name
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[Port, ...] = ()
    address_type: str = "IPv4"
    cluster: str = "Kubernetes"


@dataclass(frozen=True)
class WorkloadEndpoint:
    """An inline ServiceEntry endpoint (spec.endpoints[]), or a WorkloadEntry's spec."""

    address: str
    ports: tuple[tuple[str, int], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    network: str = ""


@dataclass(frozen=True)
class ServiceEntry:
    namespace: str
    name: str
    hosts: tuple[str, ...]
    uid: str = ""
    creation_timestamp: str = ""  # RFC 3339, as the API server writes it; settles VIP collisions
    addresses: tuple[str, ...] = ()
    ports: tuple[Port, ...] = ()
    location: str = "MESH_EXTERNAL"
    resolution: str = "NONE"  # NONE, STATIC, DNS, DNS_ROUND_ROBIN
    endpoints: tuple[WorkloadEndpoint, ...] = ()
    workload_selector: tuple[tuple[str, str], ...] = ()  # spec.workloadSelector.labels
    export_to: tuple[str, ...] = ()  # empty = the mesh default ("*")
    cluster: str = "Kubernetes"


@dataclass(frozen=True)
class WorkloadEntry:
    namespace: str
    name: str
    address: str
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int], ...] = ()
    network: str = ""
    cluster: str = "Kubernetes"


@dataclass(frozen=True)
class Namespace:
    """A v1 Namespace. Cluster-scoped: `namespace` is always "" (so `Key.of` and `Change` work as for
    every other record); its existence alone is what the table needs (`<ns>.svc.<domain>` is NODATA,
    not NXDOMAIN, for a namespace that exists)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    cluster: str = "Kubernetes"
    namespace: str = field(default="", init=False)


Record = Pod | Service | EndpointSlice | ServiceEntry | WorkloadEntry | Namespace

KIND_OF: dict[type, Kind] = {
    Pod: Kind.POD,
    Service: Kind.SERVICE,
    EndpointSlice: Kind.ENDPOINT_SLICE,
    ServiceEntry: Kind.SERVICE_ENTRY,
    WorkloadEntry: Kind.WORKLOAD_ENTRY,
    Namespace: Kind.NAMESPACE,
}


@dataclass(frozen=True)
class Key:
    kind: Kind
    cluster: str
    namespace: str
    name: str

    @staticmethod
    def of(record: Record) -> Key:
        return Key(KIND_OF[type(record)], record.cluster, record.namespace, record.name)


@dataclass(frozen=True)
class Change:
    """An upsert (record set) or a delete (record None) of one object."""

    key: Key
    record: Record | None


@dataclass
class Snapshot:
    """Everything a source knows, for a full (re)sync: replaces that source's previous records."""

    source: str
    cluster: str
    records: list[Record] = field(default_factory=list)
