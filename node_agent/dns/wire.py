"""Raw DNS wire helpers for the hot path: no dnslib, no str conversions, few Python operations.

Query side
----------
`parse_query(data)` returns either a `Query` (a plain, fully validated standard query the fast path
may answer) or a `Verdict`:

* `Verdict.DROP`    - do not answer at all (shorter than an ID, or a response (QR=1) sent to us).
* `Verdict.FORMERR` - malformed: answer with `formerr(data)`.
* `Verdict.SLOW`    - legal but unusual (opcode != 0, ARCOUNT > 1, TSIG, EDNS version != 0, trailing
  bytes, TC or RCODE set in a query, ...): hand the packet to the dnslib slow path.

Tell them apart with ``type(r) is Query`` (or ``isinstance(r, Verdict)``); `Verdict` members are ints.

Response side
-------------
* `formerr` / `servfail` / `refused` / `notimp` / `badvers` / `error_response` build error answers
  that echo the ID (and the question plus an OPT RR when the query parses).
* `compress(msg)` re-encodes a message with name compression (relayed answers may come without it).
* `truncate(response, limit)` fits an oversized UDP answer: compressed, then as many whole records as
  fit (answer, authority, additional) plus the OPT RR, with TC set when any record was dropped.
* `walk(response)` walks every RR (compression pointers must point strictly backwards and inside the
  packet, so loops and out-of-bounds pointers are rejected) and reports TTL offsets, min TTL, the
  RFC 2308 negative TTL from the authority SOA, and where the OPT RR is.

Upstream side
-------------
* `query(...)` builds the agent's own recursive query (with an OPT RR); `question_of(packet)` finds
  a forwarded packet's question; `match_reply(...)` says whether a reply answers a query (ID, QR,
  opcode, the echoed question, to the letter under 0x20).

Names (reading, skipping, encoding, the question walk) are node_agent.dns.names'; `read_name`,
`skip_name` and `name_to_text` are re-exported here. Protocol numbers are node_agent.dns.consts'.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from enum import IntEnum
from typing import NamedTuple

from node_agent.dns.consts import Class, Rcode, Type
from node_agent.dns.names import MAX_NAME, name_to_text, question_end, read_name, skip_name
from node_agent.settings import EDNS_PAYLOAD

__all__ = [
    "CLASS_IN",
    "DEFAULT_PAYLOAD",
    "KEEP",
    "RCODE_BADVERS",
    "RCODE_FORMERR",
    "RCODE_NOERROR",
    "RCODE_NOTIMP",
    "RCODE_NXDOMAIN",
    "RCODE_REFUSED",
    "RCODE_SERVFAIL",
    "REPLY_BAD",
    "REPLY_CASE_ONLY",
    "REPLY_OK",
    "TYPE_OPT",
    "TYPE_SOA",
    "TYPE_TSIG",
    "Edns",
    "Query",
    "Verdict",
    "Walk",
    "badvers",
    "compress",
    "error_response",
    "formerr",
    "match_reply",
    "name_to_text",
    "notimp",
    "opt_rr",
    "parse_query",
    "query",
    "question_of",
    "read_name",
    "refused",
    "servfail",
    "skip_name",
    "truncate",
    "udp_limit",
    "walk",
]

# The numbers are consts.py's; these module names are plain ints (what the loops here compare bytes
# with: an int subclass misses CPython's int-int comparison fast path) and what other modules read
# as wire.RCODE_SERVFAIL and so on.
TYPE_SOA, TYPE_OPT, TYPE_TSIG = Type.SOA.value, Type.OPT.value, Type.TSIG.value
CLASS_IN = Class.IN.value
RCODE_NOERROR, RCODE_FORMERR, RCODE_SERVFAIL = Rcode.NOERROR.value, Rcode.FORMERR.value, Rcode.SERVFAIL.value
RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = Rcode.NXDOMAIN.value, Rcode.NOTIMP.value, Rcode.REFUSED.value
RCODE_BADVERS = Rcode.BADVERS.value

DEFAULT_PAYLOAD = EDNS_PAYLOAD  # the EDNS UDP size we advertise (settings.py)


class Verdict(IntEnum):
    """Why `parse_query` declined a packet (see the module docstring)."""

    DROP = 0
    FORMERR = 1
    SLOW = 2


DROP = Verdict.DROP
FORMERR = Verdict.FORMERR
SLOW = Verdict.SLOW


class Edns(NamedTuple):
    """The client's OPT RR. `payload` is its UDP size floored at 512."""

    payload: int
    do: bool
    version: int
    options: bool  # any EDNS option (cookie, ECS, padding, ...) present


class Query(NamedTuple):
    """A standard query accepted by the fast path.

    idb:    the 2 ID bytes as received (``id`` gives the int).
    qname:  the qname wire bytes exactly as asked (0x20 spelling), with the terminating zero octet.
    key:    ``qname.lower()`` (ASCII-only lowering, as DNS requires); the cache key part.
    qtype, qclass: ints, not validated (meta types/classes are the caller's business).
    rd, cd: header flags.
    edns:   the client's OPT RR, or None when ARCOUNT == 0.
    do:     the DO bit (False without EDNS).
    qend:   offset just past the question (``data[12:qend]`` is the question section).
    hv:     rd | cd << 1 | (edns is not None) << 2, a 0..7 index the cache uses to pick a header.
    ck:     key + qtype (2 octets) + qclass (2) + DO (1 octet): the cache key part (bytes cache their
            hash, and memoised queries share this object).
    """

    idb: bytes
    qname: bytes
    key: bytes
    qtype: int
    qclass: int
    rd: bool
    cd: bool
    edns: Edns | None
    do: bool
    qend: int
    hv: int
    ck: bytes

    @property
    def id(self) -> int:
        return (self.idb[0] << 8) | self.idb[1]


_tnew = tuple.__new__
_COUNTS_NOEDNS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_COUNTS_EDNS = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_EDNS_MEMO: dict[bytes, Edns] = {}  # 11-byte option-less OPT RRs -> Edns; bounded below
_EDNS_MEMO_MAX = 256


def _classify(data: bytes) -> Verdict:
    """The verdict for a packet whose header is not the plain one the fast path expects."""
    n = len(data)
    if n < 2:
        return DROP
    if n < 12:
        return FORMERR
    if data[2] & 0x80:  # a response: never answer it (no loops, no reflection)
        return DROP
    if data[2] & 0x7A or data[3] & 0x0F:  # opcode != QUERY (NOTIMP), TC or RCODE set in a query
        return SLOW
    qd = (data[4] << 8) | data[5]
    an = (data[6] << 8) | data[7]
    ns = (data[8] << 8) | data[9]
    if qd != 1 or an or ns:
        return FORMERR
    return SLOW  # ARCOUNT > 1 (OPT + TSIG, ...): the only way here with the counts above


def _parse_opt(rr: bytes) -> Edns | Verdict:
    """Parse the single additional RR of a query, which must be exactly `rr` (to the packet end)."""
    n = len(rr)
    if n < 11:
        return FORMERR
    if rr[0] != 0:
        # Not a root owner: an OPT here is malformed (RFC 6891 6.1.1), anything else (TSIG, SIG(0))
        # is for the slow path.
        end = skip_name(rr, 0, 0)
        if end < 0 or end + 10 > n:
            return FORMERR
        return FORMERR if rr[end] == 0 and rr[end + 1] == TYPE_OPT else SLOW
    if rr[1] != 0 or rr[2] != TYPE_OPT:
        return SLOW
    rdlen = (rr[9] << 8) | rr[10]
    if 11 + rdlen != n:
        return FORMERR
    i = 11
    while i < n:  # option TLVs must tile the RDATA exactly
        if i + 4 > n:
            return FORMERR
        i += 4 + ((rr[i + 2] << 8) | rr[i + 3])
    if i != n:
        return FORMERR
    version = rr[6]
    if version != 0:
        return SLOW  # BADVERS: see badvers()
    payload = (rr[3] << 8) | rr[4]
    return Edns(payload if payload > 512 else 512, bool(rr[7] & 0x80), version, rdlen > 0)


def parse_query(data: bytes) -> Query | Verdict:
    """Validate and dissect a query (`data` as received: bytes); see `Query` and `Verdict`.

    Accepts: QR=0, opcode 0, TC=0, RCODE=0, QDCOUNT=1, ANCOUNT=NSCOUNT=0, ARCOUNT 0 or 1; an
    uncompressed qname (labels <= 63 octets, name <= 255 octets); with ARCOUNT=1 a well-formed OPT RR
    of version 0 with a root owner that ends the packet. No trailing bytes.

    Accepted packets are memoised by everything after the ID (a bounded dict), so a repeated query -
    the cache-hit case - costs one slice, one dict lookup and one tuple.
    """
    try:
        m = _QMEMO.get(data[2:])
    except TypeError:  # bytearray / memoryview
        return parse_query(bytes(data))
    if m is not None:
        return _tnew(Query, (data[:2], *m))  # type: ignore[no-any-return]
    return _parse_query(data)


_QMEMO: dict[bytes, tuple[object, ...]] = {}  # data[2:] -> Query fields after idb
_QMEMO_MAX = 8192  # entries; cleared wholesale when full (a few MB at most)
_QMEMO_MAX_LEN = 512  # only packets up to this size are memoised


def _parse_query(data: bytes) -> Query | Verdict:
    try:
        b2 = data[2]
        b3 = data[3]
        counts = data[4:12]
        if b2 & 0xFA or b3 & 0x0F or (counts != _COUNTS_NOEDNS and counts != _COUNTS_EDNS):
            return _classify(data)
        i = 12  # the qname walked inline: names.question_end would cost a call per query
        ln = data[12]
        while ln:
            if ln > 63:  # compression pointer or extended label type: not in a query's qname
                return FORMERR
            i += ln + 1
            ln = data[i]
        end = i + 1
        if end > 12 + MAX_NAME:
            return FORMERR
        qend = end + 4
        qtype = (data[end] << 8) | data[end + 1]
        qclass = (data[end + 2] << 8) | data[qend - 1]
        edns: Edns | None = None
        if counts[7]:
            rr = data[qend:]
            edns = _EDNS_MEMO.get(rr)
            if edns is None:
                r = _parse_opt(rr)
                if type(r) is not Edns:
                    return r  # type: ignore[return-value]
                edns = r
                if len(rr) == 11:
                    if len(_EDNS_MEMO) >= _EDNS_MEMO_MAX:
                        _EDNS_MEMO.clear()
                    _EDNS_MEMO[rr] = edns
            do = edns.do
            hv = 4
        else:
            if len(data) != qend:
                return SLOW  # trailing garbage: let the slow path decide
            do = False
            hv = 0
    except IndexError:
        return DROP if len(data) < 2 else FORMERR
    qname = data[12:end]
    key = qname.lower()
    if key == qname:
        key = qname  # one object: lets the cache skip the 0x20 copy by identity
    rd = b2 & 1
    cd = b3 & 0x10
    fields = (
        qname,
        key,
        qtype,
        qclass,
        rd == 1,
        cd != 0,
        edns,
        do,
        qend,
        hv | rd | (cd >> 3),
        key + data[end:qend] + (b"\x01" if do else b"\x00"),
    )
    if len(data) <= _QMEMO_MAX_LEN:  # big (padded, option-laden) queries would bloat the memo
        if len(_QMEMO) >= _QMEMO_MAX:
            _QMEMO.clear()
        _QMEMO[data[2:]] = fields
    return _tnew(Query, (data[:2], *fields))  # type: ignore[no-any-return]


def udp_limit(query: Query, max_udp: int = DEFAULT_PAYLOAD) -> int:
    """The largest UDP answer the client takes: 512 without EDNS, else min(its size, max_udp)."""
    e = query.edns
    if e is None:
        return 512
    p = e.payload
    return p if p < max_udp else max(max_udp, 512)


# --------------------------------------------------------------------------------------------------
# Our own queries (to the upstream servers) and the replies to them

# match_reply verdicts
REPLY_BAD = 0
REPLY_OK = 1
REPLY_CASE_ONLY = 2  # matches except for letter case: a server that does not preserve 0x20, or a spoof

_QUERY_HEADER = struct.Struct("!HHHHH")  # flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT after the ID
_QTYPE_QCLASS = struct.Struct("!HH")


def query(
    qid: bytes, qname: bytes, qtype: int, qclass: int, *, cd: bool, do: bool, payload: int
) -> tuple[bytes, bytes]:
    """(packet, its question section) of a recursive query (RD) for wire name `qname`, with CD as
    given and an option-less OPT RR advertising `payload` (DO as given). `qid`: the 2 ID octets."""
    question = qname + _QTYPE_QCLASS.pack(qtype, qclass)
    header = _QUERY_HEADER.pack(0x0110 if cd else 0x0100, 1, 0, 0, 1)
    return qid + header + question + opt_rr(payload, do), question


def question_of(packet: bytes) -> bytes | None:
    """The question section of a one-question packet whose name has no pointer, or None (then a
    reply can only be matched by its header)."""
    if len(packet) < 12 or packet[4:6] != b"\x00\x01":
        return None
    end = question_end(packet, 1, plain=True)
    return packet[12:end] if end > 0 else None


def match_reply(data: bytes, qid: bytes, opbits: int, question: bytes | None, exact: bool) -> int:
    """Does `data` answer the query with ID `qid`, opcode bits `opbits` (``query[2] & 0x78``) and
    question section `question` (None: not checked)? QR must be set and the question echoed, to the
    letter when `exact` (0x20). Returns REPLY_OK, REPLY_BAD, or REPLY_CASE_ONLY when `exact` and the
    echo matches only case-insensitively."""
    if len(data) < 12 or data[0:2] != qid or not data[2] & 0x80 or data[2] & 0x78 != opbits:
        return REPLY_BAD
    if question is None:
        return REPLY_OK
    if data[4:6] != b"\x00\x01":
        return REPLY_BAD
    got = data[12 : 12 + len(question)]
    if got == question:
        return REPLY_OK
    if got.lower() == question.lower():  # bytes.lower() only touches ASCII letters, like DNS
        return REPLY_CASE_ONLY if exact else REPLY_OK
    return REPLY_BAD


# --------------------------------------------------------------------------------------------------
# RR walking (names: node_agent.dns.names)


_COUNTS = struct.Struct("!4H")  # QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT at offset 4


class Walk(NamedTuple):
    """What `walk` learnt about a response (offsets are absolute in the packet)."""

    rcode: int  # header RCODE (4 bits)
    ext_rcode: int  # full 12-bit RCODE when an OPT RR is present, else == rcode
    qdcount: int
    ancount: int
    nscount: int
    arcount: int
    qend: int  # end of the question section
    ttl_offsets: list[int]  # TTL field offsets of every RR except OPT
    ttls: list[int]  # the TTLs at those offsets (values with the MSB set read as 0, RFC 2181 8)
    min_ttl: int | None  # min over ttls, None when there are no RRs
    neg_ttl: int | None  # min(SOA TTL, SOA MINIMUM) of the first SOA in authority (RFC 2308 5)
    opt: tuple[int, int] | None  # [start, end) of the OPT RR in the additional section
    do: bool  # DO bit of that OPT RR
    tsig: bool  # a TSIG RR is present (such answers must not be cached)


def walk(data: bytes) -> Walk | None:
    """Walk all sections of a message; None if anything is malformed.

    Rejects: short header, names as in `read_name` (every owner and SOA RDATA name is followed),
    RDATA beyond the packet, OPT outside the additional section / not root-owned / repeated, and
    trailing bytes after the last RR.
    """
    n = len(data)
    if n < 12:
        return None
    qd, an, ns, ar = _COUNTS.unpack_from(data, 4)
    i = 12
    for _ in range(qd):
        nm = read_name(data, i)
        if nm is None:
            return None
        i = nm[1] + 4
        if i > n:
            return None
    qend = i
    offs: list[int] = []
    ttls: list[int] = []
    neg: int | None = None
    opt: tuple[int, int] | None = None
    do = False
    tsig = False
    ext = data[3] & 0x0F
    an_end = an
    ns_end = an + ns
    for k in range(an + ns + ar):
        start = i
        nm = read_name(data, i)
        if nm is None:
            return None
        i = nm[1]
        if i + 10 > n:
            return None
        rtype = (data[i] << 8) | data[i + 1]
        rdlen = (data[i + 8] << 8) | data[i + 9]
        rd = i + 10
        rdend = rd + rdlen
        if rdend > n:
            return None
        if rtype == TYPE_OPT:
            if k < ns_end or opt is not None or nm[0] != b"\x00":
                return None
            opt = (start, rdend)
            ext |= data[i + 4] << 4
            do = bool(data[i + 6] & 0x80)
        else:
            ttl = (data[i + 4] << 24) | (data[i + 5] << 16) | (data[i + 6] << 8) | data[i + 7]
            if ttl & 0x80000000:
                ttl = 0
            offs.append(i + 4)
            ttls.append(ttl)
            if rtype == TYPE_SOA and an_end <= k < ns_end and neg is None:
                a = read_name(data, rd)
                b = read_name(data, a[1]) if a is not None and a[1] <= rdend else None
                if b is None or b[1] + 20 != rdend:
                    return None
                minimum = (
                    (data[rdend - 4] << 24)
                    | (data[rdend - 3] << 16)
                    | (data[rdend - 2] << 8)
                    | data[rdend - 1]
                )
                if minimum & 0x80000000:
                    minimum = 0
                neg = ttl if ttl < minimum else minimum
            elif rtype == TYPE_TSIG:
                tsig = True
        i = rdend
    if i != n:
        return None
    return Walk(
        data[3] & 0x0F, ext, qd, an, ns, ar, qend, offs, ttls, min(ttls) if ttls else None, neg, opt, do, tsig
    )


# --------------------------------------------------------------------------------------------------
# Response builders


# root owner, TYPE, CLASS (the UDP payload size), TTL (ext-rcode, version, flags), RDLENGTH
_OPT_RR = struct.Struct("!BHHBBHH")


def opt_rr(payload: int = DEFAULT_PAYLOAD, do: bool = False, ext_rcode: int = 0) -> bytes:
    """An option-less OPT RR (version 0)."""
    return _OPT_RR.pack(0, TYPE_OPT, payload & 0xFFFF, ext_rcode & 0xFF, 0, 0x8000 if do else 0, 0)


KEEP = object()  # truncate(): keep the response's own OPT RR


def error_response(
    data: bytes, rcode: int, query: Query | None = None, *, payload: int = DEFAULT_PAYLOAD
) -> bytes | None:
    """An error answer to `data`: ID, opcode, RD and CD echoed, QR and RA set, `rcode` (0..15, or
    BADVERS). When the query parses (or `query` is given) the question is echoed, and an OPT RR (DO
    echoed) is added if the client sent EDNS. None when there is no ID to echo."""
    if len(data) < 2:
        return None
    if query is None:
        r = parse_query(data)
        query = r if type(r) is Query else None
    ext = rcode >> 4
    b2 = 0x80 | (data[2] & 0x79) if len(data) > 2 else 0x80
    b3 = 0x80 | (data[3] & 0x10 if len(data) > 3 else 0) | (rcode & 0x0F)
    if query is None:
        if ext:
            return None
        return data[:2] + bytes((b2, b3, 0, 0, 0, 0, 0, 0, 0, 0))
    if query.edns is None:
        if ext:
            return None  # an extended rcode needs OPT
        return query.idb + bytes((b2, b3, 0, 1, 0, 0, 0, 0, 0, 0)) + data[12 : query.qend]
    return (
        query.idb
        + bytes((b2, b3, 0, 1, 0, 0, 0, 0, 0, 1))
        + data[12 : query.qend]
        + opt_rr(payload, query.edns.do, ext)
    )


def formerr(data: bytes) -> bytes | None:
    return error_response(data, RCODE_FORMERR)


def servfail(data: bytes, query: Query | None = None) -> bytes | None:
    return error_response(data, RCODE_SERVFAIL, query)


def refused(data: bytes, query: Query | None = None) -> bytes | None:
    return error_response(data, RCODE_REFUSED, query)


def notimp(data: bytes) -> bytes | None:
    return error_response(data, RCODE_NOTIMP)


def badvers(data: bytes) -> bytes | None:
    """BADVERS (RFC 6891 6.1.3) for a query whose OPT version is not 0 (`parse_query` says SLOW).

    Echoes ID and question, with our OPT RR (version 0, ext-rcode 1). None if the packet is not a
    plain query with an OPT RR of version != 0."""
    if len(data) < 12 or data[2] & 0xFA or data[10:12] != b"\x00\x01":
        return None
    qend = question_end(data, 1)
    if qend < 0 or data[qend - 5] != 0 or qend + 11 > len(data):
        return None
    rr = data[qend:]
    if rr[0] != 0 or rr[1] != 0 or rr[2] != TYPE_OPT or rr[6] == 0:
        return None
    b2 = 0x80 | (data[2] & 0x79)
    b3 = 0x80 | (data[3] & 0x10)
    return (
        data[:2]
        + bytes((b2, b3, 0, 1, 0, 0, 0, 0, 0, 1))
        + data[12:qend]
        + opt_rr(DEFAULT_PAYLOAD, bool(rr[7] & 0x80), 1)
    )


def _truncate_empty(response: bytes, limit: int, opt: bytes | object) -> bytes:
    """Header + question section (+ OPT) with TC=1 and AN=NS=0, or less when even that does not fit."""
    i = question_end(response, (response[4] << 8) | response[5])
    if opt is KEEP:
        w = walk(response)
        o = response[w.opt[0] : w.opt[1]] if w is not None and w.opt is not None else b""
    else:
        o = opt  # type: ignore[assignment]
    b2 = response[2] | 0x02
    ar = 1 if o else 0
    if i > 0:
        out = (
            response[:2]
            + bytes((b2, response[3]))
            + response[4:6]
            + bytes((0, 0, 0, 0, 0, ar))
            + (response[12:i] + o)
        )
        if len(out) <= limit:
            return out
    out = response[:2] + bytes((b2, response[3], 0, 0, 0, 0, 0, 0, 0, ar)) + o
    if len(out) <= limit:
        return out
    return response[:2] + bytes((b2, response[3], 0, 0, 0, 0, 0, 0, 0, 0))


def truncate(response: bytes, limit: int, opt: bytes | object = KEEP) -> bytes:
    """Fit a UDP answer into `limit` octets (exactly `limit`: callers pass `udp_limit`).

    Unchanged if it already fits. Else the answer is re-encoded with name compression (`compress`);
    if that fits, it goes out whole (TC as the response had it). Otherwise as many whole records as
    fit are kept - answer, then authority, then additional: a prefix of the record sequence, as
    miekg/dns Msg.Truncate keeps - with room reserved for the OPT RR, the counts rewritten and TC
    set. musl never retries over TCP, so a partial answer is all its pods ever get; glibc and others
    retry on TC.

    `opt`: KEEP the response's own OPT RR if it has one; or the OPT RR bytes to append (b"" for none).
    The OPT RR always goes last in the additional section.

    When the response does not parse as `compress` requires, carries a TSIG (whose MAC re-encoding
    would break) or even the question does not fit, the answer is header + question (+ OPT) with TC
    and no records; if that does not fit either, the question is dropped too.
    """
    if len(response) <= limit:
        return response
    if len(response) < 12:
        return response[:limit]
    p = _pack(response, False)
    if p is None or p[5]:
        return _truncate_empty(response, limit, opt)
    body, qend, ends, an, ns, _tsig, own_opt = p
    if opt is KEEP:
        o = own_opt
    else:
        o = opt  # type: ignore[assignment]
    room = limit - len(o)
    total = len(ends)
    if len(body) <= room:
        k = total
    elif qend > room:
        return _truncate_empty(response, limit, opt)
    else:
        k = bisect_right(ends, room)  # ends ascend: the records that end within room
    nan = k if k < an else an
    nns = k - nan if k - nan < ns else ns
    nar = k - nan - nns + (1 if o else 0)
    b2 = body[2] | 0x02 if k < total else body[2]
    end = ends[k - 1] if k else qend
    return (
        bytes((body[0], body[1], b2, body[3], body[4], body[5], nan >> 8, nan & 0xFF))
        + bytes((nns >> 8, nns & 0xFF, nar >> 8, nar & 0xFF))
        + body[12:end]
        + o
    )


# --------------------------------------------------------------------------------------------------
# Name compression

# RDATA layouts: a tuple of fields, each an int: > 0 that many octets, _NAME a domain name, _CSTR a
# <character-string>, _REST the remaining octets (possibly none). The fields must tile the RDATA.
_NAME = 0
_CSTR = -1
_REST = -2

# (compress the names?, layout) by type. True: the RFC 1035 types RFC 3597 section 4 lets us
# compress. False: types whose RDATA names must not be compressed (RFC 2782 SRV, RFC 6672 DNAME,
# RFC 3597 section 4 for RP/AFSDB/RT/KX/PX/NAPTR, RFC 4034 for RRSIG/NSEC, RFC 9460 SVCB/HTTPS,
# RFC 6742 LP); their names are decompressed when a sender compressed them anyway, since a pointer
# into the old packet would be wrong in ours. Every other type is opaque and copied verbatim.
# Keyed by plain ints: the lookups are by the int read from the packet.
_LAYOUT: dict[int, tuple[bool, tuple[int, ...]]] = {
    t.value: layout
    for t, layout in {
        Type.NS: (True, (_NAME,)),
        Type.MD: (True, (_NAME,)),
        Type.MF: (True, (_NAME,)),
        Type.CNAME: (True, (_NAME,)),
        Type.SOA: (True, (_NAME, _NAME, 20)),
        Type.MB: (True, (_NAME,)),
        Type.MG: (True, (_NAME,)),
        Type.MR: (True, (_NAME,)),
        Type.PTR: (True, (_NAME,)),
        Type.MINFO: (True, (_NAME, _NAME)),
        Type.MX: (True, (2, _NAME)),
        Type.RP: (False, (_NAME, _NAME)),
        Type.AFSDB: (False, (2, _NAME)),
        Type.RT: (False, (2, _NAME)),
        Type.SIG: (False, (18, _NAME, _REST)),
        Type.PX: (False, (2, _NAME, _NAME)),
        Type.NXT: (False, (_NAME, _REST)),
        Type.SRV: (False, (6, _NAME)),
        Type.NAPTR: (False, (4, _CSTR, _CSTR, _CSTR, _NAME)),
        Type.KX: (False, (2, _NAME)),
        Type.DNAME: (False, (_NAME,)),
        Type.RRSIG: (False, (18, _NAME, _REST)),
        Type.NSEC: (False, (_NAME, _REST)),
        Type.SVCB: (False, (2, _NAME, _REST)),
        Type.HTTPS: (False, (2, _NAME, _REST)),
        Type.LP: (False, (2, _NAME)),
    }.items()
}
_PTR_MAX = 0x3FFF  # a pointer's 14 bits: names past this offset cannot be pointed at


def _emit(out: bytearray, names: dict[bytes, int], wname: bytes, comp: bool) -> int:
    """Append uncompressed wire name `wname`, compressed against `names` when `comp`.

    `names` maps lower-cased wire suffixes to the offset of their first occurrence in `out`; every
    suffix written as labels here is added (later names may point into names written uncompressed,
    which is legal: only the pointing name must be of a compressible kind). Returns the offset a
    pointer to the whole name may use, or -1.
    """
    key = wname.lower()
    if comp:
        p = names.get(key)
        if p is not None:
            out.append(0xC0 | (p >> 8))
            out.append(p & 0xFF)
            return p
    base = len(out)
    j = 0
    starts: list[int] = []
    while True:
        ln = wname[j]
        if ln == 0:
            out += wname
            break
        if comp and j:
            p = names.get(key[j:])
            if p is not None:
                out += wname[:j]
                out.append(0xC0 | (p >> 8))
                out.append(p & 0xFF)
                break
        starts.append(j)
        j += ln + 1
    for s in starts:
        if base + s > _PTR_MAX:
            break
        names.setdefault(key[s:], base + s)
    return names.get(key, -1) if starts else -1


def _emit_name(
    out: bytearray, names: dict[bytes, int], moved: dict[int, int], nm: tuple[bytes, int], at: int
) -> int:
    """`_emit` the owner or question name `nm` (read_name's result for offset `at` of the old message)
    and note in `moved` where an equal name now is. Returns that offset when the old spelling had no
    pointer (the same octets met again are then the same name), else -1."""
    p = _emit(out, names, nm[0], True)
    if p < 0:
        return -1
    moved[at] = p
    return p if nm[1] - at == len(nm[0]) else -1


def _pack(msg: bytes, keep_opt: bool) -> tuple[bytearray, int, list[int], int, int, bool, bytes] | None:
    """Re-encode `msg` with name compression; None if malformed (the `walk` rules).

    Returns (message, end of the question section, end offset of every RR written in order, ANCOUNT,
    NSCOUNT, TSIG present?, the OPT RR's bytes or b""). With `keep_opt` the OPT RR is written where
    it stood; without, it is left out of the message (and of the offsets), so the caller can append
    it after a cut: no pointer ever targets it (its owner is the root, its RDATA holds no names), so
    leaving it out moves nothing another name points at.
    """
    n = len(msg)
    if n < 12:
        return None
    qd, an, ns, ar = _COUNTS.unpack_from(msg, 4)
    out = bytearray(msg[:12])
    names: dict[bytes, int] = {}
    moved: dict[int, int] = {}  # old offset of a name -> offset of an equal name in `out`
    lit = b""  # the last name read that had no pointer, and where an equal name is in `out`
    lit_p = -1
    i = 12
    for _ in range(qd):
        nm = read_name(msg, i)
        if nm is None or nm[1] + 4 > n:
            return None
        p = _emit_name(out, names, moved, nm, i)
        if p >= 0:
            lit, lit_p = nm[0], p
        i = nm[1]
        out += msg[i : i + 4]
        i += 4
    qend = len(out)
    ends: list[int] = []
    opt = b""
    seen_opt = False
    tsig = False
    ns_end = an + ns
    for k in range(an + ns + ar):
        start = i
        b = msg[i] if i < n else -1
        if b >= 0xC0 and i + 1 < n and (((b & 0x3F) << 8) | msg[i + 1]) in moved:
            # The common case: the owner is a pointer to a name already re-encoded.
            p = moved[((b & 0x3F) << 8) | msg[i + 1]]
            out.append(0xC0 | (p >> 8))
            out.append(p & 0xFF)
            i += 2
            owner_root = False
        elif lit_p >= 0 and msg.startswith(lit, i):
            # An uncompressed relay repeats the same owner: the same octets are the same name.
            out.append(0xC0 | (lit_p >> 8))
            out.append(lit_p & 0xFF)
            i += len(lit)
            owner_root = False
        else:
            nm = read_name(msg, i)
            if nm is None:
                return None
            owner_root = nm[0] == b"\x00"
            if owner_root:
                i = nm[1]
            else:
                p = _emit_name(out, names, moved, nm, start)
                if p >= 0:
                    lit, lit_p = nm[0], p
                i = nm[1]
        if i + 10 > n:
            return None
        rtype = (msg[i] << 8) | msg[i + 1]
        rd = i + 10
        rdend = rd + ((msg[i + 8] << 8) | msg[i + 9])
        if rdend > n:
            return None
        if rtype == TYPE_OPT:
            if k < ns_end or seen_opt or not owner_root:
                return None
            seen_opt = True
            opt = msg[start:rdend]
            if keep_opt:
                out += opt
                ends.append(len(out))
            i = rdend
            continue
        if owner_root:
            out.append(0)
        if rtype == TYPE_TSIG:
            tsig = True
        lay = _LAYOUT.get(rtype)
        if lay is None:
            out += msg[i:rdend]
        else:
            comp, fields = lay
            out += msg[i : i + 8]
            lenat = len(out)
            out += b"\x00\x00"
            j = rd
            for f in fields:
                if f > 0:
                    if j + f > rdend:
                        return None
                    out += msg[j : j + f]
                    j += f
                elif f == _NAME:
                    nm = read_name(msg, j)
                    if nm is None or nm[1] > rdend:
                        return None
                    _emit(out, names, nm[0], comp)
                    j = nm[1]
                elif f == _CSTR:
                    if j >= rdend or j + 1 + msg[j] > rdend:
                        return None
                    out += msg[j : j + 1 + msg[j]]
                    j += 1 + msg[j]
                else:
                    out += msg[j:rdend]
                    j = rdend
            if j != rdend:
                return None
            rdlen = len(out) - lenat - 2
            out[lenat] = rdlen >> 8
            out[lenat + 1] = rdlen & 0xFF
        i = rdend
        ends.append(len(out))
    if i != n:
        return None
    return out, qend, ends, an, ns, tsig, opt


def compress(msg: bytes) -> bytes | None:
    """`msg` re-encoded with DNS name compression (RFC 1035 4.1.4), or None if malformed.

    The header is kept as it is (counts included); the question and every RR follow in their order.
    Owner names are compressed against all earlier names, matching suffixes case-insensitively (so
    pointers lead to the first spelling: the question's). RDATA names are compressed only for the
    types RFC 3597 section 4 allows; names of the other name-holding types in `_LAYOUT` are written
    uncompressed (decompressed if the sender compressed them), other RDATA is copied verbatim. The
    OPT RR is kept as is. Returns `msg` itself when the result is not shorter, or when a TSIG RR is
    present (its MAC covers the octets as sent). "Malformed" follows `walk`: pointers backwards only,
    RDATA inside the packet, OPT only once and root-owned in the additional section, no trailing
    bytes; plus the RDATA of the types above must tile as their layout says.
    """
    p = _pack(msg, True)
    if p is None:
        return None
    out = p[0]
    if p[5] or len(out) >= len(msg):
        return msg
    return bytes(out)
