"""Domain names on the wire (RFC 1035 3.1, 4.1.4): encoding text names, reading and skipping possibly
compressed names safely, the question-section walk, and 0x20 letter-case mixing.

A wire name here is the uncompressed label sequence including the terminating zero octet, as bytes.
"""

from __future__ import annotations

import functools

__all__ = [
    "MAX_NAME",
    "encode_name",
    "mix_case",
    "name_to_text",
    "question_end",
    "read_name",
    "skip_name",
]

MAX_NAME = 255  # wire octets, including the root label

# bytes.translate table giving 0x20 for ASCII letters and 0 elsewhere: XOR-ing the name with
# (this mask & random bytes) flips the case of a random subset of letters in C, not a Python loop.
# Label length octets are <= 63, so never mistaken for letters (which start at 65).
_LETTER_MASK = bytes(0x20 if (65 <= b <= 90 or 97 <= b <= 122) else 0 for b in range(256))


@functools.lru_cache(maxsize=4096)
def encode_name(qname: str) -> bytes:
    """Presentation name -> uncompressed wire name. Accepts dnslib-style escapes (``\\.``, ``\\065``)
    and an optional trailing dot; raises ValueError on over-long labels or names."""
    if qname in ("", "."):
        return b"\x00"
    if "\\" not in qname:
        labels = [lab.encode() for lab in qname.rstrip(".").split(".")]
    else:
        labels = []
        cur = bytearray()
        i, n = 0, len(qname)
        while i < n:
            c = qname[i]
            if c == "\\":
                if i + 3 < n and qname[i + 1 : i + 4].isdigit():
                    cur.append(int(qname[i + 1 : i + 4]))
                    i += 4
                    continue
                if i + 1 < n:
                    cur += qname[i + 1].encode()
                    i += 2
                    continue
                raise ValueError(f"dangling escape in {qname!r}")
            if c == ".":
                labels.append(bytes(cur))
                cur = bytearray()
            else:
                cur += c.encode()
            i += 1
        if cur:
            labels.append(bytes(cur))
    out = bytearray()
    for lab in labels:
        if not 0 < len(lab) <= 63:
            raise ValueError(f"bad label length {len(lab)} in {qname!r}")
        out.append(len(lab))
        out += lab
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"name too long: {qname!r}")
    return bytes(out)


def name_to_text(wire: bytes) -> str:
    """Uncompressed wire name -> lower-case text without the trailing dot (root -> "").

    Octets are mapped 1:1 (latin-1); no escaping, so a label containing "." is ambiguous - fine for
    matching host names, not for display.
    """
    labels = []
    i = 0
    n = len(wire)
    while i < n:
        ln = wire[i]
        if ln == 0:
            break
        labels.append(wire[i + 1 : i + 1 + ln])
        i += ln + 1
    return b".".join(labels).lower().decode("latin-1")


def mix_case(wire: bytes, rnd: bytes) -> bytes:
    """`wire` with the case of its letters flipped where the matching bit 5 of `rnd` is set (0x20,
    draft-vixie-dnsext-dns0x20): `rnd` holds at least ``len(wire)`` random octets."""
    n = len(wire)
    mask = int.from_bytes(wire.translate(_LETTER_MASK), "big") & int.from_bytes(rnd[:n], "big")
    return (int.from_bytes(wire, "big") ^ mask).to_bytes(n, "big")


def skip_name(data: bytes, i: int, floor: int = 12) -> int:
    """Offset just past the (possibly compressed) name at `i`, or -1 if malformed.

    A pointer must be inside the packet, at or past `floor` and strictly before the pointer itself
    (so following pointers always terminates); labels <= 63; at most 255 octets before a pointer.
    The pointer target is not followed (use `read_name` for that).
    """
    n = len(data)
    start = i
    while i < n:
        ln = data[i]
        if ln == 0:
            return i + 1 if i + 1 - start <= MAX_NAME else -1
        if ln >= 0xC0:
            if i + 1 >= n:
                return -1
            ptr = ((ln & 0x3F) << 8) | data[i + 1]
            if ptr >= i or ptr < floor or i - start > MAX_NAME - 1:
                return -1
            return i + 2
        if ln > 63:
            return -1
        i += ln + 1
    return -1


def read_name(data: bytes, i: int, floor: int = 12) -> tuple[bytes, int] | None:
    """Decode the name at `i` following compression pointers safely.

    Returns (uncompressed wire name incl. the root octet, offset after the name in place) or None for
    a malformed name: out-of-bounds, forward/self pointer (which rules out loops), label > 63, or an
    expanded name longer than 255 octets.
    """
    n = len(data)
    out = bytearray()
    after = -1
    limit = n  # pointers must go strictly backwards from here
    while True:
        if i >= n:
            return None
        ln = data[i]
        if ln == 0:
            out.append(0)
            if len(out) > MAX_NAME:
                return None
            return bytes(out), (i + 1 if after < 0 else after)
        if ln >= 0xC0:
            if i + 1 >= n:
                return None
            ptr = ((ln & 0x3F) << 8) | data[i + 1]
            if ptr >= i or ptr >= limit or ptr < floor:
                return None
            if after < 0:
                after = i + 2
            limit = i
            i = ptr
            continue
        if ln > 63 or i + 1 + ln > n:
            return None
        out += data[i : i + 1 + ln]
        if len(out) > MAX_NAME:
            return None
        i += ln + 1


def _plain_name_end(data: bytes, i: int) -> int:
    """Offset just past the name at `i` when it is labels only (no pointer, no extended label type),
    else -1. Its length is not checked: callers compare these octets, they do not read a name."""
    n = len(data)
    while i < n:
        ln = data[i]
        if ln == 0:
            return i + 1
        if ln & 0xC0:
            return -1
        i += ln + 1
    return -1


def question_end(data: bytes, qdcount: int, *, plain: bool = False) -> int:
    """Offset just past the question section (`qdcount` entries of name, type, class from offset 12),
    or -1 when a name is malformed (as `skip_name` says) or an entry runs past the packet.

    `plain`: names must be label sequences with no pointer: a query's own question, which a
    reply echoes octet for octet (compressed, its octets would depend on the encoder).
    The query fast path (`wire.parse_query`) walks its one name inline instead: a call costs more
    than the walk there.
    """
    n = len(data)
    i = 12
    for _ in range(qdcount):
        i = _plain_name_end(data, i) if plain else skip_name(data, i)
        if i < 0 or i + 4 > n:
            return -1
        i += 4
    return i
