"""Name table: Kubernetes/Istio semantics, per-pod views, the server-side search path, updates, scale."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from unittest import mock

import pytest
from dnslib import QTYPE

from node_agent.mesh.model import Change as Chg
from node_agent.mesh.model import (
    DNSConfig,
    Endpoint,
    EndpointSlice,
    Key,
    Namespace,
    Pod,
    Port,
    Record,
    Service,
    ServiceEntry,
    Snapshot,
    WorkloadEndpoint,
    WorkloadEntry,
)
from node_agent.mesh.table import Answer, AnswerKind, NameTable, View
from node_agent.settings import TableSettings

A, AAAA, SRV, PTR, CNAME, TXT = QTYPE.A, QTYPE.AAAA, QTYPE.SRV, QTYPE.PTR, QTYPE.CNAME, QTYPE.TXT
VA = View("a", ("a.svc.cluster.local", "svc.cluster.local", "cluster.local"), 5)
VB = View("b", ("b.svc.cluster.local", "svc.cluster.local", "cluster.local"), 5)


def table(*records: Record, synced: bool = True, **settings: object) -> NameTable:
    t = NameTable(TableSettings(**settings))  # type: ignore[arg-type]
    t.replace(Snapshot("test", "Kubernetes", list(records)))
    t.synced = synced
    return t


def rdata(ans: Answer) -> list[str]:
    return [str(r.rdata) for r in ans.records]


def addrs(ans: Answer) -> set[str]:
    return {str(r.rdata) for r in ans.records if r.rtype in (A, AAAA)}


def svc(ns: str, name: str, *ips: str, **kw: object) -> Service:
    return Service(ns, name, cluster_ips=ips, **kw)  # type: ignore[arg-type]


def se(ns: str, name: str, *hosts: str, **kw: object) -> ServiceEntry:
    kw.setdefault("resolution", "STATIC")
    return ServiceEntry(ns, name, hosts, uid=f"uid-{ns}-{name}", **kw)  # type: ignore[arg-type]


def headless(ns: str, name: str, **kw: object) -> Service:
    return Service(ns, name, cluster_ips=("None",), **kw)  # type: ignore[arg-type]


def slice_(ns: str, service: str, *eps: Endpoint, ports: Iterable[Port] = (), cluster: str = "Kubernetes"):
    return EndpointSlice(ns, f"{service}-{cluster}", service, tuple(eps), tuple(ports), cluster=cluster)


# ------------------------------------------------------------------------------- Kubernetes ----
def test_cluster_ip_by_family_and_nodata_for_a_missing_type() -> None:
    t = table(svc("a", "web", "10.96.1.10"), svc("a", "dual", "10.96.1.11", "fd00::11"))
    ans = t.lookup(VA, "WEB.a.svc.Cluster.Local.", A)
    assert ans.kind is AnswerKind.RECORDS and ans.authoritative
    assert rdata(ans) == ["10.96.1.10"]
    assert ans.records[0].ttl == 30 and str(ans.records[0].rname) == "web.a.svc.cluster.local."
    nodata = t.lookup(VA, "web.a.svc.cluster.local", AAAA)  # istio#31250: NODATA, never NXDOMAIN
    assert nodata.kind is AnswerKind.RECORDS and nodata.records == ()
    assert t.lookup(VA, "web.a.svc.cluster.local", TXT).records == ()
    assert rdata(t.lookup(VA, "dual.a.svc.cluster.local", AAAA)) == ["fd00::11"]


def test_names_under_the_cluster_domain_nxdomain_once_synced_forward_before() -> None:
    early = table(svc("a", "web", "10.96.1.10"), synced=False)
    assert early.lookup(VA, "nothere.a.svc.cluster.local", A).kind is AnswerKind.FORWARD
    assert rdata(early.lookup(VA, "web.a.svc.cluster.local", A)) == ["10.96.1.10"]  # known: answered
    early.synced = True
    assert early.lookup(VA, "nothere.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    # also when the name could be read as "web.zz" + search "svc.cluster.local": see the next tests
    assert early.lookup(VA, "web.zz.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    off = table(svc("a", "web", "10.96.1.10"), nxdomain_in_cluster_domain=False)
    assert off.lookup(VA, "nothere.a.svc.cluster.local", A).kind is AnswerKind.FORWARD
    assert early.lookup(VA, "example.org", A).kind is AnswerKind.FORWARD


def test_empty_non_terminals_are_nodata_not_nxdomain() -> None:
    t = table(svc("a", "web", "10.96.1.10", ports=(Port(80, "http"),)))
    for name in ("cluster.local", "svc.cluster.local", "a.svc.cluster.local", "_tcp.web.a.svc.cluster.local"):
        ans = t.lookup(VA, name, A)
        assert ans.kind is AnswerKind.RECORDS and ans.records == (), name
    assert t.lookup(VA, "zz.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN  # no such namespace
    assert t.lookup(VA, "_udp.web.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN


def test_headless_ready_endpoints_statefulset_names_and_publish_not_ready() -> None:
    eps = (
        Endpoint(("10.244.1.21",), hostname="kafka-0"),
        Endpoint(("10.244.1.22",), hostname="kafka-1"),
        Endpoint(("10.244.1.23",), ready=False, hostname="kafka-2"),
        Endpoint(("10.244.1.24",)),
    )
    t = table(headless("a", "kafka"), slice_("a", "kafka", *eps))
    assert addrs(t.lookup(VA, "kafka.a.svc.cluster.local", A)) == {"10.244.1.21", "10.244.1.22", "10.244.1.24"}
    assert rdata(t.lookup(VA, "kafka-1.kafka.a.svc.cluster.local", A)) == ["10.244.1.22"]
    assert rdata(t.lookup(VA, "10-244-1-24.kafka.a.svc.cluster.local", A)) == ["10.244.1.24"]
    assert t.lookup(VA, "kafka-2.kafka.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    t2 = table(headless("a", "kafka", publish_not_ready=True), slice_("a", "kafka", *eps))
    assert "10.244.1.23" in addrs(t2.lookup(VA, "kafka.a.svc.cluster.local", A))
    assert rdata(t2.lookup(VA, "kafka-2.kafka.a.svc.cluster.local", A)) == ["10.244.1.23"]


def test_srv_for_named_ports_clusterip_and_headless() -> None:
    t = table(
        svc("a", "web", "10.96.1.10", ports=(Port(80, "http"), Port(53, "dns", "UDP"))),
        headless("a", "kafka"),
        slice_(
            "a",
            "kafka",
            Endpoint(("10.244.1.21",), hostname="kafka-0"),
            Endpoint(("10.244.1.22",)),
            ports=(Port(9092, "broker"),),
        ),
    )
    assert rdata(t.lookup(VA, "_http._tcp.web.a.svc.cluster.local", SRV)) == ["0 100 80 web.a.svc.cluster.local."]
    assert rdata(t.lookup(VA, "_dns._udp.web.a.svc.cluster.local", SRV)) == ["0 100 53 web.a.svc.cluster.local."]
    assert t.lookup(VA, "_dns._tcp.web.a.svc.cluster.local", SRV).kind is AnswerKind.NXDOMAIN
    got = sorted(rdata(t.lookup(VA, "_broker._tcp.kafka.a.svc.cluster.local", SRV)))
    assert got == ["0 50 9092 10-244-1-22.kafka.a.svc.cluster.local.", "0 50 9092 kafka-0.kafka.a.svc.cluster.local."]
    # a known SRV name asked for A: NODATA
    assert t.lookup(VA, "_http._tcp.web.a.svc.cluster.local", A).records == ()


def test_ptr_for_service_ips_v4_and_v6() -> None:
    t = table(svc("a", "web", "10.96.1.10", "fd00::10"))
    assert rdata(t.lookup(VA, "10.1.96.10.in-addr.arpa", PTR)) == ["web.a.svc.cluster.local."]
    v6 = "0.1.0.0." + "0." * 26 + "d.f.ip6.arpa"
    assert rdata(t.lookup(VA, v6, PTR)) == ["web.a.svc.cluster.local."]
    assert t.lookup(VA, "99.1.96.10.in-addr.arpa", PTR).kind is AnswerKind.FORWARD


def test_external_name_cname_to_outside_and_to_a_table_name() -> None:
    t = table(
        Service("a", "ext", type="ExternalName", external_name="Example.ORG."),
        Service("a", "alias", type="ExternalName", external_name="web.a.svc.cluster.local"),
        Service("a", "broken", type="ExternalName", external_name="gone.a.svc.cluster.local"),
        svc("a", "web", "10.96.1.10"),
    )
    out = t.lookup(VA, "ext.a.svc.cluster.local", A)
    # the chain leaves the table: the responder resolves `target` upstream and appends it
    assert out.kind is AnswerKind.SEARCH_CNAME and out.target == "example.org" and not out.authoritative
    assert rdata(out) == ["example.org."]
    only = t.lookup(VA, "ext.a.svc.cluster.local", CNAME)
    assert only.kind is AnswerKind.RECORDS and rdata(only) == ["example.org."] and only.target == ""
    inside = t.lookup(VA, "alias.a.svc.cluster.local", A)
    assert inside.kind is AnswerKind.RECORDS and rdata(inside) == ["web.a.svc.cluster.local.", "10.96.1.10"]
    broken = t.lookup(VA, "broken.a.svc.cluster.local", A)
    assert broken.kind is AnswerKind.NXDOMAIN and rdata(broken) == ["gone.a.svc.cluster.local."]


def test_pod_records_like_coredns_pods_insecure() -> None:
    t = table(Namespace("a"))
    assert rdata(t.lookup(VA, "10-244-1-5.a.pod.cluster.local", A)) == ["10.244.1.5"]
    assert rdata(t.lookup(VA, "fd00--5.a.pod.cluster.local", AAAA)) == ["fd00::5"]
    assert t.lookup(VA, "not-an-ip.a.pod.cluster.local", A).kind is AnswerKind.NXDOMAIN
    # CoreDNS findPods: a namespace that does not exist has no pod names
    assert t.lookup(VA, "10-244-1-5.nons.pod.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert t.lookup(VA, "nons.pod.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert t.lookup(VA, "a.pod.cluster.local", A).records == ()


def test_multiple_addresses_are_shuffled_per_lookup() -> None:
    eps = [Endpoint((f"10.244.0.{i}",)) for i in range(1, 9)]
    t = table(headless("a", "many"), slice_("a", "many", *eps))
    orders = {tuple(rdata(t.lookup(VA, "many.a.svc.cluster.local", A))) for _ in range(30)}
    assert len(orders) > 1 and all(len(o) == 8 for o in orders)


# ------------------------------------------------------------------------------- multicluster ----
def test_multicluster_merge_local_clusterip_first_and_headless_union() -> None:
    t = table(
        svc("a", "reviews", "10.97.0.30", cluster="cluster-2"),
        svc("a", "reviews", "10.96.0.30"),
        svc("a", "ratings", "10.97.0.31", cluster="cluster-2"),
        headless("a", "kafka"),
        headless("a", "kafka", cluster="cluster-2"),
        slice_("a", "kafka", Endpoint(("10.244.1.21",), hostname="kafka-0")),
        slice_("a", "kafka", Endpoint(("10.245.1.21",), hostname="kafka-0"), cluster="cluster-2"),
    )
    for _ in range(5):  # ranked, not shuffled
        assert rdata(t.lookup(VA, "reviews.a.svc.cluster.local", A)) == ["10.96.0.30", "10.97.0.30"]
    assert rdata(t.lookup(VA, "ratings.a.svc.cluster.local", A)) == ["10.97.0.31"]
    assert addrs(t.lookup(VA, "kafka.a.svc.cluster.local", A)) == {"10.244.1.21", "10.245.1.21"}
    assert rdata(t.lookup(VA, "kafka-0.kafka.a.svc.cluster.local", A)) == ["10.244.1.21"]  # see issue 12.8 below
    # a remote cluster's ClusterIP that overlaps a local one: PTR says the local service
    t2 = table(svc("a", "web", "10.96.1.10"), svc("z", "other", "10.96.1.10", cluster="cluster-2"))
    assert rdata(t2.lookup(VA, "10.1.96.10.in-addr.arpa", PTR)) == ["web.a.svc.cluster.local."]


def test_multicluster_pod_names_answer_the_local_pod_and_headless_names_the_local_endpoints_first() -> None:
    """Issue 12.8: a StatefulSet present in two clusters."""
    t = table(
        headless("a", "mysql"),
        headless("a", "mysql", cluster="c2"),
        slice_("a", "mysql", Endpoint(("10.244.1.10",), hostname="mysql-0"),
               Endpoint(("10.244.1.11",), hostname="mysql-1")),
        slice_("a", "mysql", Endpoint(("10.245.1.10",), hostname="mysql-0"),
               Endpoint(("10.245.1.12",), hostname="mysql-2"), Endpoint(("10.245.1.13",), hostname="mysql-3"),
               cluster="c2"),
        headless("a", "solo"),
        slice_("a", "solo", *(Endpoint((f"10.244.2.{i}",)) for i in range(1, 5))),
        svc("a", "one", "10.96.1.1"),
    )
    # One pod per name: the local cluster's (Istio's TestPodNameTableLocalRemoteAddresses), else the
    # remote one (was every cluster's).
    for _ in range(5):
        assert rdata(t.lookup(VA, "mysql-0.mysql.a.svc.cluster.local", A)) == ["10.244.1.10"]
    assert rdata(t.lookup(VA, "mysql-2.mysql.a.svc.cluster.local", A)) == ["10.245.1.12"]
    assert rdata(t.lookup(VA, "mysql-0.mysql.a", A)) == ["10.244.1.10"]  # alternate names alike
    # The Service name: every cluster's endpoints, the local cluster's first; each tier shuffled.
    local, remote = {"10.244.1.10", "10.244.1.11"}, {"10.245.1.10", "10.245.1.12", "10.245.1.13"}
    orders = set()
    for _ in range(40):
        ans = t.lookup(VA, "mysql.a.svc.cluster.local", A)
        got = rdata(ans)
        assert set(got[:2]) == local and set(got[2:]) == remote and ans.ordered
        orders.add(tuple(got))
    assert len(orders) > 1  # shuffled within the tiers
    # One cluster: no order to keep (the cache may rotate it), as for a single-cluster ClusterIP
    assert not t.lookup(VA, "solo.a.svc.cluster.local", A).ordered
    assert not t.lookup(VA, "one.a.svc.cluster.local", A).ordered


# ------------------------------------------------------------------------------- ServiceEntry ----
def test_service_entry_auto_vip_for_a_and_aaaa() -> None:
    t = table(se("a", "istio-io", "istio.io", resolution="DNS"))
    v4, v6 = rdata(t.lookup(VA, "istio.io", A)), rdata(t.lookup(VA, "istio.io", AAAA))
    assert v4[0].startswith("240.240.") and v6[0].startswith("2001:2:")
    assert t.vip_of("istio.io", "b") == (v4[0], v6[0])
    assert t.lookup(VA, "istio.io", TXT).records == ()  # known name, type it lacks: NODATA
    assert t.sizes()["vips"] == 1


def test_service_entry_declared_addresses_cidrs_and_no_vip_cases() -> None:
    t = table(
        se("a", "decl", "decl.example.com", addresses=("192.0.2.7", "198.51.100.0/24", "2001:db8::7/128")),
        se("a", "cidr", "cidr.example.com", addresses=("198.51.100.0/24",)),
        se("a", "rr", "rr.example.com", resolution="DNS_ROUND_ROBIN"),
        se("a", "wild", "*.wild.example.com", resolution="NONE"),
        se("a", "wild-addr", "*.fixed.example.com", addresses=("192.0.2.9",)),
        se("a", "exact", "one.fixed.example.com", addresses=("192.0.2.10",)),
    )
    assert rdata(t.lookup(VA, "decl.example.com", A)) == ["192.0.2.7"]
    assert rdata(t.lookup(VA, "decl.example.com", AAAA)) == ["2001:db8::7"]
    assert t.vip_of("decl.example.com", "a") == ("192.0.2.7", "2001:db8::7")
    assert t.lookup(VA, "cidr.example.com", A).kind is AnswerKind.FORWARD
    assert t.lookup(VA, "rr.example.com", A).kind is AnswerKind.FORWARD  # Istio allocates no VIP
    assert t.lookup(VA, "x.wild.example.com", A).kind is AnswerKind.FORWARD  # wildcard: no VIP
    assert rdata(t.lookup(VA, "a.b.fixed.example.com", A)) == ["192.0.2.9"]
    assert rdata(t.lookup(VA, "one.fixed.example.com", A)) == ["192.0.2.10"]  # exact beats wildcard
    assert t.lookup(VA, "fixed.example.com", A).kind is AnswerKind.FORWARD  # *.x does not match x
    assert t.sizes()["vips"] == 0  # declared addresses, DNS_ROUND_ROBIN and wildcards get no VIP
    assert t.vip_of("rr.example.com", "a") == ()


@pytest.mark.parametrize(
    ("export_to", "sees_a", "sees_b", "sees_node"),
    [
        ((), True, True, True),
        (("*",), True, True, True),
        ((".",), True, False, False),
        (("b",), False, True, False),
        (("b", "."), True, True, False),
        (("~",), False, False, False),
    ],
)
def test_export_to_visibility(export_to: tuple[str, ...], sees_a: bool, sees_b: bool, sees_node: bool) -> None:
    t = table(se("a", "x", "x.example.com", addresses=("192.0.2.1",), export_to=export_to))
    node = View("", (), 1)
    for view, expected in ((VA, sees_a), (VB, sees_b), (node, sees_node)):
        ans = t.lookup(view, "x.example.com", A)
        assert (ans.kind is AnswerKind.RECORDS) is expected
        assert bool(t.vip_of("x.example.com", view.namespace)) is expected


def test_same_host_in_two_namespaces_own_namespace_wins_then_oldest() -> None:
    t = table(
        se("a", "mine", "api.example.com", addresses=("192.0.2.1",), export_to=(".",)),
        se("b", "theirs", "api.example.com", addresses=("192.0.2.2",), creation_timestamp="2024-01-01T00:00:00Z"),
        se("c", "later", "api.example.com", addresses=("192.0.2.3",), creation_timestamp="2024-02-01T00:00:00Z"),
    )
    assert rdata(t.lookup(VA, "api.example.com", A)) == ["192.0.2.1"]
    assert rdata(t.lookup(VB, "api.example.com", A)) == ["192.0.2.2"]
    assert rdata(t.lookup(View("z", (), 5), "api.example.com", A)) == ["192.0.2.2"]


def test_kubernetes_service_wins_over_a_service_entry_for_the_same_name() -> None:
    t = table(svc("a", "web", "10.96.1.10"), se("a", "web-se", "web.a.svc.cluster.local", addresses=("192.0.2.1",)))
    assert rdata(t.lookup(VA, "web.a.svc.cluster.local", A)) == ["10.96.1.10"]
    t2 = table(se("a", "virt", "virt.a.svc.cluster.local", addresses=("192.0.2.1",)))
    assert rdata(t2.lookup(VA, "virt.a.svc.cluster.local", A)) == ["192.0.2.1"]


def test_public_host_with_static_endpoint_is_answered_from_the_table() -> None:
    entry = se("a", "api", "api.example.com", endpoints=(WorkloadEndpoint("10.99.0.7"),))
    t = table(entry)
    assert rdata(t.lookup(VA, "api.example.com", A))[0].startswith("240.240.")  # the VIP, as Istio
    assert t.endpoints_of("api.example.com", "a") == ("10.99.0.7",)
    direct = table(entry, answer_vips=False)
    assert rdata(direct.lookup(VA, "api.example.com", A)) == ["10.99.0.7"]


def test_two_tables_fed_in_different_orders_agree_on_vips() -> None:
    entries = [
        se("ns", f"e{i}", f"h{i}.example.com", creation_timestamp=f"2024-01-01T00:00:{i % 10:02d}Z") for i in range(200)
    ]
    t1, t2 = NameTable(TableSettings()), NameTable(TableSettings())
    t1.replace(Snapshot("s", "Kubernetes", [*entries]))
    shuffled = entries[:]
    random.Random(7).shuffle(shuffled)
    t2.apply(Chg(Key.of(e), e) for e in shuffled)
    assert all(t1.vip_of(e.hosts[0], "ns") == t2.vip_of(e.hosts[0], "ns") for e in entries)


def test_vips_do_not_move_when_other_entries_come_and_go() -> None:
    base = [se("ns", f"e{i}", f"h{i}.example.com", creation_timestamp="2024-01-01T00:00:00Z") for i in range(50)]
    t = table(*base)
    before = {e.hosts[0]: t.vip_of(e.hosts[0], "ns") for e in base}
    newer = [se("ns", f"n{i}", f"n{i}.example.com", creation_timestamp="2024-06-01T00:00:00Z") for i in range(50)]
    t.apply(Chg(Key.of(e), e) for e in newer)
    t.apply(Chg(Key.of(e), None) for e in base[::2])
    for e in base[1::2]:
        assert t.vip_of(e.hosts[0], "ns") == before[e.hosts[0]]


# ------------------------------------------------------------------------------ WorkloadEntry ----
def test_workload_entries_selected_by_service_entry_and_headless_service() -> None:
    vm = WorkloadEntry("a", "vm-1", "10.10.0.5", labels=(("app", "my-vm"),))
    other_ns = WorkloadEntry("b", "vm-2", "10.10.0.6", labels=(("app", "my-vm"),))
    entry = se("a", "my-vm", "my-vm.com", workload_selector=(("app", "my-vm"),))
    t = table(vm, other_ns, entry, headless("a", "vms", selector=(("app", "my-vm"),)), answer_vips=False)
    assert rdata(t.lookup(VA, "my-vm.com", A)) == ["10.10.0.5"]  # same namespace only
    assert rdata(t.lookup(VA, "vms.a.svc.cluster.local", A)) == ["10.10.0.5"]
    moved = WorkloadEntry("a", "vm-1", "10.10.0.9", labels=(("app", "my-vm"),))
    changed = t.apply([Chg(Key.of(moved), moved)])
    assert {"my-vm.com", "vms.a.svc.cluster.local"} <= changed
    assert rdata(t.lookup(VA, "my-vm.com", A)) == ["10.10.0.9"]
    assert rdata(t.lookup(VA, "vms.a.svc.cluster.local", A)) == ["10.10.0.9"]
    with_vip = table(vm, entry)
    assert rdata(with_vip.lookup(VA, "my-vm.com", A))[0].startswith("240.240.")
    assert with_vip.endpoints_of("my-vm.com", "a") == ("10.10.0.5",)


# ------------------------------------------------------------------------------------ views ----
def test_views_follow_dns_policy_and_dns_config() -> None:
    pods = [
        Pod("a", "plain", ("10.0.0.1",)),
        Pod(
            "a",
            "custom",
            ("10.0.0.2",),
            dns_config=DNSConfig(searches=("corp.internal",), options=(("ndots", "2"), ("edns0", ""))),
        ),
        Pod("b", "none", ("10.0.0.3",), dns_policy="None", dns_config=DNSConfig(searches=("x.test",), options=())),
        Pod("b", "dflt", ("10.0.0.4",), dns_policy="Default"),
        Pod("b", "host", ("192.168.0.10",), host_network=True),
        Pod("a", "legacy", ("10.0.0.5",), dns_config=DNSConfig(ndots=3)),  # producer without options
    ]
    t = table(*pods, node_searches=("ec2.internal",), node_ips=("192.168.0.10",))
    cluster_a = ("a.svc.cluster.local", "svc.cluster.local", "cluster.local", "ec2.internal")
    assert t.view_for("10.0.0.1") == View("a", cluster_a, 5)
    assert t.view_for("10.0.0.2") == View("a", cluster_a + ("corp.internal",), 2)
    assert t.view_for("10.0.0.3") == View("b", ("x.test",), 1)
    assert t.view_for("10.0.0.4") == View("b", ("ec2.internal",), 1)
    assert t.view_for("10.0.0.5") == View("a", cluster_a, 3)
    assert t.view_for("192.168.0.10") == View("", ("ec2.internal",), 1)  # the node, not the hostNetwork pod
    assert t.view_for("10.9.9.9") is None
    assert t.pod_for("10.0.0.2").name == "custom"  # type: ignore[union-attr]
    assert t.view_for("10.0.0.1") == t.view_for("10.0.0.1")  # cached and equal: shares cache entries


def test_pod_changes_reach_the_listener_and_update_views() -> None:
    t = table()
    events: list[tuple[Pod | None, Pod | None]] = []
    t.on_pod_change = lambda old, new: events.append((old, new))
    p1 = Pod("a", "p", ("10.0.0.1",), uid="u1")
    t.apply([Chg(Key.of(p1), p1)])
    assert t.view_for("10.0.0.1") is not None
    p2 = Pod("b", "p", ("10.0.0.1",), uid="u2")  # same IP reused by another pod
    t.apply([Chg(Key.of(p1), None), Chg(Key.of(p2), p2)])
    assert events == [(None, p1), (p1, None), (None, p2)]
    assert t.view_for("10.0.0.1").namespace == "b"  # type: ignore[union-attr]
    assert [p.name for p in t.pods()] == ["p"]


# ----------------------------------------------------------------------- server-side search ----
def mesh() -> NameTable:
    return table(
        svc("a", "web", "10.96.1.10"),
        svc("b", "db", "10.96.2.20"),
        se("a", "istio", "istio.io", resolution="DNS"),
        se("b", "only-b", "internal.example.com", addresses=("192.0.2.5",), export_to=(".",)),
        Pod("a", "client", ("10.0.0.1",)),
        node_searches=("corp.example",),
    )


def test_real_names_win_over_search_expansion() -> None:
    t = mesh()
    ans = t.lookup(VA, "web.a.svc.cluster.local", A)
    assert ans.kind is AnswerKind.RECORDS and rdata(ans) == ["10.96.1.10"]


def test_every_search_domain_expands_to_a_table_name() -> None:
    t = mesh()
    for search in VA.searches:
        ans = t.lookup(VA, f"web.a.svc.cluster.local.{search}", A)
        assert ans.kind is AnswerKind.SEARCH_CNAME, search
        assert rdata(ans) == ["web.a.svc.cluster.local.", "10.96.1.10"]
        assert str(ans.records[0].rname) == f"web.a.svc.cluster.local.{search}."
        vip = t.lookup(VA, f"istio.io.{search}", A)
        assert vip.kind is AnswerKind.SEARCH_CNAME and rdata(vip)[0] == "istio.io."
        assert rdata(vip)[1].startswith("240.240.")


def test_external_names_cost_one_round_trip() -> None:
    t = mesh()
    view = t.view_for("10.0.0.1")
    assert view is not None and view.searches[-1] == "corp.example"
    ans = t.lookup(view, "example.org.a.svc.cluster.local", AAAA)
    assert ans.kind is AnswerKind.SEARCH_CNAME and ans.target == "example.org" and not ans.authoritative
    assert rdata(ans) == ["example.org."]
    cname_only = t.lookup(view, "example.org.a.svc.cluster.local", CNAME)
    assert cname_only.target == "" and rdata(cname_only) == ["example.org."]
    # strict setting: the node's own search domain might hold example.org.corp.example
    strict = table(svc("a", "web", "10.96.1.10"), search_past_node_domains=False)
    v = View("a", VA.searches + ("corp.example",), 5)
    assert strict.lookup(v, "example.org.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    # other searches could be literal names: "api.dev.svc.cluster.local" is service api in namespace
    # dev (absent: NXDOMAIN), not the public api.dev
    assert t.lookup(view, "api.dev.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert t.lookup(view, "example.org.cluster.local", A).kind is AnswerKind.NXDOMAIN
    # names under a foreign search domain are not ours to deny
    assert t.lookup(view, "example.org.corp.example", A).kind is AnswerKind.FORWARD


def test_short_names_expand_to_the_next_existing_search_candidate() -> None:
    t = mesh()
    # "db.b" from namespace a: the resolver's next try, db.b.svc.cluster.local, exists
    ans = t.lookup(VA, "db.b.a.svc.cluster.local", A)
    assert ans.kind is AnswerKind.SEARCH_CNAME and rdata(ans) == ["db.b.svc.cluster.local.", "10.96.2.20"]
    # a single label nobody has: NXDOMAIN now, the bare name goes upstream later as normal DNS
    assert t.lookup(VA, "nothing.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert t.lookup(VA, "nothing", A).kind is AnswerKind.FORWARD
    # bare names of another namespace's Service are plain DNS (Istio answers `<svc>` only in its namespace)
    assert t.lookup(VA, "db", A).kind is AnswerKind.FORWARD


def test_expansion_targets_under_the_cluster_domain_that_do_not_exist_are_nxdomain() -> None:
    t = mesh()
    assert t.lookup(VA, "gone.b.svc.cluster.local.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    # a target that exists but lacks the type: the CNAME alone (an alias is one for every type)
    alone = t.lookup(VA, "web.a.svc.cluster.local.a.svc.cluster.local", AAAA)
    assert alone.kind is AnswerKind.SEARCH_CNAME and rdata(alone) == ["web.a.svc.cluster.local."]


def test_search_expansion_respects_visibility_and_sync() -> None:
    t = mesh()
    hidden = t.lookup(VA, "internal.example.com.a.svc.cluster.local", A)
    assert hidden.kind is AnswerKind.SEARCH_CNAME and hidden.target == "internal.example.com"  # upstream
    seen = t.lookup(VB, "internal.example.com.b.svc.cluster.local", A)
    assert rdata(seen) == ["internal.example.com.", "192.0.2.5"]
    t.synced = False
    assert t.lookup(VA, "example.org.a.svc.cluster.local", A).kind is AnswerKind.FORWARD


def test_custom_search_domains_from_dns_config_expand_too() -> None:
    t = table(
        svc("a", "web", "10.96.1.10"),
        Pod("a", "p", ("10.0.0.1",), dns_config=DNSConfig(searches=("svc.cluster.local",), options=())),
        Pod("a", "q", ("10.0.0.2",), dns_policy="None", dns_config=DNSConfig(searches=("a.svc.cluster.local",))),
    )
    q = t.view_for("10.0.0.2")
    assert q is not None
    ans = t.lookup(q, "web.a.svc.cluster.local.a.svc.cluster.local", A)
    assert rdata(ans) == ["web.a.svc.cluster.local.", "10.96.1.10"]


# ----------------------------------------------- issue 12.5: an alias is one for every type ----
def test_search_alias_answers_every_type_cname_alone_when_the_target_lacks_it() -> None:
    t = mesh()
    a = t.lookup(VA, "db.b.a.svc.cluster.local", A)
    aaaa = t.lookup(VA, "db.b.a.svc.cluster.local", AAAA)
    txt = t.lookup(VA, "db.b.a.svc.cluster.local", TXT)
    assert a.kind is AnswerKind.SEARCH_CNAME and rdata(a) == ["db.b.svc.cluster.local.", "10.96.2.20"]
    # was NXDOMAIN: musl asks A and AAAA at once and searches on when either is NXDOMAIN
    for ans in (aaaa, txt):
        assert ans.kind is AnswerKind.SEARCH_CNAME and ans.authoritative and ans.target == ""
        assert rdata(ans) == ["db.b.svc.cluster.local."] and ans.records[0].rtype == CNAME


def test_no_alias_for_any_type_when_a_later_name_may_hold_what_the_target_lacks() -> None:
    # db.b has only A, db.c only AAAA: glibc asking AAAA alone passes db.b (NODATA) and finds db.c,
    # musl stops at db.b. No single answer serves both, so none is given for any type.
    t = table(svc("b", "db", "10.96.2.20"), svc("c", "db", "fd00::20"))
    view = View("a", ("a.svc.cluster.local", "b.svc.cluster.local", "c.svc.cluster.local"), 5)
    assert t.lookup(view, "db.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert t.lookup(view, "db.a.svc.cluster.local", AAAA).kind is AnswerKind.NXDOMAIN
    # the bare single label `b` (a namespace, an empty name) is asked upstream last: unknown, no alias
    m = mesh()
    assert m.lookup(VA, "b.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert m.lookup(VA, "b.a.svc.cluster.local", AAAA).kind is AnswerKind.NXDOMAIN


Reply = tuple[int, int, tuple[str, ...]]  # rcode (0 NOERROR, 3 NXDOMAIN), answer count, addresses


def _ask(t: NameTable, view: View, name: str, qtype: int, upstream: dict[tuple[str, int], tuple[str, ...]]) -> Reply:
    """What a stub sees: table answer, the appended upstream half of a search CNAME, or upstream."""
    ans = t.lookup(view, name, qtype)
    got = tuple(str(r.rdata) for r in ans.records if r.rtype == qtype)
    if ans.kind is AnswerKind.FORWARD or ans.target:
        key = (ans.target or name, qtype)
        known = any(n == key[0] for n, _ in upstream)
        extra = upstream.get(key, ())
        return (0 if known else 3, len(ans.records) + len(extra), got + extra)
    return (3 if ans.kind is AnswerKind.NXDOMAIN else 0, len(ans.records), got)


def _names(view: View, name: str) -> list[str]:
    expanded = [f"{name}.{d}" for d in view.searches]
    return ([name, *expanded] if name.count(".") >= view.ndots else [*expanded, name])


def musl(t: NameTable, view: View, name: str, upstream: dict) -> tuple[tuple[str, ...] | None, int]:
    """src/network/lookup_name.c: A and AAAA per name at once; NXDOMAIN in either -> next name;
    otherwise the search ends here (addresses, or EAI_NODATA = None). Also: names tried."""
    names = _names(view, name)
    for i, n in enumerate(names):
        replies = [_ask(t, view, n, q, upstream) for q in (A, AAAA)]
        if any(r[0] == 3 for r in replies):
            continue
        return tuple(sorted(a for r in replies for a in r[2])) or None, i + 1
    return None, len(names)


def glibc(t: NameTable, view: View, name: str, qtypes: tuple[int, ...], upstream: dict) -> tuple[str, ...] | None:
    """resolv/res_query.c __res_context_search: a name whose answers (A+AAAA sent together for
    AF_UNSPEC) include one NOERROR answer with records ends the search; NXDOMAIN and NODATA go on."""
    for n in _names(view, name):
        replies = [_ask(t, view, n, q, upstream) for q in qtypes]
        if any(r[0] == 0 and r[1] > 0 for r in replies):
            return tuple(sorted(a for r in replies for a in r[2])) or None
    return None


@pytest.mark.parametrize(
    ("base", "musl_tries"),
    [("web", 1), ("db.b", 1), ("db.b.svc", 1), ("v4only.b", 1), ("kafka-0.kafka", 1), ("b", 2), ("example.org", 1),
     ("nothing", 5), ("kafka", 1)],
)
def test_search_shortcut_ends_musl_and_glibc_where_they_would_end_without_it(base: str, musl_tries: int) -> None:
    records: list[Record] = [
        svc("a", "web", "10.96.1.10"),
        svc("b", "db", "10.96.2.20", "fd00::20"),
        svc("b", "v4only", "10.96.2.21"),
        headless("a", "kafka"),
        slice_("a", "kafka", Endpoint(("10.244.1.21",), hostname="kafka-0")),
        Pod("a", "client", ("10.0.0.1",)),
    ]
    t = table(*records, node_searches=("corp.example",))
    upstream = {("example.org", A): ("93.184.216.34",), ("example.org", AAAA): ()}
    view = t.view_for("10.0.0.1")
    assert view is not None
    expansion = "db.b.a.svc.cluster.local"
    assert t.lookup(view, expansion, A).kind is AnswerKind.SEARCH_CNAME
    with without_search_path():
        assert t.lookup(view, expansion, A).kind is AnswerKind.NXDOMAIN  # the patch reaches the table
        plain_musl = musl(t, view, base, upstream)[0]
        plain_glibc = [glibc(t, view, base, qtypes, upstream) for qtypes in ((A,), (AAAA,), (A, AAAA))]
    with_shortcut, tries = musl(t, view, base, upstream)
    assert with_shortcut == plain_musl
    assert tries == musl_tries  # one round trip wherever the shortcut applies (was 2 for db.b: AAAA NXDOMAIN)
    assert [glibc(t, view, base, qtypes, upstream) for qtypes in ((A,), (AAAA,), (A, AAAA))] == plain_glibc


def without_search_path() -> AbstractContextManager[object]:
    """The table without its server-side search path (lookup's call of search.shortcut)."""
    return mock.patch("node_agent.mesh.table.shortcut", return_value=None)


# ------------------------------------------ issue 12.6: what the Kubernetes DNS spec requires ----
def test_dns_version_txt_record() -> None:
    t = table()
    ans = t.lookup(VA, "DNS-Version.cluster.local.", TXT)
    assert ans.kind is AnswerKind.RECORDS and ans.authoritative
    assert rdata(ans) == ['"1.1.0"'] and ans.records[0].ttl == 28800  # spec 2.2 (was NXDOMAIN)
    assert t.lookup(VA, "dns-version.cluster.local", A).kind is AnswerKind.RECORDS  # exists: NODATA
    assert t.lookup(VA, "dns-version.cluster.local", A).records == ()


def test_zone_apex_answers_soa_and_ns_with_the_dns_service_address() -> None:
    t = table(svc("kube-system", "kube-dns", "10.96.0.10", ports=(Port(53, "dns", "UDP"),)))
    soa = t.lookup(VA, "cluster.local", QTYPE.SOA)
    assert soa.kind is AnswerKind.RECORDS and len(soa.records) == 1
    rr = soa.records[0]
    assert str(rr.rname) == "cluster.local." and rr.rtype == QTYPE.SOA
    assert (str(rr.rdata.mname), str(rr.rdata.rname)) == ("ns.dns.cluster.local.", "hostmaster.cluster.local.")
    assert rr.rdata.times[4] == 30  # the minimum: how long a negative answer may be cached
    # the SOA every negative answer under the zone cites is the same record
    assert str(t.soa("nothere.a.svc.cluster.local").rdata) == str(rr.rdata)
    ns = t.lookup(VA, "cluster.local", QTYPE.NS)
    assert rdata(ns) == ["ns.dns.cluster.local."]
    assert [(str(r.rname), str(r.rdata)) for r in ns.additional] == [("ns.dns.cluster.local.", "10.96.0.10")]
    assert rdata(t.lookup(VA, "ns.dns.cluster.local", A)) == ["10.96.0.10"]
    assert t.lookup(VA, "ns.dns.cluster.local", AAAA).records == ()
    assert t.lookup(VA, "cluster.local", A).records == ()  # other types: NODATA
    assert t.lookup(VA, "svc.cluster.local", QTYPE.NS).records == ()  # NS only at the apex
    assert t.lookup(VA, "dns.cluster.local", A).kind is AnswerKind.NXDOMAIN  # as CoreDNS
    moved = svc("kube-system", "kube-dns", "10.96.0.11")
    assert {"cluster.local", "ns.dns.cluster.local"} <= t.apply([Chg(Key.of(moved), moved)])
    assert rdata(t.lookup(VA, "ns.dns.cluster.local", A)) == ["10.96.0.11"]
    set_ips = table(dns_service_ips=("10.96.0.10", "fd00::a"))
    glue = set_ips.lookup(VA, "cluster.local", QTYPE.NS).additional
    assert sorted(str(r.rdata) for r in glue) == ["10.96.0.10", "fd00::a"]


def test_ptr_for_endpoint_ips_of_headless_and_clusterip_services() -> None:
    t = table(
        headless("a", "kafka"),
        slice_("a", "kafka", Endpoint(("10.244.1.21",), hostname="Kafka-0"), Endpoint(("10.244.1.22",)),
               Endpoint(("10.244.1.23",), ready=False, hostname="kafka-2"), Endpoint(("fd00::",))),
        svc("a", "web", "10.96.1.10"),
        slice_("a", "web", Endpoint(("10.244.2.5",)), Endpoint(("10.244.1.21",), hostname="shared")),
        Service("a", "ext", type="ExternalName", external_name="example.org"),
        slice_("a", "ext", Endpoint(("10.244.3.3",))),
    )
    # spec 2.4.3 (a must): a ready endpoint's hostname (was forwarded)
    assert rdata(t.lookup(VA, "22.1.244.10.in-addr.arpa", PTR)) == ["10-244-1-22.kafka.a.svc.cluster.local."]
    # CoreDNS: every Service the IP is an endpoint of, ClusterIP Services too
    assert sorted(rdata(t.lookup(VA, "21.1.244.10.in-addr.arpa", PTR))) == [
        "kafka-0.kafka.a.svc.cluster.local.", "shared.web.a.svc.cluster.local."]
    assert rdata(t.lookup(VA, "5.2.244.10.in-addr.arpa", PTR)) == ["10-244-2-5.web.a.svc.cluster.local."]
    v6 = "0." * 28 + "0.0.d.f.ip6.arpa"
    assert rdata(t.lookup(VA, v6, PTR)) == ["fd00--0.kafka.a.svc.cluster.local."]  # no label ends with "-"
    # and the names they point at resolve (forward-confirmed)
    assert rdata(t.lookup(VA, "10-244-2-5.web.a.svc.cluster.local", A)) == ["10.244.2.5"]
    assert rdata(t.lookup(VA, "fd00--0.kafka.a.svc.cluster.local", AAAA)) == ["fd00::"]
    assert t.lookup(VA, "23.1.244.10.in-addr.arpa", PTR).kind is AnswerKind.FORWARD  # not ready
    assert t.lookup(VA, "3.3.244.10.in-addr.arpa", PTR).kind is AnswerKind.FORWARD  # ExternalName
    assert t.lookup(VA, "1.1.1.10.in-addr.arpa", PTR).kind is AnswerKind.FORWARD
    # the ClusterIP wins over an endpoint with the same address; the local cluster's endpoint wins
    mc = table(svc("a", "web", "10.96.1.10"), slice_("a", "web", Endpoint(("10.244.2.5",))),
               svc("b", "odd", "10.96.9.9"), slice_("b", "odd", Endpoint(("10.96.1.10",))),
               svc("a", "web", "10.97.1.10", cluster="c2"),
               slice_("a", "web", Endpoint(("10.244.2.5",), hostname="remote"), cluster="c2"))
    assert rdata(mc.lookup(VA, "10.1.96.10.in-addr.arpa", PTR)) == ["web.a.svc.cluster.local."]
    assert rdata(mc.lookup(VA, "5.2.244.10.in-addr.arpa", PTR)) == ["10-244-2-5.web.a.svc.cluster.local."]
    # endpoint changes flush the reverse names, also those forwarded before the endpoint came
    late = table(svc("a", "late", "10.96.1.20"))
    assert late.lookup(VA, "7.2.244.10.in-addr.arpa", PTR).kind is AnswerKind.FORWARD
    came = slice_("a", "late", Endpoint(("10.244.2.7",)))
    assert "7.2.244.10.in-addr.arpa" in late.apply([Chg(Key.of(came), came)])
    assert rdata(late.lookup(VA, "7.2.244.10.in-addr.arpa", PTR)) == ["10-244-2-7.late.a.svc.cluster.local."]
    grown = slice_("a", "web", Endpoint(("10.244.2.6",)))
    changed = t.apply([Chg(Key.of(grown), grown)])
    assert {"6.2.244.10.in-addr.arpa", "5.2.244.10.in-addr.arpa"} <= changed
    assert t.lookup(VA, "5.2.244.10.in-addr.arpa", PTR).kind is AnswerKind.FORWARD


def test_headless_service_without_ready_endpoints_is_nxdomain() -> None:
    t = table(headless("a", "hl", ports=(Port(80, "http"),)),
              slice_("a", "hl", Endpoint(("10.244.1.9",), ready=False), ports=(Port(80, "http"),)))
    for q in (A, AAAA, TXT, SRV):
        assert t.lookup(VA, "hl.a.svc.cluster.local", q).kind is AnswerKind.NXDOMAIN, q  # spec 2.4.1
    assert t.lookup(VA, "_http._tcp.hl.a.svc.cluster.local", SRV).kind is AnswerKind.NXDOMAIN
    assert t.lookup(VA, "a.svc.cluster.local", A).records == ()  # the namespace still exists
    ready = slice_("a", "hl", Endpoint(("10.244.1.9",)), ports=(Port(80, "http"),))
    assert "hl.a.svc.cluster.local" in t.apply([Chg(Key.of(ready), ready)])
    assert rdata(t.lookup(VA, "hl.a.svc.cluster.local", A)) == ["10.244.1.9"]
    assert t.lookup(VA, "hl.a.svc.cluster.local", AAAA).kind is AnswerKind.RECORDS  # NODATA now


def test_namespaces_without_services_exist() -> None:
    t = table(Namespace("quiet"), Pod("busy", "p", ("10.0.0.9",)))
    for ns in ("quiet", "busy"):
        ans = t.lookup(VA, f"{ns}.svc.cluster.local", A)
        assert ans.kind is AnswerKind.RECORDS and ans.records == (), ns  # was NXDOMAIN
    assert t.lookup(VA, "nons.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert rdata(t.lookup(VA, "10-244-1-5.quiet.pod.cluster.local", A)) == ["10.244.1.5"]
    gone = Namespace("quiet")
    assert "quiet.svc.cluster.local" in t.apply([Chg(Key.of(gone), None)])
    assert t.lookup(VA, "quiet.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert t.lookup(VA, "10-244-1-5.quiet.pod.cluster.local", A).kind is AnswerKind.NXDOMAIN
    back = Namespace("quiet", cluster="c2")  # a remote cluster's namespace counts too
    assert "quiet.svc.cluster.local" in t.apply([Chg(Key.of(back), back)])
    assert t.lookup(VA, "quiet.svc.cluster.local", A).kind is AnswerKind.RECORDS


# ------------------------------------------------- issue 12.7: Istio's alternate host names ----
NODE_VIEW = View("", ("corp.example",), 1)


def alt_mesh(*extra: Record) -> NameTable:
    return table(
        svc("a", "web", "10.96.1.10"),
        svc("b", "db", "10.96.2.20"),
        headless("a", "kafka"),
        slice_("a", "kafka", Endpoint(("10.244.1.21",), hostname="kafka-0"), Endpoint(("10.244.1.22",))),
        headless("a", "empty"),
        Service("a", "ext", type="ExternalName", external_name="example.org"),
        *extra,
    )


def test_alternate_names_of_kubernetes_services_in_the_askers_view() -> None:
    t = alt_mesh()
    for name in ("web", "web.a", "web.a.svc", "WEB.A.SVC."):
        ans = t.lookup(VA, name, A)
        assert ans.kind is AnswerKind.RECORDS and ans.authoritative and rdata(ans) == ["10.96.1.10"], name
        assert str(ans.records[0].rname) == name.lower().rstrip(".") + "."
    assert t.lookup(VA, "web.a", AAAA).kind is AnswerKind.RECORDS and t.lookup(VA, "web.a", AAAA).records == ()
    # `<svc>` only in the Service's own namespace; `<svc>.<ns>[.svc]` from everywhere, the node too
    assert t.lookup(VA, "db", A).kind is AnswerKind.FORWARD
    assert rdata(t.lookup(VB, "db", A)) == ["10.96.2.20"]
    assert rdata(t.lookup(VA, "db.b", A)) == rdata(t.lookup(NODE_VIEW, "db.b.svc", A)) == ["10.96.2.20"]
    assert t.lookup(NODE_VIEW, "web", A).kind is AnswerKind.FORWARD
    # StatefulSet pod names: hostnames only, not CoreDNS's IP-derived labels
    assert rdata(t.lookup(VA, "kafka-0.kafka", A)) == ["10.244.1.21"]
    assert rdata(t.lookup(VB, "kafka-0.kafka.a", A)) == rdata(t.lookup(VB, "kafka-0.kafka.a.svc", A)) == ["10.244.1.21"]
    assert t.lookup(VB, "kafka-0.kafka", A).kind is AnswerKind.FORWARD
    assert t.lookup(VA, "10-244-1-22.kafka.a", A).kind is AnswerKind.FORWARD
    assert addrs(t.lookup(VA, "kafka.a", A)) == {"10.244.1.21", "10.244.1.22"}
    # Istio's table leaves out what has no address: ExternalName, a headless Service without endpoints
    assert t.lookup(VA, "ext.a", A).kind is AnswerKind.FORWARD
    assert t.lookup(VA, "empty.a", A).kind is AnswerKind.FORWARD
    assert t.lookup(VA, "nothing.a", A).kind is AnswerKind.FORWARD


def test_alternate_names_win_over_real_external_names_and_service_entries() -> None:
    t = alt_mesh(
        svc("com", "example", "10.96.3.30"),  # a namespace "com": example.com is the Service, as in Istio
        se("a", "web-a", "web.a", addresses=("192.0.2.1",)),
        se("a", "wild-a", "*.a", addresses=("192.0.2.2",)),
        se("z", "lone", "lone", addresses=("192.0.2.3",)),
    )
    assert rdata(t.lookup(VB, "example.com", A)) == ["10.96.3.30"]
    assert rdata(t.lookup(VB, "web.a", A)) == ["10.96.1.10"]  # the Kubernetes name, like full names
    assert rdata(t.lookup(VA, "web", A)) == ["10.96.1.10"]
    assert rdata(t.lookup(VA, "other.a", A)) == ["192.0.2.2"]  # no Service: the wildcard entry
    assert rdata(t.lookup(VA, "lone", A)) == ["192.0.2.3"]


def test_alternate_names_are_never_shared_across_views_and_are_flushed_with_their_service() -> None:
    t = alt_mesh()
    for name in ("web", "web.a", "web.a.svc", "kafka-0.kafka", "kafka-0.kafka.a", "kafka-0.kafka.a.svc", "db"):
        assert not t.view_independent(name), name
    for name in ("example.org", "nothing.a", "web.z", "kafka-0.other"):
        assert t.view_independent(name), name
    api = svc("c", "api", "10.96.4.40")
    assert {"api", "api.c", "api.c.svc"} <= t.apply([Chg(Key.of(api), api)])
    assert rdata(t.lookup(VB, "api.c", A)) == ["10.96.4.40"]
    grown = slice_("a", "kafka", Endpoint(("10.244.1.21",), hostname="kafka-0"),
                   Endpoint(("10.244.1.23",), hostname="kafka-1"))
    assert {"kafka-1.kafka", "kafka-1.kafka.a", "kafka-1.kafka.a.svc"} <= t.apply([Chg(Key.of(grown), grown)])
    assert rdata(t.lookup(VB, "kafka-1.kafka.a", A)) == ["10.244.1.23"]
    t.lookup(VB, "api.c.svc", A)
    assert {"api", "api.c", "api.c.svc"} <= t.apply([Chg(Key.of(api), None)])
    assert t.lookup(VB, "api.c.svc", A).kind is AnswerKind.FORWARD  # the compiled alternate name went too
    # a headless Service's alternate names appear with its first ready endpoint
    first = slice_("a", "empty", Endpoint(("10.244.1.30",)))
    assert "empty.a" in t.apply([Chg(Key.of(first), first)])
    assert rdata(t.lookup(VB, "empty.a", A)) == ["10.244.1.30"]


# --------------------------------------------------------------------------------- updates ----
def test_apply_is_incremental_and_reports_touched_names() -> None:
    t = table(svc("a", "web", "10.96.1.10"))
    assert rdata(t.lookup(VA, "web.a.svc.cluster.local", A)) == ["10.96.1.10"]
    new = svc("a", "web", "10.96.1.11")
    changed = t.apply([Chg(Key.of(new), new)])
    assert {"web.a.svc.cluster.local", "10.1.96.10.in-addr.arpa", "11.1.96.10.in-addr.arpa"} <= changed
    assert "db.b.svc.cluster.local" not in changed
    assert rdata(t.lookup(VA, "web.a.svc.cluster.local", A)) == ["10.96.1.11"]
    assert t.lookup(VA, "10.1.96.10.in-addr.arpa", PTR).kind is AnswerKind.FORWARD
    assert t.apply([Chg(Key.of(new), new)]) == set()  # unchanged record: nothing to flush
    t.apply([Chg(Key.of(new), None)])
    assert t.lookup(VA, "web.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert t.lookup(VA, "a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN  # namespace gone


def test_slices_update_endpoints_and_service_entries_report_hosts() -> None:
    t = table(headless("a", "kafka"), slice_("a", "kafka", Endpoint(("10.244.1.21",), hostname="kafka-0")))
    grown = slice_(
        "a", "kafka", Endpoint(("10.244.1.21",), hostname="kafka-0"), Endpoint(("10.244.1.22",), hostname="kafka-1")
    )
    changed = t.apply([Chg(Key.of(grown), grown)])
    assert {"kafka.a.svc.cluster.local", "kafka-1.kafka.a.svc.cluster.local"} <= changed
    assert rdata(t.lookup(VA, "kafka-1.kafka.a.svc.cluster.local", A)) == ["10.244.1.22"]
    entry = se("a", "w", "*.wild.example.com", addresses=("192.0.2.1",))
    assert "*.wild.example.com" in t.apply([Chg(Key.of(entry), entry)])


def test_replace_removes_only_that_sources_records() -> None:
    t = NameTable(TableSettings())
    t.synced = True
    t.replace(Snapshot("static:pods", "Kubernetes", [Pod("a", "p", ("10.0.0.1",))]))
    t.replace(Snapshot("static:mesh", "Kubernetes", [svc("a", "web", "10.96.1.10"), svc("a", "old", "10.96.1.12")]))
    t.replace(Snapshot("k8s", "cluster-2", [svc("a", "reviews", "10.97.0.30", cluster="cluster-2")]))
    changed = t.replace(Snapshot("static:mesh", "Kubernetes", [svc("a", "web", "10.96.1.10")]))
    assert "old.a.svc.cluster.local" in changed and "web.a.svc.cluster.local" not in changed
    assert t.lookup(VA, "old.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert t.view_for("10.0.0.1") is not None
    assert rdata(t.lookup(VA, "reviews.a.svc.cluster.local", A)) == ["10.97.0.30"]
    # a watch event after a resync belongs to that resync's source, so the next resync can drop it
    extra = svc("a", "late", "10.97.0.31", cluster="cluster-2")
    t.apply([Chg(Key.of(extra), extra)])
    t.replace(Snapshot("k8s", "cluster-2", []))
    assert t.lookup(VA, "late.a.svc.cluster.local", A).kind is AnswerKind.NXDOMAIN
    assert t.sizes() == {
        "Pod": 1, "Service": 1, "EndpointSlice": 0, "ServiceEntry": 0, "WorkloadEntry": 0, "Namespace": 0, "vips": 0
    }


def test_vip_change_is_reported_with_reverse_names() -> None:
    t = table()
    entry = se("a", "x", "x.example.com")
    changed = t.apply([Chg(Key.of(entry), entry)])
    v4, v6 = t.vip_of("x.example.com", "a")
    assert "x.example.com" in changed and ".".join(reversed(v4.split("."))) + ".in-addr.arpa" in changed
    rev = ".".join(reversed(v4.split("."))) + ".in-addr.arpa"
    assert rdata(t.lookup(VA, rev, PTR)) == ["x.example.com."]
    assert rev in t.apply([Chg(Key.of(entry), None)])
    assert t.lookup(VA, rev, PTR).kind is AnswerKind.FORWARD


# ----------------------------------------------------------------------------------- scale ----
def scale_records() -> list[Record]:
    recs: list[Record] = []
    for i in range(10_000):
        ns = f"ns{i % 100}"
        hl = i % 10 == 0
        ip = ("None",) if hl else (f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}",)
        recs.append(Service(ns, f"svc{i}", cluster_ips=ip, ports=(Port(80, "http"),)))
        eps = tuple(
            Endpoint(
                (f"10.{244 + (i * 5 + j) // 65536}.{(i * 5 + j) // 256 % 256}.{(i * 5 + j) % 256}",),
                hostname=f"p{j}" if hl else "",
            )
            for j in range(5)
        )
        recs.append(EndpointSlice(ns, f"svc{i}-x", f"svc{i}", eps, (Port(80, "http"),)))
    for i in range(5_000):
        recs.append(
            ServiceEntry(
                f"ns{i % 100}",
                f"se{i}",
                (f"h{i}.example.com",),
                uid=f"u{i}",
                creation_timestamp="2024-01-01T00:00:00Z",
                resolution="DNS",
            )
        )
    return recs


def test_scale_full_replace_and_lookup_speed() -> None:
    recs = scale_records()
    t = NameTable(TableSettings())
    t0 = time.perf_counter()
    t.replace(Snapshot("k8s", "Kubernetes", recs))
    took = time.perf_counter() - t0
    print(f"\nfull replace of 10k services / 50k endpoints / 5k ServiceEntries: {took:.2f} s")
    assert took < 10
    assert t.sizes() == {
        "Pod": 0,
        "Service": 10_000,
        "EndpointSlice": 10_000,
        "ServiceEntry": 5_000,
        "WorkloadEntry": 0,
        "Namespace": 0,
        "vips": 5_000,
    }
    t.synced = True
    view = View("ns1", ("ns1.svc.cluster.local", "svc.cluster.local", "cluster.local"), 5)
    t0 = time.perf_counter()
    for i in range(2_000):
        t.lookup(view, f"svc{i}.ns{i % 100}.svc.cluster.local", A)
    per = (time.perf_counter() - t0) / 2_000
    print(f"lookup: {per * 1e6:.1f} us")
    assert rdata(t.lookup(view, "p3.svc10.ns10.svc.cluster.local", A)) == ["10.244.0.53"]
    assert per < 0.001
    t0 = time.perf_counter()
    t.replace(Snapshot("k8s", "Kubernetes", recs))  # unchanged resync: cheap
    print(f"unchanged resync: {time.perf_counter() - t0:.2f} s")
