"""Static YAML source and the shared object -> record conversion."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from dnslib import QTYPE

from node_agent.mesh.model import (
    Change,
    DNSConfig,
    Endpoint,
    EndpointSlice,
    Key,
    Kind,
    Namespace,
    Pod,
    Port,
    Service,
    ServiceEntry,
    Snapshot,
    WorkloadEntry,
)
from node_agent.mesh.table import AnswerKind, NameTable
from node_agent.mesh.views import View
from node_agent.settings import TableSettings
from node_agent.sources import static
from node_agent.sources.convert import to_record
from node_agent.testing import DEMO_MESH
from tests.support.netutil import free_port

DEMO = Path(DEMO_MESH)


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
    assert [(type(r).__name__, r.name, r.cluster) for r in records] == [
        ("Service", "one", "home"),
        ("Service", "two", "east"),
        ("Service", "three", "west"),
        ("Namespace", "a", "home"),
        ("Service", "four", "home"),
    ]
    with pytest.raises(ValueError, match="line 1: not a Kubernetes object"):
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
    os.utime(path, (0.5, 0.5))  # written long ago: loaded at once
    seen: list[list[str]] = []
    rejected: Counter[tuple[str, str]] = Counter()
    source = static.source_name(str(path))

    async def run() -> None:
        async def callback(snap: Snapshot) -> None:
            seen.append([r.name for r in snap.records])

        task = asyncio.ensure_future(static.watch_file(str(path), callback, interval=0.01, rejected=rejected))
        await asyncio.sleep(0.1)
        path.write_text(
            "- {apiVersion: v1, kind: Service, metadata: {name: two, namespace: a}, spec: {clusterIP: 10.0.0.2}}\n"
        )
        os.utime(path, (1, 1))  # a distinct mtime even on coarse-grained filesystems
        await asyncio.sleep(0.1)
        assert not rejected
        path.write_text(": not yaml : [")  # broken: previous records stay, no callback
        os.utime(path, (2, 2))
        await asyncio.sleep(0.1)
        assert rejected == {(source, static.FILE_KIND): 1}
        path.write_text(  # a typo'd kind: refused as a whole, counted per object by kind
            "- {apiVersion: v1, kind: Service, metadata: {name: three, namespace: a}}\n"
            "- {apiVersion: v1, kind: Servce, metadata: {name: four, namespace: a}}\n"
            "- {apiVersion: v1, kind: Servce, metadata: {name: five, namespace: a}}\n"
        )
        os.utime(path, (3, 3))
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run())
    assert seen == [["one"], ["two"]]
    assert rejected == {(source, static.FILE_KIND): 1, (source, "Servce"): 2}


def test_watch_file_does_not_load_a_file_caught_mid_rewrite(tmp_path: Path) -> None:
    """A file rewritten in place is empty between the truncate and the write: loaded then, its pods
    would lose their records (and steering) until the next poll. It is read once it has settled."""
    path = tmp_path / "pods.yaml"
    one = "- {apiVersion: v1, kind: Service, metadata: {name: one, namespace: a}, spec: {clusterIP: 10.0.0.1}}\n"
    path.write_text(one)
    os.utime(path, (1, 1))
    seen: list[list[str]] = []

    async def run() -> None:
        task = asyncio.ensure_future(static.watch_file(
            str(path), lambda snap: seen.append([r.name for r in snap.records]), interval=0.01, settle=5.0))
        await asyncio.sleep(0.2)
        assert seen == [["one"]]
        path.write_text("")  # the truncate; the writer has not written yet (its mtime is now)
        await asyncio.sleep(0.5)  # 50 polls, all within `settle` of the truncate
        assert seen == [["one"]]
        path.write_text(one.replace("one", "two"))
        os.utime(path, (2, 2))  # the write, settled
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(run())
    assert seen == [["one"], ["two"]]


# -------------------------------------------------------------------- v1 Endpoints, Namespaces ----
KAFKA_ENDPOINTS = """\
apiVersion: v1
kind: Service
metadata: {name: kafka, namespace: a}
spec: {clusterIP: None, clusterIPs: [None], ports: [{name: broker, port: 9092}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: kafka, namespace: a}
subsets:
- addresses:
  - {ip: 10.244.1.21, hostname: kafka-0, nodeName: n1, targetRef: {kind: Pod, name: kafka-0, namespace: a}}
  - {ip: "fd00::21", hostname: kafka-0}
  notReadyAddresses:
  - {ip: 10.244.1.22, hostname: kafka-1, targetRef: {kind: Pod, name: kafka-1, namespace: a}}
  ports:
  - {name: broker, port: 9092, protocol: TCP}
- addresses: [{ip: 10.244.1.30}]
  ports: [{name: metrics, port: 9404, protocol: UDP}]
"""

VIEW_A = View("a", (), 5)


def _answers(t: NameTable, name: str, qtype: int = QTYPE.A) -> tuple[AnswerKind, list[str]]:
    ans = t.lookup(VIEW_A, name, qtype)
    return ans.kind, sorted(str(r.rdata) for r in ans.records if r.rtype == qtype)


def test_endpoints_are_read_as_the_mirroring_controller_makes_slices() -> None:
    records = static.parse(KAFKA_ENDPOINTS)
    slices = sorted((r for r in records if isinstance(r, EndpointSlice)), key=lambda s: s.name)
    broker = (Port(9092, "broker", "TCP"),)
    assert slices == [
        EndpointSlice(
            "a",
            "kafka:endpoints:0:IPv4",
            "kafka",
            (
                Endpoint(("10.244.1.21",), True, "kafka-0", "kafka-0"),
                Endpoint(("10.244.1.22",), False, "kafka-1", "kafka-1"),
            ),
            broker,
            "IPv4",
        ),
        EndpointSlice("a", "kafka:endpoints:0:IPv6", "kafka", (Endpoint(("fd00::21",), True, "kafka-0"),), broker,
                      "IPv6"),
        EndpointSlice("a", "kafka:endpoints:1:IPv4", "kafka", (Endpoint(("10.244.1.30",)),),
                      (Port(9404, "metrics", "UDP"),), "IPv4"),
    ]
    t = NameTable(TableSettings())
    t.replace(Snapshot("static:f", "Kubernetes", records))
    t.synced = True
    # Headless: ready endpoints only; the hostname names its addresses of both families.
    assert _answers(t, "kafka.a.svc.cluster.local") == (AnswerKind.RECORDS, ["10.244.1.21", "10.244.1.30"])
    assert _answers(t, "kafka-0.kafka.a.svc.cluster.local") == (AnswerKind.RECORDS, ["10.244.1.21"])
    assert _answers(t, "kafka-0.kafka.a.svc.cluster.local", QTYPE.AAAA) == (AnswerKind.RECORDS, ["fd00::21"])
    assert "10.244.1.22" not in _answers(t, "kafka-1.kafka.a.svc.cluster.local")[1]
    # publishNotReadyAddresses: the not-ready one is published too.
    t.replace(Snapshot("static:f", "Kubernetes", static.parse(
        KAFKA_ENDPOINTS.replace("clusterIP: None,", "clusterIP: None, publishNotReadyAddresses: true,"))))
    assert _answers(t, "kafka-1.kafka.a.svc.cluster.local") == (AnswerKind.RECORDS, ["10.244.1.22"])
    # The controller's opt-out label: nothing mirrored.
    skipped = static.parse(KAFKA_ENDPOINTS.replace(
        "metadata: {name: kafka, namespace: a}\nsubsets",
        "metadata: {name: kafka, namespace: a, labels: {endpointslice.kubernetes.io/skip-mirror: 'true'}}\nsubsets"))
    assert [type(r).__name__ for r in skipped] == ["Service"]


def test_endpointslices_win_over_endpoints_of_the_same_service() -> None:
    """`kubectl get endpoints,endpointslices -o yaml` of a real cluster has both for every service."""
    slice_yaml = """\
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kafka-x7k2p, namespace: a, labels: {kubernetes.io/service-name: kafka}}
addressType: IPv4
ports: [{name: broker, port: 9092, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.21], hostname: kafka-0, conditions: {ready: true}}
- {addresses: [10.244.1.30], conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: a}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Endpoints
metadata: {name: other, namespace: a}
subsets: [{addresses: [{ip: 10.244.2.1}]}]
"""
    # Either order in the file.
    for text in (KAFKA_ENDPOINTS + slice_yaml, slice_yaml + "---\n" + KAFKA_ENDPOINTS):
        records = static.parse(text)
        slices = sorted(r.name for r in records if isinstance(r, EndpointSlice))
        assert slices == ["kafka-x7k2p", "other:endpoints:0:IPv4"]  # Endpoints of a service without slices stay
        t = NameTable(TableSettings())
        t.replace(Snapshot("static:f", "Kubernetes", records))
        t.synced = True
        kind, addrs = _answers(t, "kafka.a.svc.cluster.local")
        assert kind is AnswerKind.RECORDS and addrs == ["10.244.1.21", "10.244.1.30"]  # each once
        assert _answers(t, "kafka-0.kafka.a.svc.cluster.local")[1] == ["10.244.1.21"]
        assert _answers(t, "other.a.svc.cluster.local")[1] == ["10.244.2.1"]
    # The rule is per cluster: Endpoints of another cluster's same-named service stay.
    east = KAFKA_ENDPOINTS.replace("kind: Endpoints\nmetadata: {name: kafka, namespace: a",
                                   "kind: Endpoints\nmetadata: {name: kafka, namespace: a, "
                                   "annotations: {dns.node-agent.io/cluster: east}")
    mirrored = [r for r in static.parse(east + slice_yaml) if isinstance(r, EndpointSlice) and ":" in r.name]
    assert {(r.cluster, r.service) for r in mirrored} == {("east", "kafka"), ("Kubernetes", "other")}


def test_namespaces_are_records_the_table_accepts() -> None:
    records = static.parse(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a, labels: {istio-injection: enabled}}\n"
        "spec: {finalizers: [kubernetes]}\nstatus: {phase: Active}\n",
        "east",
    )
    assert records == [Namespace("team-a", (("istio-injection", "enabled"),), "east")]
    ns = records[0]
    assert isinstance(ns, Namespace) and ns.namespace == "" and Key.of(ns) == Key(Kind.NAMESPACE, "east", "", "team-a")
    t = NameTable(TableSettings())
    t.replace(Snapshot("static:f", "east", records))
    assert t.sizes()["Namespace"] == 1
    t.apply([Change(Key.of(ns), Namespace("team-a", (), "east")), Change(Key(Kind.NAMESPACE, "east", "", "b"),
                                                                          Namespace("b", (), "east"))])
    assert t.sizes()["Namespace"] == 2
    t.apply([Change(Key.of(ns), None)])
    t.replace(Snapshot("static:f", "east", []))
    assert t.sizes()["Namespace"] == 0


# ------------------------------------------------------------------------- nothing skipped in silence --
def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_an_object_of_a_kind_not_read_refuses_the_file_naming_it_and_its_line() -> None:
    text = """\
# a user's file
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a}
spec: {clusterIP: 10.96.0.5}
---
apiVersion: v1
kind: Servce
metadata: {name: typo, namespace: a}
spec: {clusterIP: 10.96.0.6}
"""
    with pytest.raises(ValueError) as e:
        static.parse(text, origin="mesh.yaml")
    assert str(e.value).startswith(f"mesh.yaml:{_line_of(text, 'kind: Servce') - 1}: Servce a/typo: ")
    assert "did you mean Service?" in str(e.value) and "\n" not in str(e.value)

    # In a List, in a plain YAML list, and a cluster-scoped kind: each named with its own line.
    listed = """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Service, metadata: {name: ok, namespace: a}, spec: {clusterIP: 10.0.0.1}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: a}
---
- {apiVersion: v1, kind: ConfigMap, metadata: {name: cm, namespace: b}}
- {apiVersion: v1, kind: Node, metadata: {name: n1}}
"""
    with pytest.raises(static.StaticFileError) as err:
        static.parse(listed)
    problems = [(p.line, p.kind, p.message.split(":")[0]) for p in err.value.problems]
    assert problems == [
        (_line_of(listed, "apiVersion: apps/v1"), "Deployment", "Deployment a/web"),
        (_line_of(listed, "kind: ConfigMap"), "ConfigMap", "ConfigMap b/cm"),
        (_line_of(listed, "kind: Node"), "Node", "Node n1"),
    ]
    assert str(err.value).startswith(f"line {problems[0][0]}: Deployment a/web: kind Deployment is not read")
    assert str(err.value).endswith(f"(and 2 more: line {problems[1][0]}, {problems[2][0]})")

    # A kind that is read, in an API group it is not.
    with pytest.raises(ValueError, match=r"^line 1: EndpointSlice a/s: apiVersion v1 is not read, "
                                         r"EndpointSlice is read as discovery.k8s.io/"):
        static.parse("{apiVersion: v1, kind: EndpointSlice, metadata: {name: s, namespace: a}}")


def test_malformed_duplicate_and_unparsable_input_is_refused_with_its_line() -> None:
    bad_port = "---\n- {kind: Service, metadata: {name: ok, namespace: a}}\n- kind: Service\n" \
               "  metadata: {name: broken, namespace: a}\n  spec: {ports: [{}]}\n"
    with pytest.raises(ValueError, match=r"^line 3: bad Service a/broken: "):
        static.parse(bad_port)
    with pytest.raises(ValueError, match=r"^line 3: bad Endpoints a/e: 'nope' does not appear to be an IP"):
        static.parse("\n\n{kind: Endpoints, metadata: {name: e, namespace: a}, subsets: [{addresses: [{ip: nope}]}]}")
    dup = "- {kind: Service, metadata: {name: web, namespace: a}}\n" * 2
    with pytest.raises(ValueError, match=r"^line 2: Service a/web: the same object as line 1"):
        static.parse(dup)
    with pytest.raises(static.StaticFileError, match=r"^f.yaml:3: YAML: .*flow mapping") as err:
        static.parse("kind: Service\nmetadata: {name: x\n", origin="f.yaml")
    assert err.value.problems[0].kind == static.FILE_KIND


def test_the_agent_refuses_to_start_on_such_a_file_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\n---\n"
                   "apiVersion: v1\nkind: Servce\nmetadata: {name: typo, namespace: a}\n")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "node_agent.cli", "run", "--no-bpf", "--static", str(bad),
         "--listen", f"127.0.0.1:{free_port()}", "--metrics-addr", f"127.0.0.1:{free_port()}",
         "--upstream", "127.0.0.1:9", "--log-format", "text"],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2],
    )
    assert proc.returncode != 0 and time.monotonic() - started < 20
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{bad}:5: Servce a/typo: kind Servce is not read" in errors[0], proc.stderr
    assert "agent up" not in proc.stderr
