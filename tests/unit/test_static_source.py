"""Static YAML source and the shared object -> record conversion."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from dnslib import QTYPE

from node_agent.model import DNSConfig, Endpoint, Pod, Service, ServiceEntry, Snapshot, WorkloadEntry
from node_agent.nametable import AnswerKind, NameTable, TableSettings
from node_agent.sources import static
from node_agent.sources.convert import to_record

DEMO = Path(__file__).parents[2] / "node_agent" / "data" / "demo-mesh.yaml"


def test_pod_conversion_reads_dns_config_ips_and_annotations() -> None:
    pod = to_record(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "p",
                "namespace": "a",
                "uid": "u1",
                "labels": {"app": "x"},
                "annotations": {"dns.node-agent.io/steer": "false"},
            },
            "spec": {
                "nodeName": "n1",
                "hostname": "h",
                "subdomain": "sub",
                "dnsPolicy": "None",
                "dnsConfig": {
                    "nameservers": ["1.1.1.1"],
                    "searches": ["corp.internal"],
                    "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
                },
            },
            "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
        },
        "c1",
    )
    assert pod == Pod(
        namespace="a",
        name="p",
        ips=("10.0.0.1", "fd00::1"),
        uid="u1",
        cluster="c1",
        node_name="n1",
        hostname="h",
        subdomain="sub",
        labels=(("app", "x"),),
        dns_policy="None",
        dns_config=DNSConfig(
            searches=("corp.internal",), ndots=2, nameservers=("1.1.1.1",), options=(("ndots", "2"), ("edns0", ""))
        ),
        opt_out=True,
    )
    bare = to_record(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q"}, "status": {"podIP": "10.0.0.2"}}, "c"
    )
    assert isinstance(bare, Pod) and bare.ips == ("10.0.0.2",) and bare.namespace == "default"
    assert bare.dns_policy == "ClusterFirst" and bare.dns_config is None and not bare.opt_out


def test_service_and_slice_conversion() -> None:
    s = to_record(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "a"},
            "spec": {
                "clusterIP": "10.96.1.10",
                "clusterIPs": ["10.96.1.10", "fd00::10"],
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"port": 53, "protocol": "UDP", "targetPort": "dns"},
                ],
                "selector": {"app": "web"},
                "publishNotReadyAddresses": True,
            },
        },
        "c",
    )
    assert isinstance(s, Service)
    assert s.cluster_ips == ("10.96.1.10", "fd00::10") and s.publish_not_ready and s.selector == (("app", "web"),)
    assert [(p.name, p.port, p.protocol, p.target_port) for p in s.ports] == [
        ("http", 80, "TCP", 8080),
        ("", 53, "UDP", 0),
    ]
    ext = to_record(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "e", "namespace": "a"},
            "spec": {"type": "ExternalName", "externalName": "x.org"},
        },
        "c",
    )
    assert isinstance(ext, Service) and ext.external_name == "x.org" and not ext.headless
    sl = to_record(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "k-1", "namespace": "a", "labels": {"kubernetes.io/service-name": "kafka"}},
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": ["10.244.1.21"],
                    "hostname": "kafka-0",
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": "kafka-0"},
                },
                {"addresses": ["10.244.1.22"], "conditions": {"ready": False}},
                {"addresses": ["10.244.1.23"]},  # ready unknown: taken as ready, as the API documents
            ],
            "ports": [{"name": "broker", "port": 9092, "protocol": "TCP"}],
        },
        "c",
    )
    assert sl is not None and sl.service == "kafka"  # type: ignore[union-attr]
    assert sl.endpoints == (  # type: ignore[union-attr]
        Endpoint(("10.244.1.21",), True, "kafka-0", "kafka-0"),
        Endpoint(("10.244.1.22",), False),
        Endpoint(("10.244.1.23",), True),
    )
    orphan = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "o", "namespace": "a"}}
    assert to_record(orphan, "c") is None


def test_istio_conversion_and_unknown_kinds() -> None:
    entry = to_record(
        {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "ServiceEntry",
            "metadata": {"name": "s", "namespace": "a", "uid": "u", "creationTimestamp": "2024-05-01T10:00:00Z"},
            "spec": {
                "hosts": ["API.Example.com."],
                "addresses": ["192.0.2.1"],
                "ports": [{"number": 443, "name": "https", "protocol": "HTTPS", "targetPort": 8443}],
                "resolution": "STATIC",
                "location": "MESH_INTERNAL",
                "endpoints": [{"address": "10.99.0.7", "ports": {"https": 8443}, "labels": {"v": "1"}}],
                "workloadSelector": {"labels": {"app": "vm"}},
                "exportTo": ["."],
            },
        },
        "c",
    )
    assert isinstance(entry, ServiceEntry)
    assert entry.hosts == ("api.example.com",) and entry.creation_timestamp == "2024-05-01T10:00:00Z"
    assert entry.endpoints[0].ports == (("https", 8443),) and entry.workload_selector == (("app", "vm"),)
    assert entry.export_to == (".",) and entry.ports[0].target_port == 8443
    we = to_record(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": "vm", "namespace": "a", "labels": {"app": "meta", "zone": "z1"}},
            "spec": {"address": "10.10.0.5", "labels": {"app": "vm"}, "ports": {"http": 8080}},
        },
        "c",
    )
    assert isinstance(we, WorkloadEntry) and we.labels == (("app", "vm"), ("zone", "z1"))
    assert to_record({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, "c") is None
    with pytest.raises(ValueError, match="Service a/broken"):
        to_record(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "broken", "namespace": "a"},
                "spec": {"ports": [{}]},
            },
            "c",
        )


def test_file_layouts_and_cluster_selection() -> None:
    text = """
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Service, metadata: {name: one, namespace: a}, spec: {clusterIP: 10.0.0.1}}
---
cluster: east
items:
- {apiVersion: v1, kind: Service, metadata: {name: two, namespace: a}, spec: {clusterIP: 10.0.0.2}}
- apiVersion: v1
  kind: Service
  metadata: {name: three, namespace: a, annotations: {dns.node-agent.io/cluster: west}}
  spec: {clusterIP: 10.0.0.3}
---
- {apiVersion: v1, kind: Namespace, metadata: {name: a}}
- {apiVersion: v1, kind: Service, metadata: {name: four, namespace: a}, spec: {clusterIP: 10.0.0.4}}
---
"""
    records = static.parse(text, "home")
    assert [(r.name, r.cluster) for r in records] == [
        ("one", "home"),
        ("two", "east"),
        ("three", "west"),
        ("four", "home"),
    ]
    with pytest.raises(ValueError):
        static.parse("just a string", "home")


def test_demo_mesh_loads_and_answers_the_demo_probes() -> None:
    snap = static.load(str(DEMO))
    assert snap.source == f"static:{DEMO}" and snap.cluster == "Kubernetes"
    kinds = sorted(type(r).__name__ for r in snap.records)
    assert kinds.count("ServiceEntry") == 6 and kinds.count("Service") == 4 and "WorkloadEntry" in kinds
    t = NameTable(TableSettings())
    t.replace(snap)
    t.replace(
        Snapshot("static:pods", "Kubernetes", [Pod("a", "client", ("10.0.0.2",)), Pod("b", "other", ("10.0.0.3",))])
    )
    t.synced = True
    a, b = t.view_for("10.0.0.2"), t.view_for("10.0.0.3")
    assert a is not None and b is not None

    def ask(view, name: str) -> tuple[AnswerKind, list[str]]:  # type: ignore[no-untyped-def]
        ans = t.lookup(view, name, QTYPE.A)
        return ans.kind, [str(r.rdata) for r in ans.records if r.rtype == QTYPE.A]

    assert ask(a, "web.a.svc.cluster.local")[1] == ["10.96.1.10"]
    assert ask(a, "db.b.a.svc.cluster.local")[1] == ["10.96.2.20"]
    assert ask(b, "db.b.svc.cluster.local")[1] == ["10.96.2.20"]
    assert ask(a, "kafka-0.kafka.a.svc.cluster.local")[1] == ["10.244.1.21"]
    assert sorted(ask(a, "kafka.a.svc.cluster.local")[1]) == ["10.244.1.21", "10.244.1.22"]
    assert ask(a, "istio.io.a.svc.cluster.local")[1][0].startswith("240.240.")
    assert ask(a, "my-vm.com.a.svc.cluster.local")[1][0].startswith("240.240.")
    assert t.endpoints_of("my-vm.com", "a") == ("10.10.0.5",)
    assert ask(a, "reviews.a.svc.cluster.local")[1] == ["10.97.0.30"]
    assert ask(a, "api.example.com")[0] is AnswerKind.RECORDS
    assert t.endpoints_of("api.example.com", "a") == ("10.99.0.7",)
    assert t.endpoints_of("db-1.example.com", "a") == ("10.99.1.1",)
    assert t.endpoints_of("db-2.example.com", "b") == ("10.99.1.2",)
    assert ask(a, "nothere.a.svc.cluster.local")[0] is AnswerKind.NXDOMAIN
    assert ask(a, "internal-only.example.com")[0] is AnswerKind.FORWARD
    assert ask(b, "internal-only.example.com")[0] is AnswerKind.RECORDS


def test_watch_file_reloads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "- {apiVersion: v1, kind: Service, metadata: {name: one, namespace: a}, spec: {clusterIP: 10.0.0.1}}\n"
    )
    seen: list[list[str]] = []

    async def run() -> None:
        async def callback(snap: Snapshot) -> None:
            seen.append([r.name for r in snap.records])

        task = asyncio.ensure_future(static.watch_file(str(path), callback, interval=0.01))
        await asyncio.sleep(0.1)
        path.write_text(
            "- {apiVersion: v1, kind: Service, metadata: {name: two, namespace: a}, spec: {clusterIP: 10.0.0.2}}\n"
        )
        os.utime(path, (1, 1))  # a distinct mtime even on coarse-grained filesystems
        await asyncio.sleep(0.1)
        path.write_text(": not yaml : [")  # broken: previous records stay, no callback
        os.utime(path, (2, 2))
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run())
    assert seen == [["one"], ["two"]]
