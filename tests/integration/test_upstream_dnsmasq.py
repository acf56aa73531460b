"""Upstream client against a real dnsmasq on 127.0.0.1 (random high port; loopback traffic only).

dnsmasq answers authoritative-style from --host-record / --txt-record with --no-resolv, so it never
forwards anywhere itself; --local=/test/ makes unknown *.test names NXDOMAIN and everything else gets
REFUSED (no upstream servers configured).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from node_agent.settings import UpstreamSettings
from node_agent.upstream.client import Upstream, UpstreamError
from tests.support.netutil import free_port, wait_dns_ready

DNSMASQ = "/usr/sbin/dnsmasq"
BIG_COUNT = 120  # 120 A records ~ 1.9 kB: past both 512 and the 1232-byte EDNS size -> TC -> TCP
MID_COUNT = 40  # ~ 670 bytes: fits EDNS 1232 over UDP, but not a plain 512-byte query
TXT_CHUNKS = ["".join(chr(97 + (i + j) % 26) for j in range(250)) for i in range(8)]

pytestmark = pytest.mark.skipif(
    not (os.access(DNSMASQ, os.X_OK) or shutil.which("dnsmasq")), reason="dnsmasq not installed"
)




def big_ip(i: int) -> str:
    return f"10.9.{i // 250}.{i % 250 + 1}"


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[int]:
    port = free_port()
    args = [
        DNSMASQ if os.access(DNSMASQ, os.X_OK) else str(shutil.which("dnsmasq")),
        "--conf-file=/dev/null",  # never read the system /etc/dnsmasq.conf
        "--no-resolv",
        "--no-hosts",
        "--keep-in-foreground",
        "--pid-file=",  # no pid file: several test runs may overlap
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--local=/test/",
        "--host-record=small.test,10.8.0.1,fd00::1",
        "--host-record=Mixed.Case.test,10.8.0.2",
        "--txt-record=txt.test," + ",".join(TXT_CHUNKS),  # argv, no shell: no quoting needed
    ]
    args += [f"--host-record=big.test,{big_ip(i)}" for i in range(BIG_COUNT)]
    args += [f"--host-record=mid.test,{big_ip(i)}" for i in range(MID_COUNT)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_dns_ready(port, proc, "small.test")
        yield port
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def up_for(port: int, *extra: tuple[str, int], **kw: Any) -> Upstream:
    return Upstream(UpstreamSettings(servers=(*extra, ("127.0.0.1", port)), timeout=1.0, **kw))


def test_small_answers(dnsmasq: int) -> None:
    async def body() -> None:
        up = up_for(dnsmasq)
        a = DNSRecord.parse(await up.resolve("Small.TEST", QTYPE.A))
        assert a.header.rcode == RCODE.NOERROR and [str(r.rdata) for r in a.rr] == ["10.8.0.1"]
        assert str(a.q.qname) == "Small.TEST."
        aaaa = DNSRecord.parse(await up.resolve("small.test.", QTYPE.AAAA, do=True))
        assert [str(r.rdata) for r in aaaa.rr] == ["fd00::1"]
        assert any(r.rtype == QTYPE.OPT for r in aaaa.ar)  # dnsmasq saw our EDNS and echoed OPT
        nx = DNSRecord.parse(await up.resolve("nothing.test", QTYPE.A))
        assert nx.header.rcode == RCODE.NXDOMAIN
        st = up.stats.servers[f"127.0.0.1:{dnsmasq}"]
        assert st.case_mismatch == 0 and st.failures["truncated_retry"] == 0  # dnsmasq echoes 0x20
        assert st.ignored_replies == 0
        await up.close()

    run(body())


def test_refused_outside_local_zone(dnsmasq: int) -> None:
    async def body() -> None:
        up = up_for(dnsmasq, attempts=1)
        with pytest.raises(UpstreamError) as ei:
            await up.resolve("example.org", QTYPE.A)
        assert ei.value.reason == "refused" and ei.value.response is not None
        assert DNSRecord.parse(ei.value.response).header.rcode == RCODE.REFUSED

    run(body())


def test_large_answer_truncates_then_tcp(dnsmasq: int) -> None:
    async def body() -> None:
        up = up_for(dnsmasq)
        wire = await up.resolve("big.test", QTYPE.A)
        rep = DNSRecord.parse(wire)
        assert len(wire) > 1232 and rep.header.tc == 0
        assert sorted(str(r.rdata) for r in rep.rr) == sorted(big_ip(i) for i in range(BIG_COUNT))
        st = up.stats.servers[f"127.0.0.1:{dnsmasq}"]
        assert st.failures["truncated_retry"] == 1
        # Between 512 and 1232 bytes: EDNS makes it fit in one datagram, no TCP needed.
        wire = await up.resolve("mid.test", QTYPE.A)
        assert 512 < len(wire) <= 1232 and len(DNSRecord.parse(wire).rr) == MID_COUNT
        assert st.failures["truncated_retry"] == 1
        txt = DNSRecord.parse(await up.resolve("txt.test", QTYPE.TXT))
        assert [s.decode() for s in txt.rr[0].rdata.data] == TXT_CHUNKS  # 2 kB of TXT via TCP
        assert st.failures["truncated_retry"] == 2
        await up.close()

    run(body())


def test_forward_raw_without_edns_uses_tcp(dnsmasq: int) -> None:
    async def body() -> None:
        up = up_for(dnsmasq)
        q = DNSRecord.question("mid.test", "A")  # no OPT: 512-byte limit, so dnsmasq sets TC
        q.header.id = 0xBEEF
        wire = await up.forward_raw(q.pack())
        rep = DNSRecord.parse(wire)
        assert rep.header.id == 0xBEEF and len(rep.rr) == MID_COUNT and len(wire) > 512
        assert up.stats.servers[f"127.0.0.1:{dnsmasq}"].failures["truncated_retry"] == 1

    run(body())


def test_failover_from_dead_port_and_coalescing(dnsmasq: int) -> None:
    async def body() -> None:
        dead = ("127.0.0.1", free_port())
        up = up_for(dnsmasq, dead)
        t0 = time.monotonic()
        res = await asyncio.gather(*(up.resolve("mixed.case.test", QTYPE.A) for _ in range(10)))
        assert time.monotonic() - t0 < 0.5
        assert all(r is res[0] for r in res) and up.stats.coalesced == 9
        assert [str(r.rdata) for r in DNSRecord.parse(res[0]).rr] == ["10.8.0.2"]
        assert up.stats.servers[f"127.0.0.1:{dead[1]}"].failures["network"] == 1
        await up.close()

    run(body())
