"""Regenerate the fuzz corpus: `.venv/bin/python tests/corpus/make_corpus.py`.

q_*.bin are queries, r_*.bin responses; "bad" ones are malformed on purpose. Files are small and kept
in the repo so the fuzz tests (tests/unit/dns/test_fuzz_wire.py) mutate the same seeds everywhere.
"""

from __future__ import annotations

import struct
from pathlib import Path

from dnslib import (
    CLASS,
    CNAME,
    EDNS0,
    QTYPE,
    RCODE,
    RR,
    SOA,
    A,
    DNSHeader,
    DNSQuestion,
    DNSRecord,
    EDNSOption,
)

HERE = Path(__file__).parent


def q(
    name: str, qtype: int | str = "A", *, qid: int = 0x1001, edns: EDNS0 | None = None, qclass: int = 1
) -> bytes:
    t = getattr(QTYPE, qtype) if isinstance(qtype, str) else qtype
    rec = DNSRecord(DNSHeader(id=qid, rd=1), q=DNSQuestion(name, t, qclass))
    if edns is not None:
        rec.add_ar(edns)
    return bytes(rec.pack())


def hdr(qd: int, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x0100, qid: int = 0x2002) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def main() -> None:
    l63 = "a" * 63
    files: dict[str, bytes] = {
        "q_a_plain": q("web.default.svc.cluster.local"),
        "q_aaaa_edns": q("web.default.svc.cluster.local", "AAAA", edns=EDNS0(udp_len=1232)),
        "q_edns_do_cookie": q(
            "example.com", "A", edns=EDNS0(udp_len=4096, flags="do", opts=[EDNSOption(10, b"\x01" * 8)])
        ),
        "q_0x20": q("WeB.DeFaUlT.sVc.ClUsTeR.lOcAl", "A"),
        "q_63label": q(f"{l63}.example", "A"),
        "q_255name": q(".".join([l63, l63, l63, "b" * 61]), "A"),
        "q_ch_txt_version_bind": q("version.bind", "TXT", qclass=CLASS.CH),
        "q_unknown_type_class": q("odd.example", 65280, qclass=254),
        "q_bad_64label": hdr(1) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
        "q_bad_zero_questions": hdr(0),
        "q_bad_two_questions": hdr(2) + b"\x01a\x00\x00\x01\x00\x01" + b"\x01b\x00\x00\x01\x00\x01",
        "q_bad_compressed_qname": hdr(1) + b"\xc0\x0c\x00\x01\x00\x01",
        "q_bad_truncated": q("web.default.svc.cluster.local")[:20],
        "q_opt_version1": q("example.com", edns=EDNS0(udp_len=1232, version=1)),
    }
    # responses
    ques = q("web.default.svc.cluster.local")
    r = DNSRecord.parse(ques).reply()
    r.add_answer(RR("web.default.svc.cluster.local", QTYPE.A, rdata=A("10.96.0.10"), ttl=30))
    r.add_ar(EDNS0(udp_len=1232))
    files["r_a_answer_edns"] = bytes(r.pack())

    nx = DNSRecord.parse(q("missing.default.svc.cluster.local")).reply()
    nx.header.rcode = RCODE.NXDOMAIN
    nx.add_auth(
        RR(
            "cluster.local",
            QTYPE.SOA,
            rdata=SOA("ns.dns.cluster.local", "hostmaster.cluster.local", (1, 7200, 1800, 86400, 30)),
            ttl=30,
        )
    )
    files["r_nxdomain_soa"] = bytes(nx.pack())

    nd = DNSRecord.parse(q("web.default.svc.cluster.local", "AAAA")).reply()
    nd.add_auth(RR("cluster.local", QTYPE.SOA, rdata=SOA("ns.dns", "h.dns", (1, 2, 3, 4, 5)), ttl=60))
    files["r_nodata_soa"] = bytes(nd.pack())

    cn = DNSRecord.parse(q("www.example.com")).reply()
    cn.add_answer(RR("www.example.com", QTYPE.CNAME, rdata=CNAME("edge.example.net"), ttl=300))
    cn.add_answer(RR("edge.example.net", QTYPE.CNAME, rdata=CNAME("www.example.com"), ttl=300))
    cn.add_answer(RR("edge.example.net", QTYPE.A, rdata=A("192.0.2.1"), ttl=20))
    files["r_cname_chain_compressed"] = bytes(cn.pack())

    sf = DNSRecord.parse(q("broken.example")).reply()
    sf.header.rcode = RCODE.SERVFAIL
    files["r_servfail"] = bytes(sf.pack())

    big = DNSRecord.parse(q("many.example")).reply()
    for i in range(40):
        big.add_answer(RR("many.example", QTYPE.A, rdata=A(f"198.51.100.{i}"), ttl=60))
    files["r_big_40_answers"] = bytes(big.pack())

    base = hdr(1, 1, flags=0x8180) + b"\x01a\x00\x00\x01\x00\x01"
    rr_tail = b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"
    files["r_bad_ptr_self_loop"] = base + bytes((0xC0, len(base))) + rr_tail
    files["r_bad_ptr_mutual_loop"] = (
        hdr(1, 1, flags=0x8180) + b"\x01a\xc0\x12\x00\x01\x00\x01" + b"\xc0\x0e" + rr_tail
    )
    files["r_bad_ptr_oob"] = base + b"\xff\xff" + rr_tail
    files["r_bad_ptr_forward"] = base + bytes((0xC0, len(base) + 2)) + rr_tail
    files["r_bad_truncated_rdata"] = files["r_a_answer_edns"][:-14]
    files["r_bad_opt_in_answer"] = (
        hdr(1, 1, flags=0x8180)
        + b"\x01a\x00\x00\x01\x00\x01"
        + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")
    )
    for name, data in files.items():
        (HERE / f"{name}.bin").write_bytes(data)
    print(f"wrote {len(files)} files to {HERE}")


if __name__ == "__main__":
    main()
