"""Part 2 end to end: pods resolve mesh names in their own view, through the kernel path, with glibc."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from node_agent.testing.simnode import SimNode


def getent(node: SimNode, pod: str, name: str, family: str = "ahostsv4") -> list[str]:
    r = node.pod(pod).run("getent", family, name)
    return sorted({line.split()[0] for line in r.stdout.splitlines() if line.strip()})


@pytest.mark.parametrize("name, expected", [
    ("web", ["10.96.1.10"]),                       # short name: the asking pod's namespace (a)
    ("db.b", ["10.96.2.20"]),                      # <svc>.<ns>
    ("kafka", ["10.244.1.21", "10.244.1.22"]),     # headless: ready endpoint IPs
    ("kafka-0.kafka", ["10.244.1.21"]),            # StatefulSet pod name
    ("reviews", ["10.97.0.30"]),                   # a service of cluster-2, merged
])
def test_kubernetes_names_in_the_pods_view(node: SimNode, mesh: str, name: str, expected: list[str]) -> None:
    node.start_agent(mesh)
    before = len(node.kube_dns_queries())
    assert getent(node, "client", name) == expected
    assert node.kube_dns_queries()[before:] == [], "mesh names must not reach kube-dns"


def test_service_entries_workload_entries_and_visibility(node: SimNode, mesh: str) -> None:
    node.start_agent(mesh)
    vip_net = ipaddress.ip_network("240.240.0.0/16")
    istio = getent(node, "client", "istio.io")
    vm = getent(node, "client", "my-vm.com")
    db1, db2 = getent(node, "client", "db-1.example.com"), getent(node, "client", "db-2.example.com")
    for addrs in (istio, vm, db1, db2):
        assert len(addrs) == 1 and ipaddress.ip_address(addrs[0]) in vip_net, addrs
    assert db1 != db2, "two TCP ServiceEntries on one port need distinct VIPs"
    # exportTo: [b] -> namespace b sees it, namespace a does not (forwarded; kube-dns does not know it).
    assert getent(node, "other", "internal-only.example.com")
    assert getent(node, "client", "internal-only.example.com") == []
    # VIPs are stable: a second agent computes the same ones from scratch.
    node.agents[-1].stop()
    node.start_agent(mesh)
    assert getent(node, "client", "istio.io") == istio
    assert getent(node, "client", "db-2.example.com") == db2


def test_ndots5_external_lookup_costs_kube_dns_one_query_per_type(node: SimNode, mesh: str) -> None:
    node.start_agent(mesh)
    before = len(node.kube_dns_queries())
    # `getent ahosts` asks A and AAAA; with ndots:5 glibc would try 3 search domains first (6 queries).
    assert getent(node, "client", "example.org", "ahosts") == ["93.184.215.14"]
    seen = node.kube_dns_queries()[before:]
    per_type = Counter(qtype for qtype, name, _ in seen if name == "example.org")
    assert per_type["A"] == 1 and per_type["AAAA"] <= 1, seen
    assert not [n for _, n, _ in seen if n.endswith("cluster.local")], "search expansions leaked upstream"
    # And again: now from the cache, kube-dns sees nothing.
    before = len(node.kube_dns_queries())
    assert getent(node, "client", "example.org", "ahosts") == ["93.184.215.14"]
    assert node.kube_dns_queries()[before:] == []


def test_unknown_cluster_names_are_nxdomain_without_kube_dns(node: SimNode, mesh: str) -> None:
    node.start_agent(mesh)
    before = len(node.kube_dns_queries())
    r = node.pod("client").run("dig", "+time=2", "+tries=1", "nope.a.svc.cluster.local")
    assert "status: NXDOMAIN" in r.stdout and "flags: qr aa" in r.stdout
    # A known name asked for a type it lacks: NOERROR, no answer (istio#31250), not NXDOMAIN.
    r = node.pod("client").run("dig", "+time=2", "+tries=1", "AAAA", "web.a.svc.cluster.local")
    assert "status: NOERROR" in r.stdout and "ANSWER: 0" in r.stdout
    assert node.kube_dns_queries()[before:] == []


def test_external_names_cost_one_upstream_query_per_node_not_per_namespace(node: SimNode, mesh: str) -> None:
    """Forwarded answers no view could answer differently are shared by every namespace's pods."""
    node.start_agent(mesh)
    before = len(node.kube_dns_queries())
    for pod in ("client", "other"):  # namespaces a and b, each its own search list
        assert getent(node, pod, "example.org") == ["93.184.215.14"]
        assert getent(node, pod, "istio.io.") == getent(node, pod, "istio.io")  # SE: per-view, from the table
    seen = [(t, n) for t, n, _ in node.kube_dns_queries()[before:] if n == "example.org"]
    assert seen == [("A", "example.org")], seen
