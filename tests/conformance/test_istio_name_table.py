"""Istio's DNS proxy cases (istio/istio pkg/dns/server/name_table_test.go: what BuildNameTable puts in a
proxy's table; pkg/dns/client/dns_test.go: how the agent answers from it, TestBuildAlternateHosts and
testDNS), restated with our objects and asked through the whole resolver.

Istio's fixture (fillTable) becomes Kubernetes Services and ServiceEntries: productpage in ns1
(9.9.9.9), example in ns2 (10.10.10.10), www.google.com (1.1.1.1), the *.localhost and wildcard hosts.
The asking pod is in ns1 with ClusterFirst's search list, like the proxy's resolv.conf there. Each
test names the case it restates; "Deviation" marks where we answer differently on purpose (README,
"Deviations from kube-dns and Istio").

Not restated: network isolation (Kubernetes endpoints carry no network in our model), the
cluster.remote and clusterset.local domains (one cluster domain here), multicluster headless off
(ENABLE_MULTICLUSTER_HEADLESS defaults to on), and the UDP/TCP size cases (test_responder, test_wire).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from dnsrig import CLIENT, Rig

from node_agent.mesh.model import (
    Endpoint,
    EndpointSlice,
    Namespace,
    Pod,
    Port,
    Service,
    ServiceEntry,
    WorkloadEntry,
)

Make = Callable[..., Rig]
NS2_POD = "10.244.0.7"
TCP = Port(9000, "tcp-port", "TCP")


def se(ns: str, name: str, *hosts: str, **kw: object) -> ServiceEntry:
    kw.setdefault("resolution", "STATIC")
    return ServiceEntry(ns, name, hosts, uid=f"uid-{name}", **kw)  # type: ignore[arg-type]


def fill_table() -> list:
    """dns_test.go fillTable, as objects."""
    return [
        Namespace("ns1"), Namespace("ns2"),
        Pod("ns1", "client", (CLIENT,)),
        Pod("ns2", "peer", (NS2_POD,)),
        Service("ns1", "productpage", cluster_ips=("9.9.9.9",)),
        Service("ns2", "example", cluster_ips=("10.10.10.10",)),
        se("ns1", "google", "www.google.com", addresses=("1.1.1.1",)),
        se("ns1", "ipv6", "ipv6.localhost", addresses=("2001:db8::ff00:42:8329",)),
        se("ns1", "dual", "dual.localhost", addresses=("2.2.2.2", "2001:db8::ff00:42:8329")),
        se("ns1", "ipv4", "ipv4.localhost", addresses=("2.2.2.2",)),
        se("ns1", "wild-b", "*.b.wildcard", addresses=("11.11.11.11",)),
        se("ns1", "wild", "*.wildcard", addresses=("10.10.10.10",)),
        se("ns1", "mesh", "*.svc.mesh.company.net", addresses=("10.1.2.3",)),
        se("ns1", "dotted", "example.localhost.", addresses=("3.3.3.3",)),
    ]


@pytest.fixture
def rig(dns: Make) -> Rig:
    return dns(fill_table(), zone={"www.bing.com": [("A", "204.79.197.200")]})


# ------------------------------------------------------------------------------ dns_test testDNS ----
def test_non_k8s_host_in_the_table(rig: Rig) -> None:
    """testDNS: success: non k8s host in local cache."""
    r = rig.ask("www.google.com.")
    assert (r.rcode, r.aa, r.answer) == ("NOERROR", True, [("www.google.com.", "A", "1.1.1.1")])


def test_non_k8s_host_with_search_namespace_yields_cname_and_a(rig: Rig) -> None:
    """testDNS: success: non k8s host with search namespace yields cname+A record."""
    r = rig.ask("www.google.com.ns1.svc.cluster.local.")
    assert r.answer == [("www.google.com.ns1.svc.cluster.local.", "CNAME", "www.google.com."),
                        ("www.google.com.", "A", "1.1.1.1")]
    assert rig.forwarded() == []


def test_non_k8s_host_not_in_the_table_goes_upstream(rig: Rig) -> None:
    """testDNS: success: non k8s host not in local cache."""
    assert rig.ask("www.bing.com.").rdata("A") == ["204.79.197.200"]
    assert rig.forwarded() == ["www.bing.com"]


def test_k8s_host_fqdn_name_namespace_and_shortname(rig: Rig) -> None:
    """testDNS: success: k8s host - fqdn; - name.namespace; - shortname."""
    for name in ("productpage.ns1.svc.cluster.local.", "productpage.ns1.", "productpage."):
        r = rig.ask(name)
        assert (r.rcode, r.aa, r.answer) == ("NOERROR", True, [(name, "A", "9.9.9.9")]), name
    assert rig.forwarded() == []


def test_k8s_fqdn_with_the_first_search_domain_appended(rig: Rig) -> None:
    """testDNS: not found: k8s host, fqdn with search namespace[0] (Istio forwards it; kube-dns says
    NXDOMAIN). Deviation (server-side search path): CNAME to the name the pod's resolver would try
    next and find, with its records."""
    r = rig.ask("productpage.ns1.svc.cluster.local.ns1.svc.cluster.local.")
    assert r.rcode == "NOERROR"
    assert r.answer == [("productpage.ns1.svc.cluster.local.ns1.svc.cluster.local.", "CNAME",
                         "productpage.ns1.svc.cluster.local."),
                        ("productpage.ns1.svc.cluster.local.", "A", "9.9.9.9")]
    assert rig.forwarded() == []


def test_name_namespace_with_search_namespace_yields_cname_and_a(rig: Rig) -> None:
    """testDNS: success: k8s host (name.namespace) with search namespace yields cname+A record.
    Deviation: the CNAME points at productpage.ns1.svc.cluster.local (the pod's next search try)
    where Istio's points at productpage.ns1; the addresses are the same."""
    r = rig.ask("productpage.ns1.ns1.svc.cluster.local.")
    assert r.answer == [("productpage.ns1.ns1.svc.cluster.local.", "CNAME", "productpage.ns1.svc.cluster.local."),
                        ("productpage.ns1.svc.cluster.local.", "A", "9.9.9.9")]


def test_aaaa_for_an_ipv4_k8s_host_with_search_namespace(rig: Rig) -> None:
    """testDNS: success: AAAA query for IPv4 k8s host (name.namespace) with search namespace: Istio
    answers NOERROR with no records at all. Deviation: NOERROR with the CNAME alone, the same alias
    as for A (RFC 1034 3.6.2; issue 12.5)."""
    r = rig.ask("productpage.ns1.ns1.svc.cluster.local.", "AAAA")
    assert r.rcode == "NOERROR"
    assert r.answer == [("productpage.ns1.ns1.svc.cluster.local.", "CNAME", "productpage.ns1.svc.cluster.local.")]


def test_k8s_host_of_another_namespace(rig: Rig) -> None:
    """testDNS: success: k8s host - non local namespace - name.namespace / fqdn / name.namespace.svc;
    failure: k8s host - non local namespace - shortname (NXDOMAIN: forwarded, kube-dns lacks it)."""
    for name in ("example.ns2.", "example.ns2.svc.cluster.local.", "example.ns2.svc."):
        assert rig.ask(name).answer == [(name, "A", "10.10.10.10")], name
    assert rig.forwarded() == []
    assert rig.ask("example.").rcode == "NXDOMAIN"
    assert rig.forwarded() == ["example"]
    # ... and the short name is the Service's in its own namespace
    assert rig.ask("example.", src=NS2_POD).rdata("A") == ["10.10.10.10"]


def test_only_the_asked_family(rig: Rig) -> None:
    """testDNS: success: TypeA query returns A records only; TypeAAAA query returns AAAA records only;
    Error response if only AAAA records exist for typeA (NOERROR, empty); ... only A for typeAAAA."""
    assert rig.ask("dual.localhost.").answer == [("dual.localhost.", "A", "2.2.2.2")]
    assert rig.ask("dual.localhost.", "AAAA").answer == [("dual.localhost.", "AAAA", "2001:db8::ff00:42:8329")]
    for name, qtype in (("ipv6.localhost.", "A"), ("ipv4.localhost.", "AAAA")):
        r = rig.ask(name, qtype)
        assert (r.rcode, r.aa, r.answer) == ("NOERROR", True, []), name
    assert rig.forwarded() == []


def test_wildcards(rig: Rig) -> None:
    """testDNS: success: wild card returns A record correctly; specific wild card ...; wild card with
    domain ...; wild card with namespace with domain ..."""
    assert rig.ask("foo.wildcard.").answer == [("foo.wildcard.", "A", "10.10.10.10")]
    assert rig.ask("a.b.wildcard.").answer == [("a.b.wildcard.", "A", "11.11.11.11")]
    assert rig.ask("foo.svc.mesh.company.net.").rdata("A") == ["10.1.2.3"]
    assert rig.ask("foo.foons.svc.mesh.company.net.").rdata("A") == ["10.1.2.3"]


def test_wildcards_with_search_namespace(rig: Rig) -> None:
    """testDNS: success: wild card with search namespace chained pointer correctly; wild card with
    search domain returns A record correctly. Deviation: Istio's CNAME target is the literal owner
    *.wildcard.; ours is the name that matched it, foo.wildcard., with its A record."""
    r = rig.ask("foo.wildcard.ns1.svc.cluster.local.")
    assert r.answer == [("foo.wildcard.ns1.svc.cluster.local.", "CNAME", "foo.wildcard."),
                        ("foo.wildcard.", "A", "10.10.10.10")]
    r = rig.ask("foo.svc.mesh.company.net.ns1.svc.cluster.local.")
    assert r.answer == [("foo.svc.mesh.company.net.ns1.svc.cluster.local.", "CNAME", "foo.svc.mesh.company.net."),
                        ("foo.svc.mesh.company.net.", "A", "10.1.2.3")]


def test_hostname_with_a_period(rig: Rig) -> None:
    """testDNS: success: hostname with a period (a ServiceEntry host written with its final dot)."""
    assert rig.ask("example.localhost.").answer == [("example.localhost.", "A", "3.3.3.3")]


# ------------------------------------------------------------------ dns_test TestBuildAlternateHosts ----
def test_alternate_hosts(rig: Rig) -> None:
    """TestBuildAlternateHosts: productpage (ns1, the proxy's): productpage., productpage.ns1.,
    productpage.ns1.svc., the FQDN; example (ns2): example.ns2., example.ns2.svc., the FQDN, not
    example.; www.google.com (not Kubernetes): only itself."""
    for name in ("productpage.", "productpage.ns1.", "productpage.ns1.svc.", "productpage.ns1.svc.cluster.local."):
        assert rig.ask(name).rdata("A") == ["9.9.9.9"], name
    for name in ("example.ns2.", "example.ns2.svc.", "example.ns2.svc.cluster.local."):
        assert rig.ask(name).rdata("A") == ["10.10.10.10"], name
    assert rig.forwarded() == []
    for name in ("example.", "productpage.ns1.svc.cluster.", "www.google.com.ns1.", "www.google."):
        rig.ask(name)
    assert rig.forwarded() == ["example", "productpage.ns1.svc.cluster", "www.google.com.ns1", "www.google"]


def test_alternate_names_are_per_view_and_not_shared(rig: Rig) -> None:
    """generateAltHosts is per proxy (its namespace): the cache must keep `productpage.` per view."""
    assert rig.ask("productpage.").rdata("A") == ["9.9.9.9"]
    assert rig.ask("productpage.", src=NS2_POD).rcode == "NXDOMAIN"  # forwarded for ns2's pod
    assert rig.forwarded() == ["productpage"]
    assert not rig.table.view_independent("productpage")


# --------------------------------------------------------------------- name_table_test TestNameTable ----
def headless_records(clusters: dict[str, str] | None = None, unready: frozenset[str] = frozenset(),
                     only: tuple[str, ...] = ("pod1", "pod2", "pod3", "pod4"), **svc_kw: object) -> list:
    """name_table_test headlessService with pod1..pod4 (1.2.3.4, 9.6.7.8, 19.6.7.8, 9.16.7.8), each pod
    in the cluster `clusters` says (default the local one), the `unready` ones not ready."""
    pods = {"pod1": "1.2.3.4", "pod2": "9.6.7.8", "pod3": "19.6.7.8", "pod4": "9.16.7.8"}
    clusters = clusters or {}
    out: list = [Namespace("testns"), Pod("testns", "client", (CLIENT,))]
    for cluster in sorted(set(clusters.values()) | {"Kubernetes"}):
        out.append(Service("testns", "headless-svc", cluster_ips=("None",), ports=(TCP,), cluster=cluster,
                           **svc_kw))  # type: ignore[arg-type]
    for pod in only:
        ip = pods[pod]
        ep = Endpoint((ip,), hostname=pod, ready=pod not in unready)
        out.append(EndpointSlice("testns", f"headless-svc-{pod}", "headless-svc", (ep,), (TCP,),
                                 cluster=clusters.get(pod, "Kubernetes")))
    return out


def test_headless_service_pods(dns: Make) -> None:
    """TestNameTable: headless service pods."""
    rig = dns(headless_records())
    for pod, ip in (("pod1", "1.2.3.4"), ("pod2", "9.6.7.8"), ("pod3", "19.6.7.8"), ("pod4", "9.16.7.8")):
        assert rig.ask(f"{pod}.headless-svc.testns.svc.cluster.local.").rdata("A") == [ip]
        assert rig.ask(f"{pod}.headless-svc.").rdata("A") == [ip]  # Shortname pod.headless-svc
    assert sorted(rig.ask("headless-svc.testns.svc.cluster.local.").rdata("A")) == sorted(
        ["1.2.3.4", "9.6.7.8", "19.6.7.8", "9.16.7.8"])


def test_multi_cluster_headless_service_pods(dns: Make) -> None:
    """TestNameTable: multi cluster headless service pods with multi cluster enabled (pod2 in cl2):
    every cluster's pod names, and the Service name answers all endpoints; the local cluster's first
    (ours, issue 12.8)."""
    rig = dns(headless_records({"pod2": "cl2"}))
    assert rig.ask("pod2.headless-svc.testns.svc.cluster.local.").rdata("A") == ["9.6.7.8"]
    got = rig.ask("headless-svc.testns.svc.cluster.local.").rdata("A")
    assert sorted(got[:3]) == sorted(["1.2.3.4", "19.6.7.8", "9.16.7.8"]) and got[3] == "9.6.7.8"


def test_headless_service_with_unhealthy_pods(dns: Make) -> None:
    """TestNameTable: headless service with unhealthy pods; publish unready headless service with
    unhealthy pods."""
    unready, only = frozenset({"pod2", "pod3"}), ("pod1", "pod2", "pod3")  # uhpush: pod2 unhealthy, pod3 terminating
    rig = dns(headless_records(unready=unready, only=only))
    assert rig.ask("headless-svc.testns.svc.cluster.local.").rdata("A") == ["1.2.3.4"]
    assert rig.ask("pod2.headless-svc.testns.svc.cluster.local.").rcode == "NXDOMAIN"
    published = dns(headless_records(unready=unready, only=only, publish_not_ready=True))
    assert sorted(published.ask("headless-svc.testns.svc.cluster.local.").rdata("A")) == sorted(
        ["1.2.3.4", "9.6.7.8", "19.6.7.8"])
    assert published.ask("pod2.headless-svc.").rdata("A") == ["9.6.7.8"]


def test_wildcard_and_cidr_services(dns: Make) -> None:
    """TestNameTable: wildcard service pods (a wildcard host with an address answers under it); cidr
    service (a CIDR address is no answer: not in the table, so forwarded)."""
    rig = dns([Pod("testns", "client", (CLIENT,)),
               se("testns", "wildcard-svc", "*.wild.example.com", addresses=("172.10.10.10",)),
               se("testns", "cidr-svc", "*.cidr.example.com", addresses=("172.217.0.0/16",))])
    assert rig.ask("x.wild.example.com.").rdata("A") == ["172.10.10.10"]
    assert rig.ask("x.cidr.example.com.").rcode == "NXDOMAIN"
    assert rig.forwarded() == ["x.cidr.example.com"]


def test_service_entry_with_resolution_none(dns: Make) -> None:
    """TestNameTable: service entry with resolution = NONE (workloadSelector: the selected workloads'
    addresses). Deviation: we answer the entry's auto-allocated VIP, which the kernel translates to
    those workloads (as Istio does with DNS auto-allocation on); with answer_vips off, a NONE entry
    without addresses is forwarded (Istio answers the workload addresses)."""
    objs = [Pod("testns", "client", (CLIENT,)),
            se("testns", "foo", "foo.bar.com", resolution="NONE", ports=(TCP,),
               workload_selector=(("wl", "headless-foobar"),)),
            *(WorkloadEntry("testns", f"w{i}", ip, labels=(("wl", "headless-foobar"),))
              for i, ip in enumerate(("1.2.3.4", "9.6.7.8")))]
    vip = dns(objs).ask("foo.bar.com.").rdata("A")
    assert len(vip) == 1 and vip[0].startswith("240.240.")
    assert dns(objs, answer_vips=False).ask("foo.bar.com.").rcode == "NXDOMAIN"  # forwarded


def test_dual_stack_service_entry(dns: Make) -> None:
    """TestNameTable: dual stack (a ServiceEntry with an IPv6 and an IPv4 address)."""
    rig = dns([Pod("testns", "client", (CLIENT,)),
               se("testns", "dual", "dual.foo.bar", addresses=("2001:2::", "10.0.0.8"))])
    assert rig.ask("dual.foo.bar.").rdata("A") == ["10.0.0.8"]
    assert rig.ask("dual.foo.bar.", "AAAA").rdata("AAAA") == ["2001:2::"]


def test_service_entries_with_several_vips_for_one_host(dns: Make) -> None:
    """TestNameTable: service entry with multiple VIPs (two entries, one host: Istio merges the
    addresses). Deviation: one entry answers per host and asker, its own namespace's first, then the
    oldest (Istio's choice for routing); merged addresses would mix the VIPs of unrelated entries."""
    rig = dns([Pod("testns", "client", (CLIENT,)),
               se("other", "vip1", "mysql.foo.bar", addresses=("10.0.0.5",), creation_timestamp="2024-01-01T00:00:00Z"),
               se("other", "vip2", "mysql.foo.bar", addresses=("10.0.0.6",),
                  creation_timestamp="2024-02-01T00:00:00Z")])
    assert rig.ask("mysql.foo.bar.").rdata("A") == ["10.0.0.5"]


def test_service_entry_as_a_decorator_of_a_kubernetes_service(dns: Make) -> None:
    """TestNameTable: service entry as a decorator (created before / after the k8s service): the
    Kubernetes Service's address wins."""
    for order in (1, -1):
        objs = [Pod("testns", "client", (CLIENT,)), Service("testns", "mysql", cluster_ips=("10.0.0.7",)),
                se("testns", "deco", "mysql.testns.svc.cluster.local", addresses=("10.0.0.5",))][::order]
        assert dns(objs).ask("mysql.testns.svc.cluster.local.").rdata("A") == ["10.0.0.7"]


def test_multi_port_headless_service_split_endpoint_slices(dns: Make) -> None:
    """TestMultiPortHeadlessServiceSplitEndpointSlices: pods that serve different ports (slices per
    port set) all get names, for the local cluster and a remote one."""
    ports = (Port(9090, "tcp-ctrlplane"), Port(9091, "tcp-replication"), Port(8443, "tcp-kafkaagent"))
    for cluster in ("Kubernetes", "cluster2"):
        objs = [Pod("kafka", "client", (CLIENT,)), Namespace("kafka"),
                Service("kafka", "kafka-brokers", cluster_ips=("None",), ports=ports, cluster=cluster),
                EndpointSlice("kafka", "kb-1", "kafka-brokers", (Endpoint(("10.0.1.1",), hostname="controller-0"),),
                              (ports[0], ports[2]), cluster=cluster),
                EndpointSlice("kafka", "kb-2", "kafka-brokers", (Endpoint(("10.0.2.1",), hostname="kafka-0"),),
                              (ports[1], ports[2]), cluster=cluster)]
        rig = dns(objs)
        assert rig.ask("kafka-0.kafka-brokers.kafka.svc.cluster.local.").rdata("A") == ["10.0.2.1"], cluster
        assert rig.ask("controller-0.kafka-brokers.kafka.svc.cluster.local.").rdata("A") == ["10.0.1.1"], cluster


@pytest.mark.parametrize(
    ("instances", "expected"),
    [
        ([("10.0.0.1", "Kubernetes"), ("10.0.0.2", "Kubernetes")], ["10.0.0.1", "10.0.0.2"]),
        ([("10.0.0.3", "cluster2"), ("10.0.0.4", "cluster2")], ["10.0.0.3", "10.0.0.4"]),
        ([("10.0.0.1", "Kubernetes"), ("10.0.0.2", "cluster2")], ["10.0.0.1"]),
        ([("10.0.0.1", "Kubernetes"), ("10.0.0.2", "Kubernetes"), ("10.0.0.3", "cluster2"), ("10.0.0.4", "cluster2")],
         ["10.0.0.1", "10.0.0.2"]),
    ],
    ids=["cumulative local", "cumulative remote", "local preferred over remote", "multiple local over remote"],
)
def test_pod_name_local_and_remote_addresses(dns: Make, instances: list[tuple[str, str]], expected: list[str]) -> None:
    """TestPodNameTableLocalRemoteAddresses: mysql-0 in one or two clusters."""
    objs: list = [Pod("testns", "client", (CLIENT,)), Namespace("testns")]
    for cluster in sorted({c for _, c in instances}):
        objs.append(Service("testns", "headless-svc", cluster_ips=("None",), ports=(TCP,), cluster=cluster))
    for i, (ip, cluster) in enumerate(instances):
        objs.append(EndpointSlice("testns", f"s{i}", "headless-svc", (Endpoint((ip,), hostname="mysql-0"),), (TCP,),
                                  cluster=cluster))
    rig = dns(objs)
    assert sorted(rig.ask("mysql-0.headless-svc.testns.svc.cluster.local.").rdata("A")) == expected
