"""Prometheus metrics, read at scrape time from the components' plain counters and the BPF maps,
and the small HTTP server for /metrics, /healthz and /readyz (nothing else is served).

Nothing here runs per query: the hot path bumps ints, these collectors turn them into series. Each
collector is built from its inputs (stats objects, small Protocols, callables), as client_python's
own collectors are, never from the agent: a test builds one from its own objects. Names: prefix
`nodeagent_`, base units, `_total` for counters. See README "Metrics".
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from node_agent.app.health import Readiness
from node_agent.settings import MetricsSettings

if TYPE_CHECKING:  # the inputs' types only: `status` imports this module for parse_exposition alone
    from node_agent.kernel.vipmap import VipStats
    from node_agent.resolve.cache import CacheStats
    from node_agent.resolve.resolver import ResolverStats
    from node_agent.serve.responder import ResponderStats
    from node_agent.upstream.stats import UpstreamStats

log = logging.getLogger(__name__)
P = "nodeagent_"


class PodCounters(Protocol):
    """One pod's entry in the BPF pod map."""

    steered: int
    failopen: int


class KernelCounters(Protocol):
    """The BPF maps' counters (kernel.loader.Interceptor): pods by cgroup id, and the event totals."""

    def pods(self) -> Mapping[int, PodCounters]: ...

    def stats(self) -> Mapping[str, int]: ...


class VipCounters(Protocol):
    """ServiceEntry VIP translation (kernel.vipmap.VipMap)."""

    @property
    def stats(self) -> VipStats: ...

    def counters(self) -> Mapping[str, tuple[int, int]]: ...


class AttachPoint(Protocol):
    @property
    def pod_ip(self) -> str: ...
    @property
    def ifname(self) -> str: ...
    @property
    def mode(self) -> str: ...


class KernelAnswerState(Protocol):
    """The kernel answer path (kernel.answerpath.KernelAnswers) as metrics see it."""

    @property
    def active(self) -> bool: ...
    @property
    def error(self) -> str: ...
    @property
    def entries(self) -> int: ...  # the answer map's capacity
    @property
    def held(self) -> int: ...  # entries written
    @property
    def points(self) -> Sequence[AttachPoint]: ...
    @property
    def pending(self) -> Sequence[tuple[str, str]]: ...  # (pod ip, why not attached)

    def events(self) -> Mapping[str, int]: ...


class _Collector(Collector):
    def _register(self, registry: CollectorRegistry | None) -> None:
        if registry is not None:
            registry.register(self)


def _nothing() -> None:
    pass


class AnswerCollector(_Collector):
    """What pods asked and how they were answered: requests by type, protocol, rcode and namespace,
    the answer counters and the cache. One collector for both because `fold` (the resolver moves
    the hits its hot path counted in bulk into both stats) must run once before either is read."""

    def __init__(self, resolver: ResolverStats, cache: CacheStats, responder: ResponderStats, *,
                 fold: Callable[[], None] = _nothing, registry: CollectorRegistry | None = None) -> None:
        self.resolver, self.cache, self.responder, self.fold = resolver, cache, responder, fold
        self._register(registry)

    def collect(self) -> Iterator[Metric]:
        self.fold()
        st = self.resolver
        req = CounterMetricFamily(
            P + "requests",
            "DNS requests answered, by query type, protocol and rcode",
            labels=["type", "proto", "rcode"],
        )
        for (qtype, proto, rcode), n in sorted(st.by_rcode().items()):
            req.add_metric([qtype, proto, _RCODES.get(rcode, str(rcode))], n)
        yield req
        ns = CounterMetricFamily(
            P + "namespace_requests", "DNS requests by the asking pod's namespace", labels=["namespace"]
        )
        for name, n in sorted(st.by_namespace().items()):
            ns.add_metric([name or "(node)"], n)
        yield ns
        for name, value, doc in (
            ("refused", st.refused, "queries refused because the source is no pod of this node"),
            ("formerr", st.formerr, "malformed queries answered FORMERR"),
            ("dropped", st.dropped + self.responder.udp_dropped, "queries dropped unanswered"),
            ("udp_received", self.responder.udp_received,
             "UDP queries the responder read (userspace; kernel answers never reach it)"),
            ("table_answers", st.table_answers, "answers from the mesh name table"),
            ("search_answers", st.search_answers, "server-side search-path answers (one round trip)"),
            ("forwarded", st.forwarded, "queries forwarded upstream (cache misses the table does not know)"),
            ("stale_answers", st.stale_answers, "stale answers served while upstreams failed (RFC 8767)"),
            ("truncated", st.truncated, "UDP answers truncated to the client's size (TC set)"),
            ("rate_limited", st.rate_limited, "upstream-bound queries refused by the per-pod rate limit"),
        ):
            yield CounterMetricFamily(P + name, doc, value=value)
        cs = self.cache
        for name, value, doc in (
            ("cache_hits", cs.hits, "answers from the cache"),
            ("cache_misses", cs.misses, "cache lookups that missed"),
            ("cache_evictions", cs.evictions, "entries evicted by the entry or byte bound (LRU)"),
            ("cache_prefetches", cs.prefetches, "popular entries refreshed before they expired"),
        ):
            yield CounterMetricFamily(P + name, doc, value=value)
        g = GaugeMetricFamily(P + "cache_entries", "entries in the cache")
        g.add_metric([], cs.entries)
        yield g
        b = GaugeMetricFamily(P + "cache_size_bytes", "approximate bytes held by the cache")
        b.add_metric([], cs.bytes)
        yield b


class UpstreamCollector(_Collector):
    """Per upstream server: load, failures by reason, latency, in flight, TCP connections, health."""

    def __init__(self, stats: UpstreamStats, health: Callable[[], Mapping[str, bool]], *,
                 registry: CollectorRegistry | None = None) -> None:
        self.stats, self.health = stats, health
        self._register(registry)

    def collect(self) -> Iterator[Metric]:
        us = self.stats
        reqs = CounterMetricFamily(
            P + "upstream_requests", "queries sent to each upstream server", labels=["server"]
        )
        fails = CounterMetricFamily(
            P + "upstream_failures", "upstream failures by server and reason", labels=["server", "reason"]
        )
        lat = HistogramMetricFamily(
            P + "upstream_request_duration_seconds",
            "upstream round trip of answered queries",
            labels=["server"],
        )
        inflight = GaugeMetricFamily(
            P + "upstream_inflight", "queries waiting on each server", labels=["server"]
        )
        tcp = CounterMetricFamily(
            P + "upstream_tcp_connections", "TCP connections opened to each server (kept open, reused)",
            labels=["server"],
        )
        for server, s in sorted(us.servers.items()):
            reqs.add_metric([server], s.requests)
            for reason, n in sorted(s.failures.items()):
                fails.add_metric([server, reason], n)
            buckets = [(_le(b), n) for b, n in s.cumulative_buckets()]
            lat.add_metric([server], buckets, sum_value=s.latency_sum)
            inflight.add_metric([server], s.inflight)
            tcp.add_metric([server], s.tcp_connections)
        yield reqs
        yield fails
        yield lat
        yield inflight
        yield tcp
        yield CounterMetricFamily(
            P + "upstream_coalesced", "queries that joined an identical one in flight", value=us.coalesced
        )
        yield CounterMetricFamily(
            P + "upstream_overload", "queries refused by the in-flight bound", value=us.overload
        )
        health = GaugeMetricFamily(P + "upstream_healthy", "1 when the server answers", labels=["server"])
        for server, ok in sorted(self.health().items()):
            health.add_metric([server], 1.0 if ok else 0.0)
        yield health


class TableCollector(_Collector):
    """The name table's size by kind and each source's sync state and rejected objects. `sources` and
    `rejected` are the live mappings the sources update (read at each scrape, never copied)."""

    def __init__(self, sizes: Callable[[], Mapping[str, int]], sources: Mapping[str, tuple[bool, float]],
                 rejected: Mapping[tuple[str, str], int], *, registry: CollectorRegistry | None = None) -> None:
        self.sizes, self.sources, self.rejected = sizes, sources, rejected
        self._register(registry)

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(P + "table_records", "name table size by kind", labels=["kind"])
        for kind, n in sorted(self.sizes().items()):
            size.add_metric([kind], n)
        yield size
        synced = GaugeMetricFamily(
            P + "source_synced", "1 once a source completed its first full sync", labels=["source"]
        )
        last = GaugeMetricFamily(
            P + "source_last_sync_timestamp_seconds", "when a source last synced", labels=["source"]
        )
        for source, (ok, when) in sorted(self.sources.items()):
            synced.add_metric([source], 1.0 if ok else 0.0)
            last.add_metric([source], when)
        yield synced
        yield last
        rejected = CounterMetricFamily(
            P + "source_rejected_objects",
            "objects a source could not read (left out of the API source's table, or a static file's reload refused)",
            labels=["source", "kind"],
        )
        for (source, kind), n in sorted(self.rejected.items()):
            rejected.add_metric([source, kind], n)
        yield rejected


class KernelCollector(_Collector):
    """The BPF maps: pods enrolled, steered and fail-open queries by namespace, kernel-side events.
    `namespaces` (cgroup id -> namespace) is the enrollment's live mapping; a pod the kernel knows
    and it does not (yet) counts under "(unknown)"."""

    def __init__(self, kernel: KernelCounters, namespaces: Mapping[int, str], *,
                 registry: CollectorRegistry | None = None) -> None:
        self.kernel, self.namespaces = kernel, namespaces
        self._register(registry)

    def collect(self) -> Iterator[Metric]:
        try:
            pods = self.kernel.pods()
            stats = self.kernel.stats()
        except Exception as e:  # a scrape must not fail because a map read did
            log.warning("reading BPF maps: %s", e)
            return
        enrolled = GaugeMetricFamily(
            P + "bpf_pods_enrolled", "pods whose DNS the kernel steers (opted-out too)"
        )
        enrolled.add_metric([], len(pods))
        yield enrolled
        steered = CounterMetricFamily(
            P + "bpf_steered", "queries the kernel steered to the agent, by namespace", labels=["namespace"]
        )
        failopen = CounterMetricFamily(
            P + "bpf_failopen",
            "queries let through to kube-dns while the agent was not beating (fail-open), by namespace",
            labels=["namespace"],
        )
        by_ns_steered: Counter[str] = Counter()
        by_ns_open: Counter[str] = Counter()
        for cg, entry in pods.items():
            ns = self.namespaces.get(cg, "(unknown)")
            by_ns_steered[ns] += entry.steered
            by_ns_open[ns] += entry.failopen
        for ns, n in sorted(by_ns_steered.items()):
            steered.add_metric([ns], n)
        for ns, n in sorted(by_ns_open.items()):
            failopen.add_metric([ns], n)
        yield steered
        yield failopen
        kernel = CounterMetricFamily(
            P + "bpf_events", "kernel-side steering events (all pods)", labels=["event"]
        )
        causes = CounterMetricFamily(
            P + "bpf_failopen_transitions",
            "switches to fail-open by cause: no_socket (the agent's sockets closed), stale_heartbeat "
            "(alive but stuck), stopped (a clean stop without successor)",
            labels=["cause"],
        )
        for name, n in sorted(stats.items()):
            cause = name.removeprefix("failopen_start_")  # the loader's per-cause counts
            if cause != name:
                causes.add_metric([cause], n)
            else:
                kernel.add_metric([name], n)
        yield kernel
        yield causes


class KernelAnswerCollector(_Collector):
    """Kernel answers (bpf/dns_answer.c): whether they are on (and why not), attach points, the
    answer map's fill, the program's counters and answers per namespace. `kernel` is None where the
    path was never loaded; `reason` then says why. Kernel answers are in nodeagent_requests_total,
    nodeagent_namespace_requests_total and nodeagent_cache_hits_total too (AnswerCollector)."""

    def __init__(self, kernel: KernelAnswerState | None, by_namespace: Mapping[str, int], *, reason: str = "",
                 registry: CollectorRegistry | None = None) -> None:
        self.kernel, self.by_namespace, self.reason = kernel, by_namespace, reason
        self._register(registry)

    def collect(self) -> Iterator[Metric]:
        k = self.kernel
        on = k is not None and k.active
        g = GaugeMetricFamily(P + "kernel_answers_active", "1 when hot cache hits are answered in the kernel")
        g.add_metric([], 1.0 if on else 0.0)
        yield g
        off = GaugeMetricFamily(P + "kernel_answers_off", "why kernel answers are off (1, with the reason)",
                                labels=["reason"])
        if not on:
            off.add_metric([(k.error if k is not None else "") or self.reason or "not loaded"], 1.0)
        yield off
        total = CounterMetricFamily(P + "kernel_answers", "queries answered by the kernel, by namespace",
                                    labels=["namespace"])
        for ns, n in sorted(self.by_namespace.items()):
            total.add_metric([ns or "(node)"], n)
        yield total
        if k is None or not on:
            return
        fill = GaugeMetricFamily(P + "kernel_answer_map_entries", "entries in the kernel answer map")
        fill.add_metric([], k.held)
        yield fill
        cap = GaugeMetricFamily(P + "kernel_answer_map_capacity", "entries the kernel answer map holds at most")
        cap.add_metric([], k.entries)
        yield cap
        att = GaugeMetricFamily(P + "kernel_answer_attached", "attach points of the answer program (1 each)",
                                labels=["pod_ip", "interface", "mode"])
        for p in k.points:
            att.add_metric([p.pod_ip, p.ifname, p.mode], 1.0)
        yield att
        pend = GaugeMetricFamily(P + "kernel_answer_unattached", "pods the program is not attached for yet "
                                 "(1 each, with the reason; retried)", labels=["pod_ip", "reason"])
        for ip, why in k.pending:
            pend.add_metric([ip, why], 1.0)
        yield pend
        ev = CounterMetricFamily(P + "kernel_answer_events", "the answer program's verdicts on queries to the "
                                 "responder (answered, miss, expired, not_pod, shape, too_big, ...)",
                                 labels=["event"])
        for name, n in sorted(k.events().items()):
            ev.add_metric([name], n)
        yield ev


class FeatureCollector(_Collector):
    """nodeagent_bpf_feature: 1 for each kernel feature the agent found (kernel.features), 0 for one
    it went without (degraded); `found` is what the probe answered at start."""

    def __init__(self, found: Mapping[str, bool], *, registry: CollectorRegistry | None = None) -> None:
        self.found = found
        self._register(registry)

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(P + "bpf_feature", "1 when the kernel has the BPF feature, 0 when the agent "
                              "runs without it (degraded)", labels=["feature"])
        for name, ok in sorted(self.found.items()):
            g.add_metric([name], 1.0 if ok else 0.0)
        yield g


class VipCollector(_Collector):
    """ServiceEntry VIPs the kernel translates: connections and refusals by host, VIPs with no backend."""

    def __init__(self, vips: VipCounters, *, registry: CollectorRegistry | None = None) -> None:
        self.vips = vips
        self._register(registry)

    def collect(self) -> Iterator[Metric]:
        try:
            counters = self.vips.counters()
        except Exception as e:  # a map read, as in KernelCollector
            log.warning("reading BPF VIP counters: %s", e)
            return
        conns = CounterMetricFamily(P + "vip_connections", "connections (UDP: sockets) translated from a "
                                    "ServiceEntry VIP to a backend, by host", labels=["host"])
        refused = CounterMetricFamily(P + "vip_refused", "connects to a VIP refused because it had no backend",
                                      labels=["host"])
        for host, (c, nb) in sorted(counters.items()):
            conns.add_metric([host], c)
            refused.add_metric([host], nb)
        yield conns
        yield refused
        g = GaugeMetricFamily(P + "vips_without_backends", "VIP ports that currently have no backend")
        g.add_metric([], self.vips.stats.without_backends)
        yield g


class ReadyCollector(_Collector):
    """nodeagent_ready: the same answer as /readyz (app.health)."""

    def __init__(self, readiness: Readiness, *, registry: CollectorRegistry | None = None) -> None:
        self.readiness = readiness
        self._register(registry)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(P + "ready", "1 when every part is ready (BPF attached, listener up, table synced)")
        up.add_metric([], 1.0 if self.readiness.check().ready else 0.0)
        yield up


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text format -> {"name{labels}": value} (for `status` and the tests' SimNode)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class MetricsServer:
    """GET /metrics, /healthz (the process is alive), /readyz (every part ready, or why not)."""

    def __init__(self, settings: MetricsSettings, registry: CollectorRegistry, readiness: Readiness) -> None:
        self.settings = settings
        self.registry = registry
        self.readiness = readiness
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, self.settings.address, self.settings.port, reuse_port=True
        )
        log.info("metrics on http://%s:%d/metrics", self.settings.address, self.settings.port)

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing we need
            parts = line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            if method != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = generate_latest(self.registry)
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                report = self.readiness.check()
                status = "200 OK" if report.ready else "503 Service Unavailable"
                ctype, body = "text/plain", report.text().encode() + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeError):
            pass
        finally:
            writer.close()
