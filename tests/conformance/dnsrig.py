"""The conformance suites ask the whole resolver in process, as a pod's stub would see the answer.
(A module of its own, not conftest.py: tests/e2e has a conftest too, and `from conftest import`
would find whichever was loaded first.)

`dns(records, zone=..., **table_settings)` builds what the agent builds: a NameTable fed one snapshot
and marked synced, a Cache, an Upstream pointed at a fake kube-dns on a random 127.0.0.x port (tests/
fakedns.py: it answers only the `zone` it is given, NXDOMAIN otherwise, and records what it was
asked), and a Resolver. `rig.ask(name, qtype, src)` sends a query from the pod with address `src`
(its view comes from the Pod records) and returns the parsed reply. Nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, RR, DNSRecord

from node_agent.mesh.model import Change
from node_agent.mesh.table import NameTable
from node_agent.resolve.resolver import Resolver
from tests.support.fakedns import FakeDNS

Zone = dict[str, list[tuple[str, str]]]  # upstream name -> [(type, rdata text)]


@dataclass
class Reply:
    msg: DNSRecord

    @property
    def rcode(self) -> str:
        return str(RCODE.get(self.msg.header.rcode))

    @property
    def aa(self) -> bool:
        return bool(self.msg.header.aa)

    @staticmethod
    def _rows(rrs: Iterable[RR]) -> list[tuple[str, str, str]]:
        return [(str(r.rname).lower(), str(QTYPE.get(r.rtype)), str(r.rdata)) for r in rrs]

    @property
    def answer(self) -> list[tuple[str, str, str]]:
        """(owner, type, rdata) in wire order; owners lower-cased (the responder copies 0x20 case)."""
        return self._rows(self.msg.rr)

    @property
    def authority(self) -> list[tuple[str, str, str]]:
        return self._rows(self.msg.auth)

    @property
    def additional(self) -> list[tuple[str, str, str]]:
        return self._rows(r for r in self.msg.ar if r.rtype != QTYPE.OPT)

    def rdata(self, qtype: str) -> list[str]:
        return [d for _, t, d in self.answer if t == qtype]

    @property
    def negative_soa(self) -> str | None:
        """The owner of the SOA in the authority section (RFC 2308), if any."""
        return next((n for n, t, _ in self.authority if t == "SOA"), None)


class Rig:
    def __init__(self, runner: asyncio.Runner, table: NameTable, resolver: Resolver, kube_dns: FakeDNS) -> None:
        self.runner = runner
        self.table = table
        self.resolver = resolver
        self.kube_dns = kube_dns

    def ask(self, name: str, qtype: str = "A", src: str = "") -> Reply:
        src = src or CLIENT
        data = DNSRecord.question(name, qtype).pack()
        reply = self.resolver.answer_fast(data, src, "udp")
        if reply is None:
            reply = self.runner.run(self.resolver.answer(data, src, "udp"))
        assert reply is not None, f"no answer for {name} {qtype} from {src}"
        return Reply(DNSRecord.parse(reply))

    def forwarded(self) -> list[str]:
        """Names kube-dns was asked, lower-cased, in order."""
        return [str(r.q.qname).lower().rstrip(".") for r in self.kube_dns.udp + self.kube_dns.tcp]

    def apply(self, changes: Iterable[Change]) -> set[str]:
        names = self.table.apply(changes)
        self.resolver.flush(names)
        return names


CLIENT = "10.244.0.5"  # the asking pod's address; every suite puts a Pod with it in its records


def kube_dns(zone: Zone) -> Callable[[DNSRecord, bytes, bool, tuple[str, int]], bytes]:
    def handler(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> bytes:
        name = str(req.q.qname).lower().rstrip(".")
        rep = req.reply()
        if name not in zone:
            rep.header.rcode = RCODE.NXDOMAIN
            return rep.pack()
        for rtype, text in zone[name]:
            if QTYPE.get(req.q.qtype) == rtype:
                rep.add_answer(*RR.fromZone(f"{req.q.qname} 300 IN {rtype} {text}"))
        return rep.pack()

    return handler
