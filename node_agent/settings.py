"""Every settings group and their root, in one place: what each part of the agent can be told.

One frozen dataclass per concern (the YAML file has one mapping per group, the environment
NODE_AGENT_<GROUP>_<FIELD>, the flags a few fields); `config` layers defaults < file < environment <
flags into a `Settings`. Standard library only: every layer may import this module, it imports none.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

EDNS_PAYLOAD = 1232  # the EDNS UDP size we advertise (DNS flag day 2020)


@dataclass(frozen=True)
class ListenSettings:
    address: str = "169.254.20.10"  # IPv4 (or IPv6 on a single-stack IPv6 node)
    address6: str = ""  # on dual-stack nodes: also listen here, for pods asking an IPv6 kube-dns
    port: int = 53
    tcp_idle: float = 10.0  # seconds a TCP client may stay silent
    tcp_max_clients: int = 1024
    udp_max_pending: int = 4096  # misses in flight over UDP before new ones are dropped
    drain_grace: float = 0.5  # on stop, seconds to keep answering what was already sent our way


@dataclass(frozen=True)
class InterceptSettings:
    cgroup: str = "/"  # relative to the cgroup v2 mount, or absolute
    pin_root: str = "/sys/fs/bpf/node-agent"
    dns_services: tuple[str, ...] = ("10.96.0.10",)  # kube-dns ClusterIPs, v4 and v6
    capture_all: bool = False  # steer port 53 to any destination
    stale_after: float = 1.0  # seconds without a heartbeat before the programs fail open
    heartbeat_interval: float = 0.2
    loop_stall_bound: float = 2.0  # keep beating through event-loop stalls (a large re-list) this long


@dataclass(frozen=True)
class UpstreamSettings:
    servers: tuple[tuple[str, int], ...] = ()  # (ip, port); IPv4 or IPv6
    timeout: float = 2.0  # per attempt (a TC->TCP retry gets its own timeout)
    attempts: int = 2  # total tries across servers (parallel mode: rounds)
    parallel: bool = False  # send to all healthy servers at once, first good answer wins
    edns_size: int = EDNS_PAYLOAD  # advertised UDP payload size
    max_inflight: int = 1024  # distinct upstream queries in flight; beyond => UpstreamError("overload")
    tcp_idle: float = 10.0  # seconds a kept-open TCP connection to a server may sit unused
    socket_mark: int = 0  # SO_MARK for upstream sockets (0 = leave unset); EPERM is ignored
    randomize_case: bool = True  # 0x20 query-name case randomization
    unhealthy_after: int = 3  # consecutive timeouts/network errors before a server is tried last
    probe_interval: float = 5.0  # how often start()'s task probes unhealthy servers (0 = never)
    probe_name: str = "."  # probe question: <probe_name> IN NS

    def __post_init__(self) -> None:
        # No servers is a valid *setting* (config fills them from resolv.conf); Upstream refuses it.
        for ip, port in self.servers:
            ipaddress.ip_address(ip)  # raises ValueError on a hostname or garbage
            if not 0 < port < 65536:
                raise ValueError(f"upstream: bad port {port} for {ip}")
        if self.attempts < 1 or self.timeout <= 0 or self.max_inflight < 1 or self.unhealthy_after < 1:
            raise ValueError("upstream: attempts, timeout, max_inflight, unhealthy_after must be positive")
        if not 512 <= self.edns_size <= 65535:
            raise ValueError(f"upstream: edns_size {self.edns_size} outside 512..65535")


@dataclass
class CacheSettings:
    max_entries: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    min_ttl: int = 0  # floor for positive TTLs (and negative ones that are cached at all)
    max_ttl: int = 86400
    neg_ttl: int = 300  # cap for NXDOMAIN / NODATA (RFC 2308: min(SOA TTL, SOA MINIMUM), capped)
    neg_ttl_nosoa: int = 0  # negative answers without an SOA: seconds to cache them (0 = don't)
    servfail_ttl: int = 5  # 0 = don't cache SERVFAIL
    prefetch_hits: int = 3  # hits in an entry's lifetime before it is worth prefetching
    prefetch_fraction: float = 0.1  # prefetch in the last 10 % of the TTL
    stale_ttl: int = 30  # TTL of stale answers (RFC 8767 recommends 30 s)
    max_stale: int = 86400  # how long past expiry an entry may be served stale
    sweep_interval: float = 60.0  # seconds between scans dropping entries past max_stale (0 = never)
    edns_payload: int = EDNS_PAYLOAD  # UDP size in the OPT RR we add for EDNS clients
    # Answer hot entries (hit twice within their TTL) from a TC program on each pod's host veth
    # (kernel/answerpath.py), so they never wake the responder; False answers everything in
    # userspace. Needs BPF (not with --no-bpf). The answer map is an LRU hash of this many entries.
    kernel_answers: bool = True
    kernel_answer_entries: int = 16384
    # How the program is attached (kernel/tc.py): "auto" takes a tcx link where the kernel has tcx
    # (6.6+) and a clsact filter before; "tcx" or "clsact" only that one (clsact works everywhere).
    kernel_answer_attach: str = "auto"

    def __post_init__(self) -> None:
        if self.kernel_answer_attach not in ("auto", "tcx", "clsact"):
            raise ValueError(f"cache: kernel_answer_attach {self.kernel_answer_attach!r}: auto, tcx or clsact")


@dataclass(frozen=True)
class ResolverSettings:
    # Per asking pod (source IP), queries that must go upstream (cache hits and table answers are
    # free): a token bucket, so one pod's random-name flood cannot take kube-dns down for everyone.
    upstream_qps_per_pod: float = 200.0  # 0 = no limit
    upstream_burst_per_pod: int = 400
    # RFC 8767: answer stale after this long when the upstream is slow and an expired answer exists.
    stale_answer_timeout: float = 1.8


@dataclass(frozen=True)
class TableSettings:
    cluster_domain: str = "cluster.local"
    ttl: int = 30  # TTL of table answers
    default_ndots: int = 5
    node_searches: tuple[str, ...] = ()  # the node's own search domains (kubelet appends them)
    nxdomain_in_cluster_domain: bool = True  # unknown names under cluster_domain: NXDOMAIN once synced
    node_ips: tuple[str, ...] = ()  # the node itself may ask too (its view: namespace "", node_searches)
    # Additions (all defaulted, so the interface above is unchanged):
    local_cluster: str = "Kubernetes"  # multicluster merge: this cluster's ClusterIP comes first
    pod_records: bool = True  # CoreDNS "pods insecure": a-b-c-d.<ns>.pod.<domain> -> a.b.c.d
    answer_vips: bool = True  # False: STATIC entries without addresses answer their endpoint IPs
    # The search shortcut must know that the expansions the pod would try after the one asked do not
    # exist. Under the cluster domain the table knows; under the node's own search domains it cannot.
    # True assumes they do not exist (what the pod means in practice, and immune to wildcard records in
    # corporate search domains); False skips the shortcut when such a domain would be tried first.
    search_past_node_domains: bool = True
    # Addresses of the cluster DNS Service (the kube-dns ClusterIPs pods ask): the glue of the zone's
    # NS record ns.dns.<zone>. Empty: the ClusterIPs of Service kube-system/kube-dns in the table.
    dns_service_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceSettings:
    static_files: tuple[str, ...] = ()  # YAML files of Kubernetes/Istio objects
    kubernetes: bool = False  # watch the API server(s)
    kubeconfigs: tuple[str, ...] = ()  # "cluster=path" per remote cluster; empty: in-cluster config
    cluster_name: str = "Kubernetes"  # this cluster's name (Istio's default)
    node_name: str = ""  # from the downward API (NODE_NAME); pods of this node only
    sync_timeout: float = 10.0  # wait this long for the first sync before taking traffic anyway


@dataclass(frozen=True)
class MetricsSettings:
    address: str = "0.0.0.0"
    port: int = 9253


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    format: str = "text"  # text or json


@dataclass(frozen=True)
class Settings:
    listen: ListenSettings = field(default_factory=ListenSettings)
    intercept: InterceptSettings = field(default_factory=InterceptSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    resolver: ResolverSettings = field(default_factory=ResolverSettings)
    table: TableSettings = field(default_factory=TableSettings)
    sources: SourceSettings = field(default_factory=SourceSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    no_bpf: bool = False
