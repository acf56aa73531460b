"""Building DNS records and messages the slow way (dnslib): table answers, error-free parsing of
upstream answers for the slow paths. The only module of the agent that imports dnslib; the hot path
never comes here (it works on raw bytes, node_agent.dns.wire)."""

from __future__ import annotations

from typing import Any, TypeAlias

from dnslib import AAAA, CNAME, NS, PTR, RR, SOA, SRV, TXT, A

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
