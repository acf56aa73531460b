"""Kubernetes DNS-Based Service Discovery, schema 1.1.0 (kubernetes/dns docs/specification.md), section
by section, asked through the whole resolver as a pod's stub sees the answer.

Each test names the section it checks. The records are the spec's own examples where it gives them
(kubernetes.default with 10.3.0.1, headless.default, my-pet, foo -> www.example.com), written out
here as Kubernetes objects. Where the spec leaves a choice (SRV priority/weight, the identifier of an
endpoint without hostname, what the Additional section holds) the test says what we chose.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from dnsrig import CLIENT, Rig

from node_agent.mesh.model import Endpoint, EndpointSlice, Namespace, Pod, Port, Service

Make = Callable[..., Rig]


def records() -> list:
    return [
        Namespace("default"),
        Pod("default", "client", (CLIENT,)),
        Service("default", "kubernetes", cluster_ips=("10.3.0.1",), ports=(Port(443, "https"),)),
        Service("default", "kube6", cluster_ips=("2001:db8::1",), ports=(Port(443, "https"),)),
        Service("default", "dual", cluster_ips=("10.3.0.2", "2001:db8::2"), ports=(Port(80),)),
        Service("default", "headless", cluster_ips=("None",), ports=(Port(443, "https"), Port(80, "http"))),
        EndpointSlice("default", "headless-v4", "headless", (
            Endpoint(("10.3.0.100",), hostname="my-pet"),
            Endpoint(("10.3.0.101",), hostname="my-pet-2"),
            Endpoint(("10.3.0.102",)),
            Endpoint(("10.3.0.103",), ready=False, hostname="not-ready"),
        ), (Port(443, "https"), Port(80, "http"))),
        EndpointSlice("default", "headless-v6", "headless", (
            Endpoint(("2001:db8::100",), hostname="my-pet"),
        ), (Port(443, "https"), Port(80, "http")), address_type="IPv6"),
        Service("default", "tolerant", cluster_ips=("None",), publish_not_ready=True),
        EndpointSlice("default", "tolerant-1", "tolerant", (Endpoint(("10.3.1.1",), ready=False, hostname="t0"),)),
        Service("default", "lonely", cluster_ips=("None",), ports=(Port(80, "http"),)),
        EndpointSlice("default", "lonely-1", "lonely", (Endpoint(("10.3.2.1",), ready=False),), (Port(80, "http"),)),
        Service("default", "foo", type="ExternalName", external_name="www.example.com"),
    ]


ZONE = {"www.example.com": [("A", "192.0.2.53"), ("AAAA", "2001:db8::53")]}


@pytest.fixture
def rig(dns: Make) -> Rig:
    return dns(records(), zone=ZONE)


# ----------------------------------------------------------------------------- 2.1 Definitions ----
def test_2_1_comparisons_are_case_insensitive(rig: Rig) -> None:
    r = rig.ask("KUBERNETES.Default.SVC.Cluster.LOCAL.")
    assert r.rcode == "NOERROR" and r.rdata("A") == ["10.3.0.1"]
    # negative answers too: the zone's SOA, whatever the spelling of the question
    assert rig.ask("NotHere.Default.SVC.Cluster.LOCAL.").negative_soa == "cluster.local."
    assert rig.ask("Kubernetes.Default.SVC.Cluster.LOCAL.", "AAAA").negative_soa == "cluster.local."


def test_2_1_hostname_is_the_hostname_field_else_a_unique_identifier(rig: Rig) -> None:
    assert rig.ask("my-pet.headless.default.svc.cluster.local").rdata("A") == ["10.3.0.100"]
    # Our identifier for an endpoint without hostname is CoreDNS's: the address with dashes.
    assert rig.ask("10-3-0-102.headless.default.svc.cluster.local").rdata("A") == ["10.3.0.102"]


def test_2_1_ready_endpoints_or_all_when_the_service_tolerates_unready_ones(rig: Rig) -> None:
    assert "10.3.0.103" not in rig.ask("headless.default.svc.cluster.local").rdata("A")
    assert rig.ask("not-ready.headless.default.svc.cluster.local").rcode == "NXDOMAIN"
    # publishNotReadyAddresses (the successor of the tolerate-unready-endpoints annotation)
    assert rig.ask("tolerant.default.svc.cluster.local").rdata("A") == ["10.3.1.1"]
    assert rig.ask("t0.tolerant.default.svc.cluster.local").rdata("A") == ["10.3.1.1"]


# ------------------------------------------------------------------- 2.2 Record for Schema Version ----
def test_2_2_dns_version_txt(rig: Rig) -> None:
    r = rig.ask("dns-version.cluster.local.", "TXT")
    assert r.rcode == "NOERROR" and r.aa
    assert r.answer == [("dns-version.cluster.local.", "TXT", '"1.1.0"')]
    assert r.msg.rr[0].ttl == 28800  # the spec's example TTL
    assert rig.forwarded() == []


# ----------------------------------------------------------- 2.3 Records for a Service with ClusterIP ----
def test_2_3_1_a_record_for_an_ipv4_cluster_ip(rig: Rig) -> None:
    r = rig.ask("kubernetes.default.svc.cluster.local.")
    assert (r.rcode, r.aa) == ("NOERROR", True)
    assert r.answer == [("kubernetes.default.svc.cluster.local.", "A", "10.3.0.1")]


def test_2_3_1_aaaa_record_for_an_ipv6_cluster_ip(rig: Rig) -> None:
    assert rig.ask("kube6.default.svc.cluster.local.", "AAAA").answer == [
        ("kube6.default.svc.cluster.local.", "AAAA", "2001:db8::1")]
    both = rig.ask("dual.default.svc.cluster.local.", "AAAA")
    assert both.rdata("AAAA") == ["2001:db8::2"] and rig.ask("dual.default.svc.cluster.local.").rdata("A") == [
        "10.3.0.2"]


def test_2_3_1_the_other_family_is_nodata_not_nxdomain(rig: Rig) -> None:
    # Not in the spec; CoreDNS and Istio (istio#31250) answer NOERROR with no records, and so do we.
    r = rig.ask("kubernetes.default.svc.cluster.local.", "AAAA")
    assert (r.rcode, r.answer) == ("NOERROR", []) and r.negative_soa == "cluster.local."


def test_2_3_2_srv_for_each_named_port(rig: Rig) -> None:
    r = rig.ask("_https._tcp.kubernetes.default.svc.cluster.local.", "SRV")
    assert r.rcode == "NOERROR" and r.aa
    # priority 0, weight 100: the spec leaves both to the implementation (CoreDNS's values)
    assert r.answer == [("_https._tcp.kubernetes.default.svc.cluster.local.", "SRV",
                         "0 100 443 kubernetes.default.svc.cluster.local.")]
    # "may include the A record" in Additional: we leave it out (the client asks for it, cached)
    assert r.additional == []


def test_2_3_2_unnamed_ports_have_no_srv_record(rig: Rig) -> None:
    # dual has one unnamed port 80: _tcp.dual exists as a name (an empty non-terminal) with no SRV
    r = rig.ask("_tcp.dual.default.svc.cluster.local.", "SRV")
    assert (r.rcode, r.answer) == ("NOERROR", [])
    assert rig.ask("_http._tcp.dual.default.svc.cluster.local.", "SRV").rcode == "NXDOMAIN"


def test_2_3_3_ptr_for_an_ipv4_cluster_ip(rig: Rig) -> None:
    r = rig.ask("1.0.3.10.in-addr.arpa.", "PTR")
    assert r.rcode == "NOERROR" and r.aa
    assert r.answer == [("1.0.3.10.in-addr.arpa.", "PTR", "kubernetes.default.svc.cluster.local.")]


def test_2_3_3_ptr_for_an_ipv6_cluster_ip(rig: Rig) -> None:
    name = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."  # the spec's example
    assert rig.ask(name, "PTR").answer == [(name, "PTR", "kube6.default.svc.cluster.local.")]


# ------------------------------------------------------------- 2.4 Records for a Headless Service ----
def test_2_4_1_a_record_for_each_ready_endpoint(rig: Rig) -> None:
    r = rig.ask("headless.default.svc.cluster.local.")
    assert r.rcode == "NOERROR" and r.aa
    assert sorted(r.rdata("A")) == ["10.3.0.100", "10.3.0.101", "10.3.0.102"]


def test_2_4_1_no_ready_endpoints_is_nxdomain(rig: Rig) -> None:
    for qtype in ("A", "AAAA"):
        r = rig.ask("lonely.default.svc.cluster.local.", qtype)
        assert (r.rcode, r.aa, r.negative_soa) == ("NXDOMAIN", True, "cluster.local."), qtype
    assert rig.forwarded() == []


def test_2_4_1_a_record_per_ip_of_a_hostname(rig: Rig) -> None:
    assert rig.ask("my-pet.headless.default.svc.cluster.local.").answer == [
        ("my-pet.headless.default.svc.cluster.local.", "A", "10.3.0.100")]


def test_2_4_1_aaaa_records_of_ipv6_endpoints(rig: Rig) -> None:
    assert rig.ask("headless.default.svc.cluster.local.", "AAAA").rdata("AAAA") == ["2001:db8::100"]
    assert rig.ask("my-pet.headless.default.svc.cluster.local.", "AAAA").answer == [
        ("my-pet.headless.default.svc.cluster.local.", "AAAA", "2001:db8::100")]


def test_2_4_2_srv_for_each_ready_endpoint_and_named_port(rig: Rig) -> None:
    r = rig.ask("_https._tcp.headless.default.svc.cluster.local.", "SRV")
    assert r.rcode == "NOERROR"
    targets = sorted(d.split()[3] for d in r.rdata("SRV"))
    # N ready endpoints x M named ports, N = 3 hostnames (my-pet is one dual-stack endpoint in an IPv4
    # and an IPv6 slice: one target, whose A and AAAA records carry both addresses), M = 1 here
    assert targets == [
        "10-3-0-102.headless.default.svc.cluster.local.", "my-pet-2.headless.default.svc.cluster.local.",
        "my-pet.headless.default.svc.cluster.local."]
    assert {d.split()[2] for d in r.rdata("SRV")} == {"443"}
    # a bare SRV query for the Service: every named port of every ready endpoint (CoreDNS's extension)
    assert len(rig.ask("headless.default.svc.cluster.local.", "SRV").rdata("SRV")) == 3 * 2


def test_2_4_3_ptr_for_a_ready_endpoint_with_hostname(rig: Rig) -> None:
    r = rig.ask("100.0.3.10.in-addr.arpa.", "PTR")
    assert r.rcode == "NOERROR" and r.aa
    assert r.answer == [("100.0.3.10.in-addr.arpa.", "PTR", "my-pet.headless.default.svc.cluster.local.")]
    v6 = "0.0.1.0." + "0." * 20 + "8.b.d.0.1.0.0.2.ip6.arpa."  # 2001:db8::100
    assert rig.ask(v6, "PTR").answer == [(v6, "PTR", "my-pet.headless.default.svc.cluster.local.")]
    assert rig.forwarded() == []
    # an endpoint that is not ready has no PTR from us: kube-dns is asked (it has none either)
    assert rig.ask("103.0.3.10.in-addr.arpa.", "PTR").rcode == "NXDOMAIN"
    assert rig.forwarded() == ["103.0.3.10.in-addr.arpa"]


# --------------------------------------------------------- 2.5 Records for External Name Services ----
def test_2_5_cname_to_the_external_name_ipv4(rig: Rig) -> None:
    r = rig.ask("foo.default.svc.cluster.local.")
    assert r.rcode == "NOERROR"
    assert r.answer == [("foo.default.svc.cluster.local.", "CNAME", "www.example.com."),
                        ("www.example.com.", "A", "192.0.2.53")]
    # Deviation: AA is clear, part of the answer is kube-dns's (CoreDNS sets AA on the whole answer)
    assert not r.aa
    assert rig.forwarded() == ["www.example.com"]


def test_2_5_cname_to_the_external_name_ipv6(rig: Rig) -> None:
    r = rig.ask("foo.default.svc.cluster.local.", "AAAA")
    assert r.answer == [("foo.default.svc.cluster.local.", "CNAME", "www.example.com."),
                        ("www.example.com.", "AAAA", "2001:db8::53")]


def test_2_5_cname_query_is_answered_without_the_target(rig: Rig) -> None:
    r = rig.ask("foo.default.svc.cluster.local.", "CNAME")
    assert (r.rcode, r.aa) == ("NOERROR", True)
    assert r.answer == [("foo.default.svc.cluster.local.", "CNAME", "www.example.com.")]
    assert rig.forwarded() == []


# ----------------------------------------------------------------------- 2.6 Deprecated Records ----
def test_2_6_pod_a_records(rig: Rig) -> None:
    r = rig.ask("10-3-9-9.default.pod.cluster.local.")
    assert (r.rcode, r.aa) == ("NOERROR", True)
    assert r.answer == [("10-3-9-9.default.pod.cluster.local.", "A", "10.3.9.9")]


# -------------------------------------------------------------------- 3 Schema Extensions -------------
def test_3_extensions_keep_the_spec_records_a_subset_unknown_names_nxdomain_with_the_zone_soa(rig: Rig) -> None:
    r = rig.ask("nothere.default.svc.cluster.local.")
    assert (r.rcode, r.aa, r.negative_soa) == ("NXDOMAIN", True, "cluster.local.")
    soa = rig.ask("cluster.local.", "SOA")
    assert soa.rcode == "NOERROR" and soa.answer[0][:2] == ("cluster.local.", "SOA")
    assert rig.forwarded() == []
