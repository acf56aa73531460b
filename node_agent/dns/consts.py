"""DNS protocol numbers (RFC 1035, 2671/6891, 2782, 3596, ...) as IntEnums: readable in code, ints on
the wire and in comparisons (``Type.A == 1``)."""

from __future__ import annotations

from enum import IntEnum


class Type(IntEnum):
    A = 1
    NS = 2
    MD = 3
    MF = 4
    CNAME = 5
    SOA = 6
    MB = 7
    MG = 8
    MR = 9
    PTR = 12
    MINFO = 14
    MX = 15
    TXT = 16
    RP = 17
    AFSDB = 18
    RT = 21
    SIG = 24
    PX = 26
    AAAA = 28
    NXT = 30
    SRV = 33
    NAPTR = 35
    KX = 36
    DNAME = 39
    OPT = 41
    RRSIG = 46
    NSEC = 47
    SVCB = 64
    HTTPS = 65
    LP = 107
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
