"""Address helpers of the name table: pure functions of strings, shared by every other module here.

Their own module (not reverse.py) because the index needs `reverse_name` to name what a change
invalidates, and reverse.py reads the index: keeping them below both keeps the imports one way
(ips <- index <- reverse <- compile <- answer <- search <- the package)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable


def split_families(addrs: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(v4, v6), each in first-seen order without duplicates."""
    v4: dict[str, None] = {}
    v6: dict[str, None] = {}
    for a in addrs:
        (v6 if ":" in a else v4)[a] = None
    return tuple(v4), tuple(v6)


def plain_ip(address: str) -> str | None:
    """An address usable in an A/AAAA answer: a bare IP, or a host prefix (/32, /128)."""
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return None
    if net.num_addresses != 1:
        return None
    return str(net.network_address)


def plain_ips(addresses: Iterable[str]) -> tuple[str, ...]:
    """The addresses of a list an A/AAAA answer can carry, in order (CIDR ranges cannot be answered:
    Istio skips them too)."""
    return tuple(a for a in map(plain_ip, addresses) if a)


def reverse_name(ip: str) -> str | None:
    """The PTR owner of an IP (hot at bulk load: C-level parsing instead of the ipaddress module)."""
    try:
        if ":" in ip:
            return ".".join(reversed(socket.inet_pton(socket.AF_INET6, ip).hex())) + ".ip6.arpa"
        socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        return None
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


def ip_from_reverse(name: str) -> str | None:
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4:
            return None
        text = ".".join(reversed(parts))
    elif name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32:
            return None
        h = "".join(reversed(nibbles))
        text = ":".join(h[i : i + 4] for i in range(0, 32, 4))
    else:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def endpoint_label(hostname: str, ip: str) -> str:
    """The first label of an endpoint's name: its hostname, else its address dashed."""
    return hostname.lower() if hostname else dashed(ip)


def dashed(ip: str) -> str:
    """CoreDNS's name for an endpoint without hostname: 10-244-1-21, 2001-db8--1, fd00--0 for fd00::
    (a label may not end with a hyphen)."""
    label = ip.replace(".", "-").replace(":", "-")
    return label + "0" if label.endswith("-") else label
