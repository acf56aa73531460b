"""Building DNS records and messages the slow way (dnslib): table answers, error-free parsing of
upstream answers for the slow paths. The only module of the agent that imports dnslib; the hot path
never comes here (it works on raw bytes, node_agent.dns.wire)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeAlias

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RR, SOA, SRV, TXT, A, DNSLabel, DNSRecord

from node_agent.dns.consts import Type

Record: TypeAlias = RR  # one resource record; owner names are lower case, the responder copies the question's case

_RDATA: dict[int, Any] = {
    Type.A: A,
    Type.AAAA: AAAA,
    Type.CNAME: CNAME,
    Type.PTR: PTR,
    Type.NS: NS,
    Type.TXT: TXT,
}


def record(name: str, rtype: int, value: Any, ttl: int) -> Record:
    """A record of `rtype`: A/AAAA take an address, CNAME/PTR/NS a name, TXT a string, SRV a
    (priority, weight, port, target) tuple, SOA a (mname, rname, (serial, refresh, retry, expire,
    minimum)) tuple."""
    if rtype == Type.SRV:
        rdata: Any = SRV(*value)
    elif rtype == Type.SOA:
        mname, rname, times = value
        rdata = SOA(mname, rname, times)
    else:
        rdata = _RDATA[rtype](value)
    return RR(name, rtype, rdata=rdata, ttl=ttl)


def target(rr: Record) -> str:
    """The name a CNAME/PTR/NS record points at, lower case, without the trailing dot."""
    return str(rr.rdata).rstrip(".").lower()


def qtype_name(qtype: int) -> str:
    """The mnemonic of a record type ("A", "SRV", ...); a number dnslib does not name comes out as
    its digits ("65000"), as dnslib spells it."""
    name = QTYPE.get(qtype, None)
    return str(name) if isinstance(name, str) else "other"


def table_reply(query: bytes, answers: Sequence[Record], authority: Sequence[Record],
                additional: Sequence[Record], rcode: int, aa: bool) -> bytes:
    """The reply to `query` (its ID, question in lower case, and RD; RA set, AD clear: nothing here is
    validated) with these sections in this order, as wire bytes (dnslib's bytearray). Carries no OPT
    RR: the cache fits EDNS and the client's spelling to each client when it formats the answer.
    The question is lower-cased as the table's names are, so that every name the records share with
    it is compressed to a pointer into it (dnslib compresses only names of the same case) and reads
    as each client spelled its question."""
    request = DNSRecord.parse(query)
    request.q.qname = DNSLabel([label.lower() for label in request.q.qname.label])
    reply = request.reply(aa=1 if aa else 0, ra=1)
    reply.header.rd = request.header.rd
    reply.header.ad = 0  # dnslib echoes the query's AD bit
    for rr in answers:
        reply.add_answer(rr)
    for rr in authority:
        reply.add_auth(rr)
    for rr in additional:
        reply.add_ar(rr)
    reply.header.rcode = rcode
    return reply.pack()


class Sections(NamedTuple):
    rcode: int  # the header's 4 bits
    answer: list[Record]
    authority: list[Record]


def parse_sections(response: bytes) -> Sections:
    """The RCODE, answer and authority records of a response; raises on a packet dnslib cannot parse."""
    msg = DNSRecord.parse(response)
    return Sections(msg.header.rcode, msg.rr, msg.auth)


def request_shape(query: bytes) -> tuple[int, int] | None:
    """(opcode, number of questions) of a query, or None when dnslib cannot parse it."""
    try:
        request = DNSRecord.parse(query)
    except Exception:
        return None
    return request.header.opcode, len(request.questions)


def addresses(response: bytes, qtype: int) -> tuple[int, list[tuple[str, int]]]:
    """The RCODE of an answer to an A or AAAA question and its answer records of that type as
    (address, TTL), in answer order (CNAMEs before them are skipped); raises on a packet dnslib
    cannot parse."""
    msg = DNSRecord.parse(response)
    return msg.header.rcode, [(str(rr.rdata), rr.ttl) for rr in msg.rr if rr.rtype == qtype]
