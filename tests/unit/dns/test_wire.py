"""node_agent.dns.wire: the dnslib-free query parser, error builders, truncation and the RR walker."""

from __future__ import annotations

import struct

import pytest
from dnslib import CLASS, EDNS0, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSQuestion, DNSRecord, EDNSOption

from node_agent.dns import wire
from node_agent.dns.wire import Edns, Query, Verdict


def mkq(
    name: str = "svc.ns.svc.cluster.local",
    qtype: str = "A",
    *,
    qid: int = 0x1234,
    edns: bool = False,
    do: bool = False,
    payload: int = 1232,
    opts: list[EDNSOption] | None = None,
    rd: bool = True,
    cd: bool = False,
    version: int = 0,
) -> bytes:
    q = DNSRecord(DNSHeader(id=qid, rd=int(rd), cd=int(cd)), q=DNSQuestion(name, getattr(QTYPE, qtype)))
    if edns or do:
        q.add_ar(EDNS0(udp_len=payload, flags="do" if do else "", opts=opts or [], version=version))
    return bytes(q.pack())


def raw_query(qname_wire: bytes, *, counts: tuple[int, int, int, int] = (1, 0, 0, 0), flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0xBEEF, flags, *counts) + qname_wire + b"\x00\x01\x00\x01"


def pq(data: bytes) -> Query:
    r = wire.parse_query(data)
    assert type(r) is Query, r
    return r


# --------------------------------------------------------------------------------------------------
# parse_query


def test_parse_plain_query() -> None:
    q = pq(mkq(qid=0xABCD))
    assert q.id == 0xABCD and q.idb == b"\xab\xcd"
    assert q.qname == b"\x03svc\x02ns\x03svc\x07cluster\x05local\x00"
    assert q.key == q.qname
    assert (q.qtype, q.qclass) == (1, 1)
    assert q.rd and not q.cd
    assert q.edns is None and not q.do
    assert q.qend == 12 + len(q.qname) + 4
    assert q.hv == 1
    assert q.ck == q.key + b"\x00\x01\x00\x01\x00"


def test_parse_0x20_keeps_spelling_and_lowers_key() -> None:
    q = pq(mkq("SvC.Ns.SVC.cluster.LOCAL", "AAAA", rd=False, cd=True))
    assert q.qname == b"\x03SvC\x02Ns\x03SVC\x07cluster\x05LOCAL\x00"
    assert q.key == b"\x03svc\x02ns\x03svc\x07cluster\x05local\x00"
    assert q.qtype == 28 and not q.rd and q.cd
    assert q.hv == 2


def test_parse_edns() -> None:
    q = pq(mkq(edns=True, do=True, payload=4096))
    assert q.edns == Edns(4096, True, 0, False)
    assert q.do and q.hv == 5
    assert q.ck.endswith(b"\x01")
    small = pq(mkq(edns=True, payload=100))
    assert small.edns is not None and small.edns.payload == 512 and not small.do
    cookie = pq(mkq(edns=True, opts=[EDNSOption(10, b"12345678")]))
    assert cookie.edns is not None and cookie.edns.options


def test_parse_memo_distinguishes_ids_and_flags() -> None:
    a = pq(mkq(qid=1))
    b = pq(mkq(qid=2))
    assert (a.id, b.id) == (1, 2) and a.ck is b.ck  # memoised: same key object, different IDs
    c = pq(mkq(qid=3, rd=False))
    assert not c.rd and c.hv == 0


def test_parse_bytearray_and_memoryview() -> None:
    data = mkq()
    assert pq(bytearray(data)) == pq(data)  # type: ignore[arg-type]
    assert pq(memoryview(data)) == pq(data)  # type: ignore[arg-type]


def test_label_and_name_limits() -> None:
    l63 = b"\x3f" + b"a" * 63
    assert pq(raw_query(l63 + b"\x00")).qname == l63 + b"\x00"
    assert wire.parse_query(raw_query(b"\x40" + b"a" * 64 + b"\x00")) is Verdict.FORMERR
    # 255 octets: 3 x 63-octet labels (192) + one 61-octet label (62) + root (1)
    n255 = l63 * 3 + b"\x3d" + b"b" * 61 + b"\x00"
    assert len(n255) == 255
    assert pq(raw_query(n255)).qname == n255
    n256 = l63 * 3 + b"\x3e" + b"b" * 62 + b"\x00"
    assert wire.parse_query(raw_query(n256)) is Verdict.FORMERR


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"", Verdict.DROP),
        (b"\x12", Verdict.DROP),
        (b"\x12\x34", Verdict.FORMERR),
        (b"\x12\x34\x01\x00\x00", Verdict.FORMERR),
        (raw_query(b"\x00", flags=0x8180), Verdict.DROP),  # a response
        (raw_query(b"\x00", flags=0x2800), Verdict.SLOW),  # opcode UPDATE
        (raw_query(b"\x00", flags=0x0300), Verdict.SLOW),  # TC in a query
        (raw_query(b"\x00", counts=(0, 0, 0, 0)), Verdict.FORMERR),
        (raw_query(b"\x00", counts=(2, 0, 0, 0)), Verdict.FORMERR),
        (raw_query(b"\x00", counts=(1, 1, 0, 0)), Verdict.FORMERR),
        (raw_query(b"\x00", counts=(1, 0, 1, 0)), Verdict.FORMERR),
        (raw_query(b"\x00", counts=(1, 0, 0, 2)), Verdict.SLOW),
        (raw_query(b"\xc0\x0c"), Verdict.FORMERR),  # compression in the qname
        (raw_query(b"\x03abc")[:-4], Verdict.FORMERR),  # name runs off the end
        (raw_query(b"\x03abc\x00")[:-2], Verdict.FORMERR),  # qclass cut off
        (raw_query(b"\x03abc\x00") + b"junk", Verdict.SLOW),  # trailing bytes
        (raw_query(b"\x00", counts=(1, 0, 0, 1)), Verdict.FORMERR),  # ARCOUNT=1 but no RR
    ],
)
def test_verdicts(data: bytes, verdict: Verdict) -> None:
    assert wire.parse_query(data) is verdict


def test_verdicts_for_additional_records() -> None:
    base = raw_query(b"\x01a\x00", counts=(1, 0, 0, 1))
    assert wire.parse_query(mkq(edns=True, version=1)) is Verdict.SLOW  # BADVERS on the slow path
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"
    assert wire.parse_query(base + opt + b"\x00\x05abc") is Verdict.FORMERR  # rdlen past the end
    assert wire.parse_query(base + opt + b"\x00\x03\x00\x0a\x00") is Verdict.FORMERR  # option TLV cut
    named_opt = b"\x01x\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    assert wire.parse_query(base + named_opt) is Verdict.FORMERR
    tsig_like = b"\x03key\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x00"
    assert wire.parse_query(base + tsig_like) is Verdict.SLOW
    assert pq(base + opt + b"\x00\x00").edns == Edns(1232, False, 0, False)


def test_udp_limit() -> None:
    assert wire.udp_limit(pq(mkq())) == 512
    assert wire.udp_limit(pq(mkq(edns=True, payload=4096))) == 1232
    assert wire.udp_limit(pq(mkq(edns=True, payload=600))) == 600
    assert wire.udp_limit(pq(mkq(edns=True, payload=4096)), 4096) == 4096


# --------------------------------------------------------------------------------------------------
# error builders


def test_formerr_echoes_question_when_parseable() -> None:
    data = mkq("Foo.example", "MX", qid=77)
    r = DNSRecord.parse(wire.servfail(data) or b"")
    assert r.header.id == 77 and r.header.rcode == RCODE.SERVFAIL and r.header.qr and r.header.rd
    assert str(r.q.qname) == "Foo.example." and r.q.qtype == QTYPE.MX
    assert r.ar == []


def test_refused_with_edns_carries_opt() -> None:
    data = mkq(edns=True, do=True)
    r = DNSRecord.parse(wire.refused(data) or b"")
    assert r.header.rcode == RCODE.REFUSED
    assert len(r.ar) == 1 and r.ar[0].rtype == QTYPE.OPT and r.ar[0].edns_do


def test_formerr_on_garbage_is_header_only() -> None:
    data = raw_query(b"\xc0\x0c")
    out = wire.formerr(data)
    assert out is not None and len(out) == 12 and out[:2] == b"\xbe\xef"
    r = DNSRecord.parse(out)
    assert r.header.rcode == RCODE.FORMERR and r.header.q == 0
    assert wire.formerr(b"\x01\x02")[:2] == b"\x01\x02"  # type: ignore[index]
    assert wire.formerr(b"\x01") is None
    assert DNSRecord.parse(wire.notimp(raw_query(b"\x00", flags=0x2000)) or b"").header.rcode == RCODE.NOTIMP


def test_badvers() -> None:
    data = mkq(edns=True, version=1, qid=9)
    out = wire.badvers(data)
    assert out is not None
    r = DNSRecord.parse(out)
    assert r.header.id == 9 and r.header.rcode == 0
    assert r.ar[0].rtype == QTYPE.OPT and (r.ar[0].ttl >> 24) == 1  # ext-rcode 1 -> BADVERS (16)
    assert wire.badvers(mkq()) is None


# --------------------------------------------------------------------------------------------------
# truncate


def big_answer(query: bytes, n: int = 80, opt: bool = True) -> bytes:
    q = DNSRecord.parse(query)
    r = q.reply()
    for i in range(n):
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(f"10.0.{i // 256}.{i % 256}"), ttl=60))
    if opt and q.ar:
        r.add_ar(EDNS0(udp_len=1232, flags="do" if q.ar[0].edns_do else ""))
    return bytes(r.pack())


@pytest.mark.parametrize("edns", [False, True])
def test_truncate_sets_tc_and_fits(edns: bool) -> None:
    query = mkq(edns=edns, do=edns, qid=4242)
    resp = big_answer(query)
    assert len(resp) > 512
    out = wire.truncate(resp, 512)
    assert len(out) <= 512
    r = DNSRecord.parse(out)
    assert r.header.tc and r.header.id == 4242 and r.header.qr
    # as many whole records as fit (test_wire_pack.py checks the count), in their order
    assert 0 < len(r.rr) < 80 and r.rr == DNSRecord.parse(resp).rr[: len(r.rr)] and r.auth == []
    assert str(r.q.qname) == "svc.ns.svc.cluster.local."
    if edns:
        assert len(r.ar) == 1 and r.ar[0].rtype == QTYPE.OPT and r.ar[0].edns_do
    else:
        assert r.ar == []
    assert wire.truncate(resp, 65535) is resp


def test_truncate_explicit_opt() -> None:
    resp = big_answer(mkq(edns=True))
    stripped = DNSRecord.parse(wire.truncate(resp, 512, b""))
    assert stripped.ar == [] and stripped.header.tc
    added = DNSRecord.parse(wire.truncate(big_answer(mkq(), opt=False), 512, wire.opt_rr(1232, True)))
    assert added.ar[0].rtype == QTYPE.OPT and added.ar[0].edns_do


def test_truncate_tiny_limit_drops_question() -> None:
    out = wire.truncate(big_answer(mkq()), 20)
    assert len(out) == 12 and out[2] & 0x02


# --------------------------------------------------------------------------------------------------
# walk / names


def test_walk_ttls_soa_and_opt() -> None:
    query = mkq("nx.example", edns=True, do=True)
    q = DNSRecord.parse(query)
    r = q.reply()
    r.header.rcode = RCODE.NXDOMAIN
    r.add_auth(RR("example", QTYPE.SOA, rdata=SOA("ns.example", "h.example", (1, 2, 3, 4, 60)), ttl=3600))
    r.add_ar(RR("extra.example", QTYPE.A, rdata=A("1.2.3.4"), ttl=7))
    r.add_ar(EDNS0(udp_len=1232, flags="do"))
    data = bytes(r.pack())
    w = wire.walk(data)
    assert w is not None
    assert w.rcode == 3 and (w.ancount, w.nscount, w.arcount) == (0, 1, 2)
    assert w.ttls == [3600, 7] and w.min_ttl == 7
    assert [struct.unpack_from("!I", data, o)[0] for o in w.ttl_offsets] == [3600, 7]
    assert w.neg_ttl == 60
    assert w.opt is not None and data[w.opt[0] : w.opt[1]][1:3] == b"\x00\x29" and w.do
    assert not w.tsig


def test_walk_rejects_bad_pointers() -> None:
    hdr = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0)
    question = b"\x01a\x00\x00\x01\x00\x01"
    rr_tail = b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"
    good = hdr + question + b"\xc0\x0c" + rr_tail
    assert wire.walk(good) is not None
    loop_at = len(hdr + question)
    self_ptr = hdr + question + bytes((0xC0, loop_at)) + rr_tail
    assert wire.walk(self_ptr) is None
    fwd = hdr + question + bytes((0xC0, loop_at + 2)) + rr_tail
    assert wire.walk(fwd) is None
    oob = hdr + question + b"\xff\xff" + rr_tail
    assert wire.walk(oob) is None
    # two pointers bouncing at each other: a -> b where b -> a
    bounce = hdr[:4] + struct.pack("!HHHH", 1, 1, 0, 0) + b"\x01a\xc0\x12" + b"\x00\x01\x00\x01"
    assert wire.walk(bounce + b"\xc0\x0c" + rr_tail) is None
    assert wire.walk(good + b"x") is None  # trailing
    assert wire.walk(good[:-1]) is None  # rdata cut


def test_walk_class_and_unknown_types() -> None:
    q = DNSRecord.question("x.example", "TXT", "CH")
    r = q.reply()
    r.add_answer(RR("x.example", QTYPE.A, CLASS.CH, rdata=A("1.2.3.4"), ttl=5))
    data = bytes(r.pack())
    w = wire.walk(data)
    assert w is not None and w.min_ttl == 5
    # an unknown type with opaque rdata walks fine
    unk = data[:-14] + b"\xff\x00\x00\x03\x00\x00\x00\x09\x00\x02\xab\xcd"
    w = wire.walk(unk)
    assert w is not None and w.ttls == [9]


# ------------------------------------------------------------------------------ our own queries


def test_query_builds_a_recursive_query_with_opt() -> None:
    pkt, question = wire.query(b"\xab\xcd", b"\x03Svc\x07example\x00", 28, 1, cd=True, do=True, payload=1232)
    r = DNSRecord.parse(pkt)
    assert r.header.id == 0xABCD and r.header.rd == 1 and r.header.cd == 1 and r.header.qr == 0
    assert str(r.q.qname) == "Svc.example." and r.q.qtype == QTYPE.AAAA and r.q.qclass == 1
    assert len(r.ar) == 1 and r.ar[0].rtype == QTYPE.OPT and r.ar[0].rclass == 1232
    assert r.ar[0].ttl == 0x8000  # DO, version 0, ext-rcode 0
    assert pkt[12 : 12 + len(question)] == question and question.endswith(b"\x00\x00\x1c\x00\x01")
    plain, _ = wire.query(b"\x00\x01", b"\x00", 2, 1, cd=False, do=False, payload=512)
    p = DNSRecord.parse(plain)
    assert p.header.cd == 0 and p.ar[0].ttl == 0 and p.ar[0].rclass == 512
    assert plain[-11:] == wire.opt_rr(512, False)


def test_question_of() -> None:
    q = mkq("Raw.Example", edns=True)
    qs = wire.question_of(q)
    assert qs == q[12 : 12 + len(b"\x03Raw\x07Example\x00") + 4]
    assert wire.question_of(q[:11]) is None
    assert wire.question_of(q[:4] + b"\x00\x02" + q[6:]) is None  # two questions: not that simple
    compressed = q[:12] + b"\xc0\x0c" + q[-4:]
    assert wire.question_of(compressed) is None
    assert wire.question_of(q[:20]) is None  # name cut short


def test_match_reply() -> None:
    qid = b"\x12\x34"
    question = b"\x03fOo\x07exAMPLE\x00\x00\x01\x00\x01"
    reply = qid + b"\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + question
    assert wire.match_reply(reply, qid, 0, question, True) == wire.REPLY_OK
    assert wire.match_reply(reply, qid, 0, None, True) == wire.REPLY_OK
    assert wire.match_reply(reply, b"\x12\x35", 0, question, True) == wire.REPLY_BAD  # ID
    assert wire.match_reply(reply[:2] + b"\x01" + reply[3:], qid, 0, question, True) == wire.REPLY_BAD  # QR=0
    assert wire.match_reply(reply, qid, 0x08, question, True) == wire.REPLY_BAD  # opcode
    assert wire.match_reply(reply[:11], qid, 0, None, True) == wire.REPLY_BAD  # short
    other_qd = reply[:4] + b"\x00\x00" + reply[6:]
    assert wire.match_reply(other_qd, qid, 0, question, True) == wire.REPLY_BAD
    lower = reply[:12] + question.lower()
    assert wire.match_reply(lower, qid, 0, question, True) == wire.REPLY_CASE_ONLY
    assert wire.match_reply(lower, qid, 0, question, False) == wire.REPLY_OK
    other = reply[:12] + b"\x03bar" + question[4:]
    assert wire.match_reply(other, qid, 0, question, False) == wire.REPLY_BAD
