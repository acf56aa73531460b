"""Put the responder's address on the node: on a `dummy` link (like NodeLocal DNSCache's
nodelocaldns interface), or on `lo` where the kernel has no dummy driver."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

LINK = "nodeagent0"
EEXIST, EOPNOTSUPP = 17, 95


@dataclass(frozen=True)
class Placement:
    address: str
    link: str
    added: bool  # False when it was there already (another agent, or a previous run)


def _host(address: str) -> tuple[str, int]:
    """Canonical text (as netlink reports it) and host prefix length of an address."""
    ip = ipaddress.ip_address(address)
    return str(ip), 32 if ip.version == 4 else 128


def _holder(ipr: IPRoute, address: str) -> tuple[str, int] | None:
    """(link name, index) of our link or lo when it carries the address."""
    for link_name in (LINK, "lo"):
        idx = ipr.link_lookup(ifname=link_name)
        if idx and any(a.get_attr("IFA_ADDRESS") == address for a in ipr.get_addr(index=idx[0])):
            return link_name, idx[0]
    return None


def ensure(address: str) -> Placement:
    """Idempotent: the address ends up on exactly one link, which is up."""
    address, prefix = _host(address)
    with IPRoute() as ipr:
        held = _holder(ipr, address)
        if held is not None:
            return Placement(address, held[0], added=False)
        link = _dummy_link(ipr) or "lo"
        idx = ipr.link_lookup(ifname=link)[0]
        try:
            ipr.addr("add", index=idx, address=address, prefixlen=prefix)
        except NetlinkError as e:
            if e.code != EEXIST:
                raise
        ipr.link("set", index=idx, state="up")
        log.info("listen address %s on %s", address, link)
        return Placement(address, link, added=True)


def _dummy_link(ipr: IPRoute) -> str | None:
    if ipr.link_lookup(ifname=LINK):
        return LINK
    try:
        ipr.link("add", ifname=LINK, kind="dummy")
        return LINK
    except NetlinkError as e:
        log.info("no dummy link type here (%s); using lo", e)
        return None


def local_addresses() -> tuple[str, ...]:
    """Every address of this network namespace (the node's, with hostNetwork): the node itself may
    ask the responder too. Call before an event loop runs (pyroute2 runs one of its own)."""
    with IPRoute() as ipr:
        found = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()}
    return tuple(sorted(a for a in found if a))


def unused(addresses: Iterable[str]) -> bool:
    """Whether our link carries nothing anyone put there: no address at all, or only IPv6
    link-local ones (fe80::/10), which the kernel gives every link with IPv6 as it comes up. (IPv4
    link-local, 169.254.0.0/16, is our own listen address's range: someone's, never the kernel's.)"""
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%")[0])
        if not (ip.version == 6 and ip.is_link_local):
            return False
    return True


def remove(address: str) -> None:
    """Undo `ensure` (used by `node-agent uninstall`); our dummy link goes once it is `unused`."""
    address, prefix = _host(address)
    with IPRoute() as ipr:
        held = _holder(ipr, address)
        if held is not None:
            ipr.addr("del", index=held[1], address=address, prefixlen=prefix)
        idx = ipr.link_lookup(ifname=LINK)
        if idx and unused(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx[0]) if a.get_attr("IFA_ADDRESS")):
            ipr.link("del", ifname=LINK)
