"""Answers: `Answer` and `AnswerKind` (the contract with the responder, see the package docstring) and
the records built from compiled data, following CNAME chains through table names.

Records are built per lookup, not compiled: address answers are shuffled per answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from node_agent.dns.build import Record, record
from node_agent.dns.consts import Type
from node_agent.mesh.table.compile import Compiler, Data
from node_agent.mesh.table.index import Index

MAX_CNAME_CHAIN = 8
DNS_VERSION_TTL = 28800  # the spec's example and CoreDNS's fixed TTL for dns-version.<zone>


class AnswerKind(Enum):
    RECORDS = "records"
    NXDOMAIN = "nxdomain"
    FORWARD = "forward"
    SEARCH_CNAME = "search_cname"


@dataclass(frozen=True)
class Answer:
    kind: AnswerKind
    records: tuple[Record, ...] = ()
    target: str = ""  # external name the responder resolves upstream and appends
    authoritative: bool = True
    # The order of the address records carries meaning (multicluster: the local cluster's first): the
    # cache must not rotate them.
    ordered: bool = False
    # Additional section (the zone's NS answer carries the name server's address).
    additional: tuple[Record, ...] = ()


FORWARD = Answer(AnswerKind.FORWARD, authoritative=False)
NXDOMAIN = Answer(AnswerKind.NXDOMAIN)


def soa(index: Index, qname: str) -> Record:
    """The SOA record of the zone `qname` falls in: the cluster domain's (the apex answer, and the
    authority of negative answers under it), else the parent of qname, as Resolver._soa makes it.
    MNAME ns.dns.<zone> and RNAME hostmaster.<zone> as CoreDNS; the minimum is the table TTL."""
    name = qname.lower().rstrip(".")
    domain, ttl = index.domain, index.settings.ttl
    zone = domain if index.in_domain(name) else (name.split(".", 1)[-1] if "." in name else ".")
    mname = f"ns.dns.{domain}"
    rname = f"hostmaster.{domain}"
    return record(zone, Type.SOA, (mname, rname, (1, 7200, 1800, 86400, ttl)), ttl)


def cname(name: str, target: str, ttl: int) -> Record:
    return record(name, Type.CNAME, target, ttl)


def records(names: Compiler, name: str, data: Data, qtype: int) -> list[Record]:
    """The records of `name` of type qtype (empty: NODATA)."""
    ttl = names.settings.ttl
    if qtype == Type.A or qtype == Type.AAAA:
        addrs = data.v4 if qtype == Type.A else data.v6
        if len(addrs) > 1:
            if not data.ranked:
                addrs = tuple(random.sample(addrs, len(addrs)))
            elif tier := (data.tier4 if qtype == Type.A else data.tier6):
                head, rest = addrs[:tier], addrs[tier:]
                addrs = tuple(random.sample(head, len(head)) + random.sample(rest, len(rest)))
        return [record(name, qtype, a, ttl) for a in addrs]
    if qtype == Type.SRV:
        return [record(name, Type.SRV, srv, ttl) for srv in data.srv]
    if qtype == Type.PTR:
        return [record(name, Type.PTR, t, ttl) for t in data.ptr]
    if qtype == Type.TXT:
        return [record(name, Type.TXT, t, DNS_VERSION_TTL) for t in data.txt]
    if qtype == Type.SOA and data.soa:
        return [soa(names.index, name)]
    if qtype == Type.NS:
        return [record(name, Type.NS, t, ttl) for t in data.ns]
    return []  # a type the name lacks: NODATA (istio#31250), never NXDOMAIN


def answer(names: Compiler, name: str, data: Data, qtype: int, namespace: str, depth: int = 0) -> Answer:
    """The answer of a table name, following its CNAME through table names."""
    if not data.cname:
        rrs = tuple(records(names, name, data, qtype))
        if qtype == Type.NS and data.ns:
            return Answer(AnswerKind.RECORDS, rrs, additional=_glue(names, data.ns, namespace))
        return Answer(AnswerKind.RECORDS, rrs, ordered=data.ranked)
    target = data.cname
    alias = cname(name, target, names.settings.ttl)
    if qtype == Type.CNAME:
        return Answer(AnswerKind.RECORDS, (alias,))
    tdata = names.find(target, namespace) if depth < MAX_CNAME_CHAIN else None
    if tdata is not None:
        sub = answer(names, target, tdata, qtype, namespace, depth + 1)
        return Answer(sub.kind, (alias,) + sub.records, sub.target, sub.authoritative, sub.ordered)
    if names.authoritative_nx(target):
        return Answer(AnswerKind.NXDOMAIN, (alias,))
    # The target is outside the table: SEARCH_CNAME is the kind that carries "resolve `target`
    # upstream and append", whether the CNAME came from the search path or an ExternalName.
    return Answer(AnswerKind.SEARCH_CNAME, (alias,), target=target, authoritative=False)


def _glue(names: Compiler, servers: tuple[str, ...], namespace: str) -> tuple[Record, ...]:
    out: list[Record] = []
    for server in servers:
        data = names.find(server, namespace)
        if data is not None:
            out += records(names, server, data, Type.A) + records(names, server, data, Type.AAAA)
    return tuple(out)
