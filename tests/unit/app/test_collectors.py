"""The metric collectors, each built from its own inputs (stats objects, fakes of the BPF readers):
the series they export are the counters they were given, read at scrape time."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from node_agent.app import status
from node_agent.app.health import Readiness
from node_agent.app.metrics import (
    AnswerCollector,
    KernelAnswerCollector,
    KernelCollector,
    ReadyCollector,
    TableCollector,
    UpstreamCollector,
    VipCollector,
    parse_exposition,
)
from node_agent.kernel.answerpath import AttachInfo
from node_agent.kernel.vipmap import VipStats
from node_agent.resolve.cache import CacheStats
from node_agent.resolve.resolver import ResolverStats
from node_agent.serve.responder import ResponderStats
from node_agent.testing.fakes import FakeAnswerPath, FakeKernel, FakeVips
from node_agent.upstream.stats import ServerStats, UpstreamStats


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    return parse_exposition(generate_latest(registry).decode())


def test_answers_and_cache_from_the_stats_given() -> None:
    registry = CollectorRegistry()
    resolver = ResolverStats(answers={(1, "udp", 0, "a"): 3, (28, "tcp", 3, ""): 2}, refused=4, dropped=1)
    cache = CacheStats(hits=7, misses=2, entries=5, bytes=900)
    responder = ResponderStats(udp_dropped=10)
    AnswerCollector(resolver, cache, responder, registry=registry)
    m = scrape(registry)
    assert m['nodeagent_requests_total{proto="udp",rcode="NOERROR",type="A"}'] == 3
    assert m['nodeagent_requests_total{proto="tcp",rcode="NXDOMAIN",type="AAAA"}'] == 2
    assert m['nodeagent_namespace_requests_total{namespace="a"}'] == 3
    assert m['nodeagent_namespace_requests_total{namespace="(node)"}'] == 2  # the node itself asked
    assert m["nodeagent_refused_total"] == 4
    assert m["nodeagent_dropped_total"] == 11  # the resolver's and the listener's
    assert (m["nodeagent_cache_hits_total"], m["nodeagent_cache_misses_total"]) == (7, 2)
    assert (m["nodeagent_cache_entries"], m["nodeagent_cache_size_bytes"]) == (5, 900)
    resolver.refused += 1  # read at scrape time, not copied at construction
    assert scrape(registry)["nodeagent_refused_total"] == 5


def test_fold_runs_once_per_scrape_before_the_counters_are_read() -> None:
    """The resolver counts hot-path hits in bulk; fold moves them into the stats, so the scrape that
    follows it must show them in both the requests and the cache families."""
    resolver, cache = ResolverStats(), CacheStats()
    calls = []

    def fold() -> None:
        calls.append(1)
        resolver.answers[(1, "udp", 0, "a")] = resolver.answers.get((1, "udp", 0, "a"), 0) + 2
        cache.hits += 2

    registry = CollectorRegistry()
    AnswerCollector(resolver, cache, ResponderStats(), fold=fold, registry=registry)
    assert calls == []  # registering reads nothing
    m = scrape(registry)
    assert calls == [1]
    assert m["nodeagent_cache_hits_total"] == 2
    assert m['nodeagent_requests_total{proto="udp",rcode="NOERROR",type="A"}'] == 2


def test_upstream_series_per_server() -> None:
    server = ServerStats(requests=3, tcp_connections=1, inflight=2)
    server.failures["timeout"] = 1
    server.observe(0.0002)
    server.observe(5.0)
    stats = UpstreamStats(servers={"10.96.0.10:53": server}, coalesced=6)
    registry = CollectorRegistry()
    UpstreamCollector(stats, lambda: {"10.96.0.10:53": False}, registry=registry)
    m = scrape(registry)
    srv = 'server="10.96.0.10:53"'
    assert m[f"nodeagent_upstream_requests_total{{{srv}}}"] == 3
    assert m[f'nodeagent_upstream_failures_total{{reason="timeout",{srv}}}'] == 1
    assert m[f"nodeagent_upstream_request_duration_seconds_count{{{srv}}}"] == 2
    assert m[f'nodeagent_upstream_request_duration_seconds_bucket{{le="+Inf",{srv}}}'] == 2
    assert m[f"nodeagent_upstream_request_duration_seconds_sum{{{srv}}}"] == pytest.approx(5.0002)
    assert m[f"nodeagent_upstream_inflight{{{srv}}}"] == 2
    assert m[f"nodeagent_upstream_tcp_connections_total{{{srv}}}"] == 1
    assert m[f"nodeagent_upstream_healthy{{{srv}}}"] == 0
    assert m["nodeagent_upstream_coalesced_total"] == 6


def test_table_sizes_and_sources_are_the_live_mappings() -> None:
    sources: dict[str, tuple[bool, float]] = {"static:/m.yaml": (True, 1700000000.0)}
    rejected: dict[tuple[str, str], int] = {}
    registry = CollectorRegistry()
    TableCollector(lambda: {"services": 4, "vips": 1}, sources, rejected, registry=registry)
    m = scrape(registry)
    assert m['nodeagent_table_records{kind="services"}'] == 4
    assert m['nodeagent_source_synced{source="static:/m.yaml"}'] == 1
    assert m['nodeagent_source_last_sync_timestamp_seconds{source="static:/m.yaml"}'] == 1700000000.0
    sources["kubernetes:c1/pods"] = (False, 0.0)  # a source added after the collector was built
    rejected[("kubernetes:c1/pods", "Pod")] = 2
    m = scrape(registry)
    assert m['nodeagent_source_synced{source="kubernetes:c1/pods"}'] == 0
    assert m['nodeagent_source_rejected_objects_total{kind="Pod",source="kubernetes:c1/pods"}'] == 2


def test_bpf_pods_are_summed_per_namespace() -> None:
    kernel = FakeKernel().pod(11, steered=5, failopen=1).pod(12, steered=2).pod(13, steered=4, opt_out=True)
    kernel.pod(99, steered=1)  # in the map, not (yet) in the enrollment
    kernel.events.update(steered=12, failopen_start=0)
    namespaces = {11: "a", 12: "a", 13: "b"}
    registry = CollectorRegistry()
    KernelCollector(kernel, namespaces, registry=registry)
    m = scrape(registry)
    assert m["nodeagent_bpf_pods_enrolled"] == 4
    assert m['nodeagent_bpf_steered_total{namespace="a"}'] == 7
    assert m['nodeagent_bpf_steered_total{namespace="b"}'] == 4
    assert m['nodeagent_bpf_steered_total{namespace="(unknown)"}'] == 1
    assert m['nodeagent_bpf_failopen_total{namespace="a"}'] == 1
    assert m['nodeagent_bpf_events_total{event="steered"}'] == 12
    assert m['nodeagent_bpf_events_total{event="failopen_start"}'] == 0


def test_a_failed_map_read_leaves_the_bpf_families_out_of_that_scrape(caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel(error=OSError("map gone")).pod(11, steered=5)
    registry = CollectorRegistry()
    KernelCollector(kernel, {11: "a"}, registry=registry)
    ReadyCollector(Readiness(), registry=registry)
    with caplog.at_level(logging.WARNING):
        m = scrape(registry)
    assert not any(k.startswith("nodeagent_bpf_") for k in m)
    assert m["nodeagent_ready"] == 1  # the rest of the scrape is served
    assert "map gone" in caplog.text
    kernel.error = None
    assert scrape(registry)['nodeagent_bpf_steered_total{namespace="a"}'] == 5


def test_vip_counters_by_host() -> None:
    vips = FakeVips({"api.example.com": (9, 0), "db.example.com": (0, 3)}, VipStats(without_backends=1))
    registry = CollectorRegistry()
    VipCollector(vips, registry=registry)
    m = scrape(registry)
    assert m['nodeagent_vip_connections_total{host="api.example.com"}'] == 9
    assert m['nodeagent_vip_refused_total{host="db.example.com"}'] == 3
    assert m["nodeagent_vips_without_backends"] == 1


def test_ready_gauge_follows_the_readiness() -> None:
    synced = False
    readiness = Readiness()
    readiness.add("table", lambda: None if synced else "not synced")
    registry = CollectorRegistry()
    ReadyCollector(readiness, registry=registry)
    assert scrape(registry)["nodeagent_ready"] == 0
    synced = True
    assert scrape(registry)["nodeagent_ready"] == 1


def test_kernel_answers_count_as_requests_and_cache_hits_and_status_shows_the_path() -> None:
    registry = CollectorRegistry()
    resolver = ResolverStats(answers={(1, "udp", 0, "a"): 3})
    resolver.kernel_answers[(1, 0)] += 5  # what kernel/answerpath read back from the entries' counters
    resolver.kernel_by_namespace["a"] += 5  # ... and from the pods'
    AnswerCollector(resolver, CacheStats(hits=8), ResponderStats(udp_received=3), registry=registry)
    path = FakeAnswerPath(held=2, points=(AttachInfo("10.244.1.10", "veth0", "tcx"),),
                          pending=(("10.244.1.11", 'no neighbour entry yet ("quoted")'),),
                          counters={"answered": 5, "miss": 2})
    KernelAnswerCollector(path, resolver.kernel_by_namespace, registry=registry)
    m = scrape(registry)
    assert m['nodeagent_requests_total{proto="udp",rcode="NOERROR",type="A"}'] == 8  # 3 + 5: dashboards stay right
    assert m['nodeagent_namespace_requests_total{namespace="a"}'] == 8
    assert m['nodeagent_kernel_answers_total{namespace="a"}'] == 5
    assert m["nodeagent_udp_received_total"] == 3  # userspace saw only its own
    assert m["nodeagent_kernel_answers_active"] == 1 and m["nodeagent_kernel_answer_map_entries"] == 2
    k = status.kernel_answers(m)
    assert k["attach_points"] == [{"pod_ip": "10.244.1.10", "interface": "veth0", "mode": "tcx"}]
    assert k["unattached"] == [{"pod_ip": "10.244.1.11", "reason": 'no neighbour entry yet ("quoted")'}]
    text = "\n".join(status._kernel_answer_lines(k))
    assert text.startswith("kernel answers: on, 1 attach point (tcx 1), 1 waiting; answered 5 (passed on: miss 2)")
    assert "answer map: 2 of 16384 entries" in text and "10.244.1.10 on veth0 (tcx)" in text


def test_kernel_answers_off_says_why() -> None:
    registry = CollectorRegistry()
    KernelAnswerCollector(None, {}, reason="off by the setting cache.kernel_answers", registry=registry)
    k = status.kernel_answers(scrape(registry))
    assert status._kernel_answer_lines(k) == ["kernel answers: off (off by the setting cache.kernel_answers)"]
    registry = CollectorRegistry()
    KernelAnswerCollector(FakeAnswerPath(active=False, error="cannot load: no clang"), {}, registry=registry)
    assert status.kernel_answers(scrape(registry))["off_reason"] == "cannot load: no clang"
