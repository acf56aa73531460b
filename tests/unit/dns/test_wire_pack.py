"""node_agent.dns.wire.compress and the record-keeping wire.truncate (issue 12).

Messages are built here octet by octet, uncompressed unless a test says otherwise, so that the input
is exactly what an upstream relaying without compression (or compressing oddly) sends; dnslib is
only the independent reader that says two messages hold the same records.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from dnslib import QTYPE, DNSRecord
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from node_agent.dns import wire

QNAME = "svc.ns.svc.cluster.local"
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}


def wn(text: str) -> bytes:
    """Presentation name -> uncompressed wire name."""
    return b"".join(bytes((len(label),)) + label.encode() for label in text.strip(".").split(".") if label) + b"\x00"


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 30, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def message(
    question: bytes,
    an: Sequence[bytes] = (),
    ns: Sequence[bytes] = (),
    ar: Sequence[bytes] = (),
    *,
    flags: int = 0x8180,
    qid: int = 0x4242,
    qtype: int = 1,
) -> bytes:
    hdr = struct.pack("!HHHHHH", qid, flags, 1, len(an), len(ns), len(ar))
    return hdr + question + struct.pack("!HH", qtype, 1) + b"".join(an) + b"".join(ns) + b"".join(ar)


def a_rr(owner: bytes, i: int, ttl: int = 30) -> bytes:
    return rr(owner, 1, bytes((10, 0, i >> 8 & 0xFF, i & 0xFF)), ttl)


OPT = wire.opt_rr(1232, True)  # 11 octets, DO set


def a_answer(n: int, *, opt: bytes = b"", qname: str = QNAME, owner: str | None = None) -> bytes:
    """`n` A records for `qname`, every owner written out in full (an uncompressed relay)."""
    o = wn(owner or qname)
    return message(wn(qname), [a_rr(o, i) for i in range(n)], ar=[opt] if opt else [])


def records(data: bytes) -> list[list[object]]:
    r = DNSRecord.parse(data)
    return [r.rr, r.auth, r.ar]


def rr_spans(data: bytes) -> list[tuple[int, int]]:
    """[start of TTL field, end) of every non-OPT RR, from wire.walk (independent of _pack)."""
    w = wire.walk(data)
    assert w is not None
    return [(o, o + 6 + struct.unpack_from("!H", data, o + 4)[0]) for o in w.ttl_offsets]


# --------------------------------------------------------------------------------------------------
# compress


def test_compress_64_a_records_relayed_uncompressed() -> None:
    data = a_answer(64, opt=OPT)
    out = wire.compress(data)
    assert out is not None
    assert records(out) == records(data) and out[:12] == data[:12]
    qsec = len(wn(QNAME)) + 4
    # every owner becomes a 2-octet pointer to the question: 2 + 10 + 4 octets per record
    assert len(out) == 12 + qsec + 64 * 16 + len(OPT)
    assert len(out) < len(data) / 2
    assert out[12 + qsec : 12 + qsec + 2] == b"\xc0\x0c"
    assert out.endswith(OPT)  # OPT kept as it was, where it was
    assert wire.compress(out) is out  # nothing more to gain: the input comes back


def test_compress_matches_suffixes_case_insensitively_and_points_at_the_question() -> None:
    q = wn("SvC.Ns.svc.cluster.local")
    data = message(q, [a_rr(wn("svc.ns.SVC.cluster.local"), 1), a_rr(wn("x.svc.CLUSTER.local"), 2)])
    out = wire.compress(data)
    assert out is not None and records(out) == records(data)
    qend = 12 + len(q) + 4
    assert out[qend : qend + 2] == b"\xc0\x0c"  # whole owner -> the question's spelling
    second = qend + 16
    # "x" then a pointer to "svc.cluster.local" inside the question (offset 12 + 4 + 3)
    assert out[second : second + 4] == b"\x01x\xc0" + bytes((12 + 4 + 3,))


def test_srv_targets_are_not_compressed_but_may_be_pointed_at() -> None:
    q = wn("_http._tcp." + QNAME)
    targets = [f"10-0-0-{i}.{QNAME}" for i in range(3)]
    srvs = [rr(q, 33, struct.pack("!HHH", 0, 33, 80) + wn(t)) for t in targets]
    glue = [a_rr(wn(t), i) for i, t in enumerate(targets)]
    data = message(q, srvs, ar=glue, qtype=33)
    out = wire.compress(data)
    assert out is not None and records(out) == records(data)
    spans = rr_spans(out)
    for (_, end), t in zip(spans[:3], targets, strict=True):
        assert out[end - len(wn(t)) : end] == wn(t)  # the target written out in full
    for (ttl_at, _), _t in zip(spans[3:], targets, strict=True):
        owner_end = ttl_at - 4
        assert out[owner_end - 2] >= 0xC0  # glue owners point at the SRV targets
    assert len(out) < len(data)


def compressed_input() -> tuple[bytes, dict[str, int]]:
    """A message whose CNAME, MX, SOA and SRV RDATA hold pointers, behind an uncompressed owner (so
    re-encoding moves every later offset and copied pointers would land on the wrong octets)."""
    q = wn("Web.Example.com")
    buf = bytearray(struct.pack("!HHHHHH", 7, 0x8180, 1, 6, 1, 0) + q + b"\x00\x01\x00\x01")
    ex = 12 + 4  # "Example.com" inside the question
    at: dict[str, int] = {}

    def ptr(off: int) -> bytes:
        return bytes((0xC0 | off >> 8, off & 0xFF))

    # answer 1: full owner, CNAME -> x.Example.com (label + pointer)
    buf += wn("web.example.com") + struct.pack("!HHIH", 5, 1, 60, 4)
    at["cname_target"] = len(buf)
    buf += b"\x01x" + ptr(ex)
    # answer 2: owner points into the CNAME's RDATA; MX 10 mail.x.Example.com
    buf += ptr(at["cname_target"]) + struct.pack("!HHIH", 15, 1, 60, 9) + b"\x00\x0a"
    at["mx_target"] = len(buf)
    buf += b"\x04mail" + ptr(at["cname_target"])
    # answer 3: SRV whose target (illegally) points into the MX RDATA
    buf += ptr(at["cname_target"]) + struct.pack("!HHIH", 33, 1, 60, 6 + 4 + 2) + struct.pack("!HHH", 1, 2, 443)
    at["srv_target_at"] = len(buf)
    buf += b"\x03srv" + ptr(at["mx_target"])
    # answers 4-6: full owners again, so that the whole does shrink (the SRV target grows)
    buf += b"".join(a_rr(wn("web.example.com"), i) for i in range(3))
    # authority: SOA with both names compressed
    soa = b"\x03ns1" + ptr(ex) + b"\x04host" + ptr(at["cname_target"]) + struct.pack("!IIIII", 1, 2, 3, 4, 300)
    buf += ptr(ex) + struct.pack("!HHIH", 6, 1, 300, len(soa)) + soa
    return bytes(buf), at


def test_pointers_in_rdata_are_re_encoded() -> None:
    data, at = compressed_input()
    assert wire.walk(data) is not None
    out = wire.compress(data)
    assert out is not None and out != data
    assert records(out) == records(data)
    r = DNSRecord.parse(out)
    rdatas = [str(x.rdata) for x in r.rr[:3]]
    assert rdatas == ["x.Example.com.", "10 mail.x.Example.com.", "1 2 443 srv.mail.x.Example.com."]
    spans = rr_spans(out)
    srv_target = wire.read_name(data, at["srv_target_at"])
    assert srv_target is not None
    assert out[spans[2][1] - len(srv_target[0]) : spans[2][1]] == srv_target[0]  # decompressed
    cname_end, mx_end, soa_end = spans[0][1], spans[1][1], spans[6][1]
    assert out[cname_end - 2] >= 0xC0 and out[mx_end - 2] >= 0xC0  # still compressed
    assert out[soa_end - 22] >= 0xC0  # the SOA RNAME ends in a pointer
    assert wire.walk(out) is not None


def test_unknown_types_and_opt_are_copied_verbatim() -> None:
    weird = b"\xc0\x0c\x00\x01\x02"  # opaque: looks like a pointer, must stay as it is
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x06\x00\x0a\x00\x02\xab\xcd"  # OPT with a cookie-ish option
    data = message(wn(QNAME), [rr(wn(QNAME), 0xFF00, weird), a_rr(wn(QNAME), 1)], ar=[opt])
    out = wire.compress(data)
    assert out is not None
    assert weird + a_rr(b"\xc0\x0c", 1) + opt == out[12 + len(wn(QNAME)) + 4 + 2 + 10 :]


def test_tsig_messages_come_back_unchanged() -> None:
    tsig_rdata = wn("hmac-sha256") + b"\x00\x00\x00\x00\x00\x01\x01\x2c\x00\x00\x00\x07\x00\x00\x00\x00"
    data = a_answer(10)[:11] + b"\x01" + a_answer(10)[12:] + rr(wn("key"), 250, tsig_rdata, 0, 255)
    assert wire.walk(data) is not None and wire.walk(data).tsig  # type: ignore[union-attr]
    assert wire.compress(data) is data
    out = wire.truncate(data, 100)  # the MAC would not survive a cut: no records, as before
    r = DNSRecord.parse(out)
    assert r.header.tc and r.rr == [] and r.ar == []


def _malformed() -> list[tuple[str, bytes]]:
    good = a_answer(2)
    qend = 12 + len(wn(QNAME)) + 4
    here = qend
    mx_over = message(wn(QNAME), [rr(wn(QNAME), 15, b"\x00\x0a" + wn("mx") + b"\x00")])  # rdata past the name
    soa_short = message(wn(QNAME), ns=[rr(wn(QNAME), 6, wn("a") + wn("b") + b"\x00" * 19)])
    srv_cut = message(wn(QNAME), [rr(wn(QNAME), 33, b"\x00\x01\x00\x02\x00")])
    naptr_bad = message(wn(QNAME), [rr(wn(QNAME), 35, b"\x00\x01\x00\x02\x05ab")])
    return [
        ("short", good[:11]),
        ("self pointer", good[:here] + bytes((0xC0, here)) + good[here + len(wn(QNAME)) :]),
        ("forward pointer", good[:here] + bytes((0xC0, here + 2)) + good[here + len(wn(QNAME)) :]),
        ("pointer below the header", good[:here] + b"\xc0\x02" + good[here + len(wn(QNAME)) :]),
        ("rdata cut", good[:-1]),
        ("trailing", good + b"\x00"),
        ("count beyond the records", good[:7] + b"\x03" + good[8:]),
        ("label > 63", good[:here] + b"\x40" + good[here + 1 :]),
        ("OPT in the answer", message(wn(QNAME), [OPT])),
        ("two OPT", message(wn(QNAME), ar=[OPT, OPT])),
        ("OPT not root-owned", message(wn(QNAME), ar=[wn("x") + OPT[1:]])),
        ("MX rdata longer than its name", mx_over),
        ("SOA without 20 octets", soa_short),
        ("SRV cut", srv_cut),
        ("NAPTR string past rdata", naptr_bad),
        ("CNAME name past rdata", message(wn(QNAME), [rr(wn(QNAME), 5, b"\x03abc")])),
    ]


@pytest.mark.parametrize(("case", "data"), _malformed())
def test_compress_rejects_malformed(case: str, data: bytes) -> None:
    assert wire.compress(data) is None, case
    out = wire.truncate(data, 40)  # the old answer: no records, TC
    if len(data) > 40:
        assert len(out) <= 40 and out[2] & 0x02 and out[6:10] == b"\x00\x00\x00\x00"
    else:
        assert out is data


# --------------------------------------------------------------------------------------------------
# truncate


@pytest.mark.parametrize("edns", [False, True])
@pytest.mark.parametrize("relayed", [False, True])
def test_truncate_40_a_records_for_a_512_octet_client(edns: bool, relayed: bool) -> None:
    data = a_answer(40, opt=OPT if edns else b"")
    if not relayed:
        data = bytes(DNSRecord.parse(data).pack())  # dnslib compresses the owners
    out = wire.truncate(data, 512)
    question = len(wn(QNAME)) + 4
    opt = len(OPT) if edns else 0
    n = (512 - 12 - question - opt) // 16  # 16 = 2 (pointer) + 10 + 4 (IPv4) per A record
    assert n == (28 if edns else 29)
    assert len(out) == 12 + question + 16 * n + opt <= 512
    r = DNSRecord.parse(out)
    assert r.header.tc and r.header.id == 0x4242 and r.header.qr and r.header.rd and r.header.ra
    assert r.rr == DNSRecord.parse(data).rr[:n]
    assert struct.unpack("!HHHH", out[4:12]) == (1, n, 0, 1 if edns else 0)
    if edns:
        assert out.endswith(OPT) and r.ar[0].rtype == QTYPE.OPT and r.ar[0].edns_do
    else:
        assert r.ar == []


def test_truncate_reserves_room_for_the_opt_rr_as_told() -> None:
    data = a_answer(40, opt=OPT)
    none = wire.truncate(data, 512, b"")
    assert DNSRecord.parse(none).ar == [] and len(DNSRecord.parse(none).rr) == 29
    other = wire.opt_rr(4096, False)  # an OPT RR the answer did not carry
    mine = wire.truncate(a_answer(40), 512, other)
    assert mine.endswith(other) and len(DNSRecord.parse(mine).rr) == 28 and mine[10:12] == b"\x00\x01"


def test_a_fitting_answer_is_untouched_and_one_that_fits_compressed_goes_whole() -> None:
    small = a_answer(5, opt=OPT)
    assert wire.truncate(small, 512) is small
    data = a_answer(40, opt=OPT)  # 40 owners written out in full: over 1232 octets, not once compressed
    assert len(data) > 1232 >= len(wire.compress(data) or b"")
    out = wire.truncate(data, 1232)
    assert out == wire.compress(data) and not out[2] & 0x02
    tc_already = data[:2] + bytes((data[2] | 0x02,)) + data[3:]
    assert wire.truncate(tc_already, 1232)[2] & 0x02  # an upstream's TC is not cleared


def test_authority_and_additional_go_before_answers_are_cut() -> None:
    q = wn(QNAME)
    answers = [a_rr(q, i) for i in range(10)]
    auth = [rr(wn("ns.svc.cluster.local"), 2, wn(f"ns{i}.svc.cluster.local")) for i in range(3)]
    glue = [a_rr(wn(f"ns{i}.svc.cluster.local"), 100 + i) for i in range(3)]
    data = message(q, answers, auth, glue + [OPT])
    comp = wire.compress(data)
    assert comp is not None
    ends = [end for _, end in rr_spans(comp)]  # in the compressed form, OPT last
    full = DNSRecord.parse(comp)
    cases = [
        (ends[15] + len(OPT), 16, (10, 3, 3)),  # all of them: TC clear
        (ends[14] + len(OPT), 15, (10, 3, 2)),  # last glue dropped
        (ends[10] + len(OPT) + 3, 11, (10, 1, 0)),  # one NS: the next one does not fit
        (ends[9] + len(OPT), 10, (10, 0, 0)),  # answers only
        (ends[4] + len(OPT) + 15, 5, (5, 0, 0)),  # answers cut; 15 < 16 octets of the 6th
    ]
    for limit, k, (na, nn, nx) in cases:
        out = wire.truncate(data, limit)
        assert len(out) <= limit
        r = DNSRecord.parse(out)
        assert (len(r.rr), len(r.auth), len(r.ar)) == (na, nn, nx + 1), limit
        assert r.rr + r.auth + r.ar[:-1] == (full.rr + full.auth + full.ar[:-1])[:k]
        assert bool(r.header.tc) == (k < 16) and out.endswith(OPT)


def test_when_the_question_does_not_fit_the_old_answer_is_given() -> None:
    data = a_answer(40, opt=OPT)
    question = 12 + len(wn(QNAME)) + 4
    tc = bytes((data[2] | 2, data[3]))
    exact = wire.truncate(data, question + len(OPT))  # room for no record at all
    assert exact == data[:2] + tc + b"\x00\x01\x00\x00\x00\x00\x00\x01" + data[12:question] + OPT
    tight = wire.truncate(data, question + len(OPT) - 1)  # question + OPT do not fit: header + OPT
    assert tight == data[:2] + tc + b"\x00\x00\x00\x00\x00\x00\x00\x01" + OPT
    assert len(wire.truncate(data, 20)) == 12


# --------------------------------------------------------------------------------------------------
# properties

NAMES = [QNAME, "a." + QNAME, "ns.svc.cluster.local", "other.example", "x.other.example", "_p._tcp." + QNAME]


@st.composite
def st_name(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(NAMES))
    mask = draw(st.integers(0, 2**40))  # random 0x20 spelling
    return wn("".join(c.upper() if mask >> (i % 40) & 1 else c for i, c in enumerate(text)))


@st.composite
def st_rr(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["A", "A", "A", "AAAA", "CNAME", "MX", "SRV", "TXT", "NS", "PTR", "SOA", "UNK"]))
    owner = draw(st_name())
    ttl = draw(st.integers(0, 86400))
    if kind == "A":
        rdata = draw(st.binary(min_size=4, max_size=4))
    elif kind == "AAAA":
        rdata = draw(st.binary(min_size=16, max_size=16))
    elif kind in ("CNAME", "NS", "PTR"):
        rdata = draw(st_name())
    elif kind == "MX":
        rdata = draw(st.binary(min_size=2, max_size=2)) + draw(st_name())
    elif kind == "SRV":
        rdata = draw(st.binary(min_size=6, max_size=6)) + draw(st_name())
    elif kind == "TXT":
        txt = draw(st.binary(max_size=40))
        rdata = bytes((len(txt),)) + txt
    elif kind == "SOA":
        rdata = draw(st_name()) + draw(st_name()) + draw(st.binary(min_size=20, max_size=20))
    else:
        return rr(owner, 0xFF01, draw(st.binary(min_size=1, max_size=30)), ttl)  # dnslib refuses empty RDATA
    return rr(owner, TYPES[kind], rdata, ttl)


@st.composite
def st_message(draw: st.DrawFn) -> bytes:
    an = draw(st.lists(st_rr(), min_size=3, max_size=60))
    ns = draw(st.lists(st_rr(), max_size=4))
    ar = draw(st.lists(st_rr(), max_size=6))
    if draw(st.booleans()):
        ar.append(wire.opt_rr(draw(st.integers(512, 4096)), draw(st.booleans())))
    data = message(draw(st_name()), an, ns, ar, qid=draw(st.integers(0, 0xFFFF)))
    if draw(st.booleans()):
        data = bytes(DNSRecord.parse(data).pack())  # dnslib's own compression as the input
    return data


PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(st_message())
def test_compress_round_trips(data: bytes) -> None:
    out = wire.compress(data)
    assert out is not None
    assert len(out) <= len(data) and out[:12] == data[:12]
    assert records(out) == records(data)
    assert wire.walk(out) is not None
    assert wire.compress(out) is out  # deterministic: a second pass finds nothing to gain


@st.composite
def st_cut(draw: st.DrawFn) -> tuple[bytes, int]:
    """A message and a limit: mostly below its size (as large answers meet small clients)."""
    data = draw(st_message())
    w = wire.walk(data)
    assert w is not None
    # Mostly somewhere past the question, drawn uniformly: hypothesis's own integers favour the low end.
    low = w.qend + 11
    rnd = draw(st.randoms(use_true_random=True))  # seeded by hypothesis, but uniform
    pick = draw(st.sampled_from(["above", "above", "above", "low", "fixed"]))
    if pick == "above":
        limit = rnd.randint(low, rnd.choice([len(data) // 3, len(data)]) + 64)
    elif pick == "low":
        limit = rnd.randint(12, low)
    else:
        limit = rnd.choice([512, 1232])
    return data, limit


@PROPS
@given(st_cut(), st.sampled_from(["keep", "none", "other"]))
def test_truncate_keeps_a_maximal_prefix_of_whole_records(cut: tuple[bytes, int], how: str) -> None:
    data, limit = cut
    own = wire.walk(data)
    assert own is not None
    mine = wire.opt_rr(1232, True)
    opt: bytes | object = {"keep": wire.KEEP, "none": b"", "other": mine}[how]
    o = {"keep": data[own.opt[0] : own.opt[1]] if own.opt else b"", "none": b"", "other": mine}[how]
    out = wire.truncate(data, limit, opt)
    assert len(out) <= limit
    r = DNSRecord.parse(out)
    if len(data) <= limit:
        event("fits as it is")
        assert out is data
        return
    # The re-encoding truncate cuts (what compress returns unless that is not shorter than the input).
    packed = wire._pack(data, True)
    assert packed is not None
    comp = bytes(packed[0])
    full = DNSRecord.parse(comp)
    assert [full.rr, full.auth, full.ar] == records(data)
    every = full.rr + full.auth + [x for x in full.ar if x.rtype != QTYPE.OPT]
    kept = r.rr + r.auth + [x for x in r.ar if x.rtype != QTYPE.OPT]
    if own.qend + len(o) > limit:  # not even the question: the answer without records
        event("not even the question")
        assert not kept and r.header.tc
        return
    ends = [end for _, end in rr_spans(comp)]  # OPT is last in these messages, so not in between
    fits = [e for e in ends if e + len(o) <= limit]
    expected = len(every) if ends and ends[-1] + len(o) <= limit else len(fits)
    assert len(kept) == expected  # as many as fit, and no more
    event("whole once compressed" if expected == len(every) else "cut" if expected else "no record fits")
    assert kept == every[: len(kept)]
    # a prefix section by section: authority only after every answer, additional after all authority
    assert r.rr == full.rr[: len(r.rr)]
    assert not r.auth or len(r.rr) == len(full.rr)
    assert r.auth == full.auth[: len(r.auth)]
    assert len(r.ar) == len(kept) - len(r.rr) - len(r.auth) + (1 if o else 0)
    assert bool(r.header.tc) == (len(kept) < len(every))
    assert out.endswith(o)
    if o:
        assert r.ar[-1].rtype == QTYPE.OPT
    else:
        assert all(x.rtype != QTYPE.OPT for x in r.ar)


@PROPS
@given(st_message(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
def test_damaged_messages_never_raise(data: bytes, hits: list[tuple[int, int]]) -> None:
    buf = bytearray(data)
    for pos, value in hits:
        buf[pos % len(buf)] = value
    bad = bytes(buf)
    out = wire.compress(bad)
    if out is not None:  # compress is at least as strict as walk, and its output walks
        assert wire.walk(bad) is not None and wire.walk(out) is not None
    for limit in (12, 100, 512):
        t = wire.truncate(bad, limit)
        assert len(t) <= limit
        if len(bad) > limit:  # cut (TC), or whole once compressed
            assert t[2] & 0x02 or (out is not None and len(t) < len(bad) and wire.walk(t) is not None)
