"""DNS protocol numbers (RFC 1035, 2671/6891, 2782, 3596, ...) as IntEnums: readable in code, ints on
the wire and in comparisons (``Type.A == 1``)."""

from __future__ import annotations

from enum import IntEnum


class Type(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    DNAME = 39
    OPT = 41
    TSIG = 250
    ANY = 255


class Class(IntEnum):
    IN = 1
    CH = 3
    ANY = 255


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # extended RCODE (OPT ext-rcode 1, header rcode 0)
