"""CoreDNS's kubernetes plugin test tables (coredns/coredns plugin/kubernetes: handler_test.go,
kubernetes_apex_test.go, reverse_test.go, ns_test.go, handler_pod_insecure_test.go), restated with our
own objects and asked through the whole resolver.

Each case names the CoreDNS case it restates ("handler_test commonDnsTestCases: AAAA Service (with an
existing A record, but no AAAA record)"). CoreDNS's fixture namespace testns is `shop` here, svc1 is
`cart`, svcempty `idle`, svc6 `cart6`, hdls1 `stock`, hdlsprtls `portless`, external `outside`,
external-to-service `inside`, svc-dual-stack `both`. Where we answer differently on purpose the test
asserts our answer and says "Deviation" (README, "Deviations from kube-dns and Istio").
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from dnsrig import CLIENT, Rig

from node_agent.mesh.model import Endpoint, EndpointSlice, Namespace, Pod, Port, Service

Make = Callable[..., Rig]
OTHER = "10.244.0.6"  # a pod in namespace tools: the search path of shop's pods does not apply
HTTP = Port(80, "http", "TCP")


def objects() -> list:
    return [
        Namespace("shop"),
        Namespace("kube-system"),
        Pod("shop", "client", (CLIENT,)),
        Pod("tools", "other", (OTHER,)),
        Service("kube-system", "kube-dns", cluster_ips=("10.0.0.10",), ports=(Port(53, "dns", "UDP"),)),
        Service("shop", "cart", cluster_ips=("10.0.1.1",), ports=(HTTP,)),
        EndpointSlice("shop", "cart-1", "cart", (Endpoint(("172.16.0.1",), hostname="cart-a"),), (HTTP,)),
        Service("shop", "idle", cluster_ips=("10.0.1.2",), ports=(HTTP,)),
        EndpointSlice("shop", "idle-1", "idle", (), (HTTP,)),
        Service("shop", "cart6", cluster_ips=("fd00:1::1",), ports=(HTTP,)),
        Service("shop", "stock", cluster_ips=("None",)),
        EndpointSlice("shop", "stock-1", "stock", (
            Endpoint(("172.16.1.2",)), Endpoint(("172.16.1.3",)),
            Endpoint(("172.16.1.4",), hostname="twin"), Endpoint(("172.16.1.5",), hostname="twin"),
        ), (HTTP,)),
        EndpointSlice("shop", "stock-2", "stock", (Endpoint(("fd00:2::1",)), Endpoint(("fd00:2::2",))), (HTTP,),
                      address_type="IPv6"),
        Service("shop", "portless", cluster_ips=("None",)),
        EndpointSlice("shop", "portless-1", "portless", (Endpoint(("172.16.2.20",)),)),
        Service("shop", "outside", type="ExternalName", external_name="ext.example.net", ports=(HTTP,)),
        Service("shop", "inside", type="ExternalName", external_name="cart.shop.svc.cluster.local.", ports=(HTTP,)),
        Service("shop", "both", cluster_ips=("10.0.1.3", "fd00:1::3"), ports=(HTTP,)),
        # reverse_test: an address two Services select, and an address in two slices of one Service
        Service("shop", "left", cluster_ips=("10.0.1.4",), ports=(HTTP,)),
        EndpointSlice("shop", "left-1", "left", (Endpoint(("172.16.3.99",), hostname="shared"),
                                                 Endpoint(("172.16.3.100",), hostname="skew")), (HTTP,)),
        EndpointSlice("shop", "left-2", "left", (Endpoint(("172.16.3.100",), hostname="skew"),), (HTTP,)),
        Service("shop", "right", cluster_ips=("10.0.1.5",), ports=(HTTP,)),
        EndpointSlice("shop", "right-1", "right", (Endpoint(("172.16.3.99",), hostname="shared"),), (HTTP,)),
    ]


ZONE = {"ext.example.net": [("A", "192.0.2.34")]}


@pytest.fixture
def rig(dns: Make) -> Rig:
    return dns(objects(), zone=ZONE)


def nodata(r, soa: str = "cluster.local.") -> bool:  # noqa: ANN001
    return r.rcode == "NOERROR" and r.answer == [] and r.negative_soa == soa


def nxdomain(r, soa: str = "cluster.local.") -> bool:  # noqa: ANN001
    return r.rcode == "NXDOMAIN" and r.answer == [] and r.negative_soa == soa


# ------------------------------------------------------------- handler_test commonDnsTestCases ----
def test_a_service(rig: Rig) -> None:
    """handler_test commonDnsTestCases: A Service."""
    r = rig.ask("cart.shop.svc.cluster.local.")
    assert (r.rcode, r.aa, r.answer) == ("NOERROR", True, [("cart.shop.svc.cluster.local.", "A", "10.0.1.1")])


def test_a_service_without_endpoints_still_answers(rig: Rig) -> None:
    """handler_test commonDnsTestCases: A Service (svcempty): a ClusterIP without endpoints."""
    assert rig.ask("idle.shop.svc.cluster.local.").rdata("A") == ["10.0.1.2"]


def test_srv_for_the_bare_service_name(rig: Rig) -> None:
    """handler_test commonDnsTestCases: svc1/svcempty/svc6 SRV (no _port._proto labels)."""
    for name in ("cart", "idle", "cart6"):
        r = rig.ask(f"{name}.shop.svc.cluster.local.", "SRV")
        assert r.answer == [(f"{name}.shop.svc.cluster.local.", "SRV", f"0 100 80 {name}.shop.svc.cluster.local.")]
        # Deviation: CoreDNS puts the target's A/AAAA in Additional; we do not (the spec's "may")
        assert r.additional == []


def test_srv_for_a_named_port(rig: Rig) -> None:
    """handler_test commonDnsTestCases: SRV Service (_http._tcp.svc1, _http._tcp.svcempty, svc6)."""
    for name in ("cart", "idle", "cart6"):
        r = rig.ask(f"_http._tcp.{name}.shop.svc.cluster.local.", "SRV")
        assert r.rdata("SRV") == [f"0 100 80 {name}.shop.svc.cluster.local."], name


def test_a_headless_service_and_a_portless_one(rig: Rig) -> None:
    """handler_test commonDnsTestCases: A Service (Headless); A Service (Headless and Portless)."""
    assert sorted(rig.ask("stock.shop.svc.cluster.local.").rdata("A")) == [
        "172.16.1.2", "172.16.1.3", "172.16.1.4", "172.16.1.5"]
    assert rig.ask("portless.shop.svc.cluster.local.").rdata("A") == ["172.16.2.20"]


def test_aaaa_of_a_service_with_only_an_a_record_is_nodata(rig: Rig) -> None:
    """handler_test commonDnsTestCases: AAAA Service (with an existing A record, but no AAAA record)."""
    assert nodata(rig.ask("cart.shop.svc.cluster.local.", "AAAA"))


def test_names_that_do_not_exist_are_nxdomain(rig: Rig) -> None:
    """handler_test commonDnsTestCases: AAAA/A Service (non-existing service), A Service
    (non-existing namespace), A Service (Headless) does not exist, A Service does not exist."""
    for name, qtype in (("nope.shop.svc.cluster.local.", "AAAA"), ("nope.shop.svc.cluster.local.", "A"),
                        ("nope.nons.svc.cluster.local.", "A"), ("bogus.stock.shop.svc.cluster.local.", "A"),
                        ("bogus.nope.shop.svc.cluster.local.", "A")):
        assert nxdomain(rig.ask(name, qtype, src=OTHER)), (name, qtype)
    assert rig.forwarded() == []
    # Deviation (server-side search path): a pod of shop asking bogus.nope.shop.svc.cluster.local is
    # taken to search for bogus.nope, which its resolver asks next as it is: CNAME to it, and kube-dns's
    # answer for it (NXDOMAIN here) with kube-dns's rcode.
    own = rig.ask("bogus.nope.shop.svc.cluster.local.")
    assert own.rcode == "NXDOMAIN" and own.answer == [("bogus.nope.shop.svc.cluster.local.", "CNAME", "bogus.nope.")]
    assert rig.forwarded() == ["bogus.nope"]


def test_txt_schema_version_and_txt_of_other_names(rig: Rig) -> None:
    """handler_test commonDnsTestCases: TXT Schema; A TXT record does not exist but another record
    for the same FQDN does; ... and neither does another record for the same FQDN."""
    assert rig.ask("dns-version.cluster.local.", "TXT").answer == [("dns-version.cluster.local.", "TXT", '"1.1.0"')]
    assert nodata(rig.ask("cart.shop.svc.cluster.local.", "TXT"))
    assert nxdomain(rig.ask("nope.nons.svc.cluster.local.", "TXT"))


def test_aaaa_and_srv_of_an_ipv6_service(rig: Rig) -> None:
    """handler_test commonDnsTestCases: AAAA Service; SRV (_http._tcp.svc6)."""
    assert rig.ask("cart6.shop.svc.cluster.local.", "AAAA").answer == [
        ("cart6.shop.svc.cluster.local.", "AAAA", "fd00:1::1")]
    assert rig.ask("_http._tcp.cart6.shop.svc.cluster.local.", "SRV").rdata("SRV") == [
        "0 100 80 cart6.shop.svc.cluster.local."]


def test_aaaa_of_a_headless_service(rig: Rig) -> None:
    """handler_test commonDnsTestCases: AAAA Service (Headless)."""
    assert sorted(rig.ask("stock.shop.svc.cluster.local.", "AAAA").rdata("AAAA")) == ["fd00:2::1", "fd00:2::2"]


def test_empty_non_terminals_are_nodata(rig: Rig) -> None:
    """handler_test commonDnsTestCases: svc.cluster.local A, pod.cluster.local A, testns.svc.cluster.local A."""
    for name in ("svc.cluster.local.", "pod.cluster.local.", "shop.svc.cluster.local."):
        assert nodata(rig.ask(name)), name


def test_ns_queries_below_the_apex(rig: Rig) -> None:
    """handler_test commonDnsTestCases: NS query for qname != zone (existing / non existing domain)."""
    assert nodata(rig.ask("svc.cluster.local.", "NS"))
    assert nodata(rig.ask("shop.svc.cluster.local.", "NS"))
    assert nxdomain(rig.ask("foo.cluster.local.", "NS"))
    assert nxdomain(rig.ask("foo.svc.cluster.local.", "NS"))


def test_dual_stack_service(rig: Rig) -> None:
    """handler_test commonDnsTestCases: Dual Stack ClusterIP Services (A, AAAA, SRV)."""
    assert rig.ask("both.shop.svc.cluster.local.").rdata("A") == ["10.0.1.3"]
    assert rig.ask("both.shop.svc.cluster.local.", "AAAA").rdata("AAAA") == ["fd00:1::3"]
    # Deviation: CoreDNS's weight is 50 for the two address records behind one target; ours is 100
    assert rig.ask("both.shop.svc.cluster.local.", "SRV").rdata("SRV") == ["0 100 80 both.shop.svc.cluster.local."]


def test_soa_of_a_service_name_is_nodata(rig: Rig) -> None:
    """handler_test commonDnsTestCases: svc1 SOA."""
    assert nodata(rig.ask("cart.shop.svc.cluster.local.", "SOA"))


def test_subdomains_of_an_external_service_do_not_exist(rig: Rig) -> None:
    """handler_test commonDnsTestCases: A query for a subdomain (of a subdomain) of an external service."""
    assert nxdomain(rig.ask("endpoint.outside.shop.svc.cluster.local.", "CNAME"))
    assert nxdomain(rig.ask("sub.sub.outside.shop.svc.cluster.local.", "CNAME"))


# ------------------------------------------------------------------- handler_test dnsTestCases ----
def test_srv_of_a_headless_service_names_each_endpoint(rig: Rig) -> None:
    """handler_test dnsTestCases: SRV Service (Headless)."""
    r = rig.ask("_http._tcp.stock.shop.svc.cluster.local.", "SRV")
    targets = sorted(d.split()[3] for d in r.rdata("SRV"))
    assert targets == [f"{t}.stock.shop.svc.cluster.local." for t in
                       ("172-16-1-2", "172-16-1-3", "fd00-2--1", "fd00-2--2", "twin")]
    # weight 100 / endpoint addresses (twin has two), as CoreDNS: 16
    assert {d.split()[1] for d in r.rdata("SRV")} == {"16"}


def test_endpoint_names(rig: Rig) -> None:
    """handler_test dnsTestCases: AAAA, AAAA Endpoint, An Endpoint with no port, An Endpoint ip,
    A Endpoint ip, An Endpoint by name (dup-name: two endpoints, one hostname)."""
    assert rig.ask("fd00-2--2.stock.shop.svc.cluster.local.", "AAAA").rdata("AAAA") == ["fd00:2::2"]
    assert rig.ask("fd00-2--1.stock.shop.svc.cluster.local.", "AAAA").rdata("AAAA") == ["fd00:2::1"]
    assert rig.ask("172-16-2-20.portless.shop.svc.cluster.local.").rdata("A") == ["172.16.2.20"]
    assert rig.ask("172-16-1-2.stock.shop.svc.cluster.local.").rdata("A") == ["172.16.1.2"]
    assert rig.ask("172-16-1-3.stock.shop.svc.cluster.local.").rdata("A") == ["172.16.1.3"]
    assert sorted(rig.ask("twin.stock.shop.svc.cluster.local.").rdata("A")) == ["172.16.1.4", "172.16.1.5"]


def test_endpoint_name_of_a_clusterip_service(rig: Rig) -> None:
    """findServices (kubernetes.go): an endpoint query works for ClusterIP Services too (reverse_test
    names ep1a.svc1 for an endpoint of a ClusterIP Service)."""
    assert rig.ask("cart-a.cart.shop.svc.cluster.local.").rdata("A") == ["172.16.0.1"]


def test_external_name(rig: Rig) -> None:
    """handler_test dnsTestCases: CNAME External; CNAME External (Truncated Lookup) without the
    truncation; CNAME External To Internal Service."""
    cname = rig.ask("outside.shop.svc.cluster.local.", "CNAME")
    assert (cname.aa, cname.answer) == (True, [("outside.shop.svc.cluster.local.", "CNAME", "ext.example.net.")])
    a = rig.ask("outside.shop.svc.cluster.local.")
    assert a.answer == [("outside.shop.svc.cluster.local.", "CNAME", "ext.example.net."),
                        ("ext.example.net.", "A", "192.0.2.34")]
    assert not a.aa  # Deviation: the upstream half is not ours to vouch for
    inside = rig.ask("inside.shop.svc.cluster.local.")
    assert inside.aa and inside.answer == [("inside.shop.svc.cluster.local.", "CNAME", "cart.shop.svc.cluster.local."),
                                           ("cart.shop.svc.cluster.local.", "A", "10.0.1.1")]


# ------------------------------------------------------------------------ handler_test others ----
def test_a_namespace_that_does_not_exist(dns: Make) -> None:
    """handler_test nsTestCases: a Service for an exposed namespace that doesn't exist."""
    rig = dns([r for r in objects() if r != Namespace("shop")] + [Service("other", "cart", cluster_ips=("10.0.9.1",))])
    assert rig.ask("cart.other.svc.cluster.local.").rdata("A") == ["10.0.9.1"]
    assert nxdomain(rig.ask("cart.nsnoexist.svc.cluster.local."))


def test_before_the_first_sync(dns: Make) -> None:
    """handler_test notSyncedTestCases: CoreDNS answers SERVFAIL for a missing name until synced.
    Deviation: we forward it to kube-dns until synced (the agent also fails open at the kernel)."""
    rig = dns(objects(), synced=False)
    assert rig.ask("nope.shop.svc.cluster.local.").rcode == "NXDOMAIN"
    assert rig.forwarded() == ["nope.shop.svc.cluster.local"]


# ------------------------------------------------------------------------------- kubernetes_apex_test ----
def test_zone_apex(rig: Rig) -> None:
    """kubernetes_apex_test kubeApexCases: SOA, HINFO, NS, A, AAAA, SRV at cluster.local."""
    soa = rig.ask("cluster.local.", "SOA")
    assert soa.rcode == "NOERROR" and soa.aa and len(soa.answer) == 1
    owner, rtype, rdata = soa.answer[0]
    assert (owner, rtype) == ("cluster.local.", "SOA")
    assert rdata.split()[:2] == ["ns.dns.cluster.local.", "hostmaster.cluster.local."]
    assert rdata.split()[3:6] == ["7200", "1800", "86400"]
    for qtype in ("HINFO", "A", "AAAA", "SRV"):
        assert nodata(rig.ask("cluster.local.", qtype)), qtype
    ns = rig.ask("cluster.local.", "NS")
    assert (ns.rcode, ns.aa, ns.answer) == ("NOERROR", True, [("cluster.local.", "NS", "ns.dns.cluster.local.")])
    assert rig.forwarded() == []


def test_zone_ns_glue_and_name_server_address(rig: Rig) -> None:
    """kubernetes_apex_test: NS with Extra ns.dns.cluster.local A; ns_test TestNsAddrs: the address is
    the DNS Service's (here kube-system/kube-dns)."""
    assert rig.ask("ns.dns.cluster.local.").answer == [("ns.dns.cluster.local.", "A", "10.0.0.10")]
    assert rig.ask("cluster.local.", "NS").additional == [("ns.dns.cluster.local.", "A", "10.0.0.10")]
    assert rig.forwarded() == []


# --------------------------------------------------------------------------------- reverse_test ----
def test_reverse(rig: Rig) -> None:
    """reverse_test TestReverse: endpoint PTR (ep1a), ClusterIP PTR, IPv6 endpoint PTR, an address
    two Services select (double-ep), an address in two slices of one Service."""
    assert rig.ask("1.0.16.172.in-addr.arpa.", "PTR").rdata("PTR") == ["cart-a.cart.shop.svc.cluster.local."]
    assert rig.ask("1.1.0.10.in-addr.arpa.", "PTR").rdata("PTR") == ["cart.shop.svc.cluster.local."]
    v6 = "1.0.0.0." + "0." * 20 + "2.0.0.0.0.0.d.f.ip6.arpa."  # fd00:2::1, no hostname: its IP label
    assert rig.ask(v6, "PTR").rdata("PTR") == ["fd00-2--1.stock.shop.svc.cluster.local."]
    assert sorted(rig.ask("99.3.16.172.in-addr.arpa.", "PTR").rdata("PTR")) == [
        "shared.left.shop.svc.cluster.local.", "shared.right.shop.svc.cluster.local."]
    assert rig.ask("100.3.16.172.in-addr.arpa.", "PTR").rdata("PTR") == ["skew.left.shop.svc.cluster.local."]
    assert rig.forwarded() == []


def test_reverse_names_that_are_not_ours(rig: Rig) -> None:
    """reverse_test TestReverse: 101.0.0.10.in-addr.arpa (no such address) NXDOMAIN from the reverse
    zone; example.org.cluster.local PTR and 100.0.0.10.cluster.local PTR NXDOMAIN; svc1 PTR NODATA.
    Deviation: we are configured with no reverse zone, so an address we do not know goes to kube-dns
    (which answers NXDOMAIN here, or the PTR of an address it knows and we do not)."""
    assert rig.ask("101.0.16.172.in-addr.arpa.", "PTR").rcode == "NXDOMAIN"
    assert rig.forwarded() == ["101.0.16.172.in-addr.arpa"]
    assert nxdomain(rig.ask("example.org.cluster.local.", "PTR"))
    assert nxdomain(rig.ask("1.0.16.172.cluster.local.", "PTR"))
    assert nodata(rig.ask("cart.shop.svc.cluster.local.", "PTR"))


# ----------------------------------------------------------------- handler_pod_insecure_test ----
def test_pods_insecure(rig: Rig) -> None:
    """handler_pod_insecure_test podModeInsecureCases."""
    assert rig.ask("10-240-0-1.shop.pod.cluster.local.").answer == [
        ("10-240-0-1.shop.pod.cluster.local.", "A", "10.240.0.1")]
    for qtype in ("A", "AAAA", "HINFO"):
        assert nxdomain(rig.ask("blah.shop.pod.cluster.local.", qtype)), qtype
    assert nxdomain(rig.ask("blah.pod-nons.pod.cluster.local."))
    assert nxdomain(rig.ask("10-240-0-1.pod-nons.pod.cluster.local."))
    assert nodata(rig.ask("shop.pod.cluster.local."))
