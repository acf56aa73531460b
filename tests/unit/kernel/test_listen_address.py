"""kernel/listenaddr.py against a fake netlink that behaves as the kernels nodes run: with the dummy
driver, and an IPv6 link-local address the kernel adds as a link comes up. (The CI kernel has no
dummy driver, so there the address goes on lo and the link's removal never runs;
tests/e2e/test_listenaddr.py runs it on Debian's kernels in `make kernels`.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from node_agent.kernel import listenaddr
from node_agent.kernel.listenaddr import LINK


@dataclass
class _Msg:
    attrs: dict[str, str]

    def get_attr(self, name: str) -> str | None:
        return self.attrs.get(name)


@dataclass
class FakeNetlink:
    """Links by index with their addresses. `dummy`: the kernel has the dummy driver; `ipv6`: a link
    that comes up gets an fe80:: address from the kernel (addr_gen_mode eui64, the default)."""

    dummy: bool = True
    ipv6: bool = True
    links: dict[int, str] = field(default_factory=lambda: {1: "lo"})
    addrs: dict[int, list[str]] = field(default_factory=lambda: {1: ["127.0.0.1", "::1"]})
    up: set[int] = field(default_factory=lambda: {1})

    def __call__(self) -> FakeNetlink:  # IPRoute()
        return self

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def link_lookup(self, ifname: str) -> list[int]:
        return [i for i, n in self.links.items() if n == ifname]

    def get_addr(self, index: int | None = None) -> list[_Msg]:
        return [_Msg({"IFA_ADDRESS": a}) for i, addrs in self.addrs.items() if index in (None, i) for a in addrs]

    def addr(self, op: str, index: int, address: str, prefixlen: int) -> None:
        if op == "add":
            if address in self.addrs[index]:
                raise NetlinkError(17, "File exists")
            self.addrs[index].append(address)
        elif op == "del":
            self.addrs[index].remove(address)

    def link(self, op: str, **kw: Any) -> None:
        if op == "add":
            if kw["kind"] != "dummy" or not self.dummy:
                raise NetlinkError(95, "Unknown device type")
            idx = max(self.links) + 1
            self.links[idx], self.addrs[idx] = kw["ifname"], []
        elif op == "set":
            idx = kw["index"]
            if kw["state"] == "up" and idx not in self.up:
                self.up.add(idx)
                if self.ipv6 and self.links[idx] != "lo":
                    self.addrs[idx].append("fe80::c8a1:4bff:fe2e:51d7")
        elif op == "del":
            (idx,) = self.link_lookup(kw["ifname"])
            del self.links[idx], self.addrs[idx]
            self.up.discard(idx)


@pytest.fixture
def netlink(monkeypatch: pytest.MonkeyPatch) -> FakeNetlink:
    nl = FakeNetlink()
    monkeypatch.setattr(listenaddr, "IPRoute", nl)
    return nl


def test_only_kernel_made_link_local_addresses_leave_a_link_unused() -> None:
    assert listenaddr.unused([])
    assert listenaddr.unused(["fe80::c8a1:4bff:fe2e:51d7"])
    assert listenaddr.unused(["fe80::1%nodeagent0", "fe80::2"])
    assert not listenaddr.unused(["fe80::1", "fd00:a9fe::10"])  # a listen address still there
    assert not listenaddr.unused(["169.254.20.10"])  # IPv4 link-local is our own listen range
    assert not listenaddr.unused(["10.0.0.5"])  # someone else's


def test_removing_the_last_listen_address_removes_the_dummy_link(netlink: FakeNetlink) -> None:
    placed = listenaddr.ensure("169.254.20.10")
    assert placed.link == LINK and placed.added
    (idx,) = netlink.link_lookup(LINK)
    assert any(a.startswith("fe80:") for a in netlink.addrs[idx]), "the kernel's own address is there"
    listenaddr.remove("169.254.20.10")
    assert netlink.link_lookup(LINK) == []


def test_the_link_stays_while_another_listen_address_or_someone_elses_is_on_it(netlink: FakeNetlink) -> None:
    listenaddr.ensure("169.254.20.10")
    listenaddr.ensure("fd00:a9fe::10")
    listenaddr.remove("169.254.20.10")
    (idx,) = netlink.link_lookup(LINK)
    assert "fd00:a9fe::10" in netlink.addrs[idx]
    netlink.addrs[idx].append("10.0.0.5")  # an operator's
    listenaddr.remove("fd00:a9fe::10")
    assert netlink.link_lookup(LINK) == [idx]
    netlink.addrs[idx].remove("10.0.0.5")
    listenaddr.remove("fd00:a9fe::10")  # idempotent: the address is gone, the link is unused now
    assert netlink.link_lookup(LINK) == []


def test_without_the_dummy_driver_the_address_goes_on_lo_and_lo_stays(netlink: FakeNetlink) -> None:
    netlink.dummy = False
    placed = listenaddr.ensure("169.254.20.10")
    assert (placed.link, placed.added) == ("lo", True)
    assert listenaddr.ensure("169.254.20.10").added is False
    listenaddr.remove("169.254.20.10")
    assert netlink.links == {1: "lo"} and netlink.addrs[1] == ["127.0.0.1", "::1"]
