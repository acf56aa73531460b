"""Part 4 end to end: a real Prometheus scrapes the agent on the simulated node; PromQL over its HTTP
API must match the queries the pods sent. Also /readyz and `node-agent status --json`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.testing.simnode import METRICS_PORT, SimNode

PROM_PORT = 9090


@pytest.fixture
def prometheus(node: SimNode, tmp_path: Path) -> Iterator[None]:
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: node-agent\n    static_configs: [{{targets: ['127.0.0.1:{METRICS_PORT}']}}]\n"
    )
    proc = subprocess.Popen(
        node.node_exec("prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                       f"--web.listen-address=127.0.0.1:{PROM_PORT}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def promql(node: SimNode, expr: str) -> float | None:
    code, body = node.http_get("/api/v1/query?query=" + urllib.parse.quote(expr), port=PROM_PORT)
    if code != 200:
        return None
    result = json.loads(body)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for(node: SimNode, expr: str, want: float, timeout: float = 20) -> float | None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = promql(node, expr)
        if got == want:
            return got
        time.sleep(0.5)
    return got


def dig(node: SimNode, pod: str, name: str) -> str:
    r = node.pod(pod).run("dig", "+short", "+time=2", "+tries=1", name)
    return r.stdout.strip()


def test_prometheus_sees_what_pods_sent(node: SimNode, mesh: str, prometheus: None) -> None:
    agent = node.start_agent(mesh)
    # The agent itself talks upstream too (it resolves DNS-resolution ServiceEntries for their VIPs):
    # take that baseline from Prometheus before the pods ask anything.
    assert wait_for(node, "nodeagent_ready", 1) == 1
    upstream_before = promql(node, "sum(nodeagent_upstream_requests_total)")
    # A known mix: table names and an external name, repeated for cache hits, from two namespaces.
    for _ in range(3):
        assert dig(node, "client", "web.a.svc.cluster.local") == "10.96.1.10"
    for _ in range(2):
        assert dig(node, "client", "example.org") == "93.184.215.14"
    assert dig(node, "other", "db.b.svc.cluster.local") == "10.96.2.20"

    # 6 queries: 3 first-time (2 from the table, 1 forwarded), 3 cache hits. First a scrape that
    # came after all six (every query is a hit or a miss; the metrics below are read from it):
    # hits reach 3 with the fifth query, and on a slow machine a scrape lands before the sixth.
    assert wait_for(node, "nodeagent_cache_hits_total + nodeagent_cache_misses_total", 6) == 6
    assert promql(node, "nodeagent_cache_hits_total") == 3
    assert promql(node, "nodeagent_cache_misses_total") == 3
    assert promql(node, "nodeagent_table_answers_total") == 2
    assert promql(node, "nodeagent_forwarded_total") == 1
    want = (upstream_before or 0) + 1
    assert wait_for(node, "sum(nodeagent_upstream_requests_total)", want) == want
    assert promql(node, 'nodeagent_namespace_requests_total{namespace="a"}') == 5
    assert promql(node, 'nodeagent_namespace_requests_total{namespace="b"}') == 1
    assert promql(node, 'sum(nodeagent_requests_total{type="A",proto="udp",rcode="NOERROR"})') == 6
    assert promql(node, 'nodeagent_bpf_steered_total{namespace="a"}') == 5
    assert promql(node, "nodeagent_bpf_pods_enrolled") == 3
    assert promql(node, "nodeagent_ready") == 1
    # The upstream latency histogram observed every answered upstream query.
    assert promql(node, "sum(nodeagent_upstream_request_duration_seconds_count)") == want

    status = subprocess.run(node.node_exec(sys.executable, "-m", "node_agent.cli", "status", "--json",
                                           "--pin-root", agent.pin_root,
                                           "--metrics-addr", f"127.0.0.1:{agent.metrics_port}"),
                            capture_output=True, text=True, check=True)
    report = json.loads(status.stdout)
    assert report["steering"] is True
    assert sorted(p["steered"] for p in report["pods"]) == [0, 1, 5]
    assert report["cache"]["hits"] == 3


def test_readyz_waits_for_the_table(node: SimNode, mesh: str, tmp_path: Path) -> None:
    """With a Kubernetes source that never syncs (API server unreachable), the agent serves (it
    forwards everything) but is not ready; /healthz says it is alive."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\n")
    agent = node.start_agent(mesh, args=["--kubernetes", "--kubeconfig", f"Kubernetes={kubeconfig}"], wait=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and node.http_get("/healthz")[0] != 200:
        assert agent.proc.poll() is None, agent.log.read_text()
        time.sleep(0.1)
    assert node.http_get("/healthz")[0] == 200
    code, body = node.http_get("/readyz")
    assert code == 503 and "not synced" in body
