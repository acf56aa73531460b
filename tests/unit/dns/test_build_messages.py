"""dns/build.py's message functions: the slow-path replies and parses the resolver and vipmap use."""

from __future__ import annotations

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from node_agent.dns import build
from node_agent.dns.consts import Rcode, Type


def query(name: str = "web.a.svc.cluster.local", qtype: str = "A", qid: int = 4242) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    return q


def test_table_reply_keeps_id_question_rd_and_orders_sections() -> None:
    q = query()
    q.header.rd = 0
    q.header.ad = 1
    q.add_ar(EDNS0(udp_len=1232))
    ans = [build.record("web.a.svc.cluster.local", Type.CNAME, "web.b.svc.cluster.local", 30),
           build.record("web.b.svc.cluster.local", Type.A, "10.96.0.1", 30)]
    soa = build.record("cluster.local", Type.SOA, ("ns.dns.cluster.local", "hostmaster.cluster.local",
                                                   (1, 7200, 1800, 86400, 30)), 30)
    extra = build.record("ns.dns.cluster.local", Type.A, "10.96.0.10", 30)
    out = DNSRecord.parse(build.table_reply(bytes(q.pack()), ans, [soa], [extra], Rcode.NXDOMAIN, aa=True))
    h = out.header
    assert (h.id, h.qr, h.rd, h.ra, h.ad, h.aa, h.rcode) == (4242, 1, 0, 1, 0, 1, RCODE.NXDOMAIN)
    assert out.q.qname == q.q.qname and out.q.qtype == QTYPE.A
    assert [str(rr.rdata) for rr in out.rr] == ["web.b.svc.cluster.local.", "10.96.0.1"]
    assert [rr.rtype for rr in out.auth] == [QTYPE.SOA]
    assert [rr.rtype for rr in out.ar] == [QTYPE.A]  # the query's OPT is not echoed


def test_table_reply_lower_cases_the_question_so_shared_names_compress_to_it() -> None:
    """The cache puts each client's spelling back into the question; the records' names must point
    at it rather than repeat the table's spelling."""
    q = query("WeB.A.svc.Cluster.local")
    soa = build.record("cluster.local", Type.SOA, ("ns.dns.cluster.local", "hostmaster.cluster.local",
                                                   (1, 7200, 1800, 86400, 30)), 30)
    out = build.table_reply(bytes(q.pack()), [build.record("web.a.svc.cluster.local", Type.A, "10.96.0.1", 30)],
                            [soa], [], Rcode.NOERROR, aa=True)
    qname = b"\x03web\x01a\x03svc\x07cluster\x05local\x00"
    assert out[12 : 12 + len(qname)] == qname
    after_question = 12 + len(qname) + 4
    assert out[after_question : after_question + 2] == b"\xc0\x0c"  # the A record's owner: the question
    assert b"cluster\x05local" not in out[after_question:]  # the SOA's owner too, a suffix of it


def test_table_reply_not_authoritative() -> None:
    out = DNSRecord.parse(build.table_reply(bytes(query().pack()), [], [], [], Rcode.NOERROR, aa=False))
    assert out.header.aa == 0 and out.header.rd == 1 and out.header.rcode == 0


def test_parse_sections() -> None:
    r = query().reply()
    r.add_answer(build.record("web.a.svc.cluster.local", Type.A, "10.0.0.1", 5))
    r.add_auth(build.record("cluster.local", Type.NS, "ns.dns.cluster.local", 5))
    r.header.rcode = Rcode.SERVFAIL
    s = build.parse_sections(bytes(r.pack()))
    assert s.rcode == Rcode.SERVFAIL
    assert [str(rr.rdata) for rr in s.answer] == ["10.0.0.1"]
    assert [build.target(rr) for rr in s.authority] == ["ns.dns.cluster.local"]


def test_request_shape() -> None:
    q = query()
    assert build.request_shape(bytes(q.pack())) == (0, 1)
    q.header.opcode = 2
    assert build.request_shape(bytes(q.pack())) == (2, 1)
    assert build.request_shape(b"\x00\x01\x00") is None


def test_addresses_of_the_asked_type_with_ttls() -> None:
    r = query("db.example.org", "AAAA").reply()
    r.add_answer(build.record("db.example.org", Type.CNAME, "db1.example.org", 60))
    r.add_answer(build.record("db1.example.org", Type.AAAA, "2001:db8::1", 40))
    r.add_answer(build.record("db1.example.org", Type.AAAA, "2001:db8::2", 20))
    assert build.addresses(bytes(r.pack()), Type.AAAA) == (0, [("2001:db8::1", 40), ("2001:db8::2", 20)])
    r.header.rcode = Rcode.NXDOMAIN
    r.rr = []
    assert build.addresses(bytes(r.pack()), Type.A) == (Rcode.NXDOMAIN, [])


def test_qtype_name() -> None:
    assert build.qtype_name(Type.SRV) == "SRV" and build.qtype_name(65000) == "65000"
