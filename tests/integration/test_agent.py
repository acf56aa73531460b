"""The whole agent in process (no BPF, on loopback): what only shows when its parts run together."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RR, A, DNSRecord

from node_agent.app import status
from node_agent.app.agent import Agent
from node_agent.app.metrics import parse_exposition
from node_agent.config import from_mapping
from node_agent.dns import wire
from node_agent.settings import Settings
from tests.support.fakedns import FakeDNS, Reply
from tests.support.netutil import free_port


def _settings(**groups: Any) -> Settings:
    base = {
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "upstream": {"servers": ["127.0.0.1:9"]},
        "metrics": {"address": "127.0.0.1", "port": free_port()},
        "table": {"node_ips": ["127.0.0.1"]},
    }
    return dataclasses.replace(from_mapping({**base, **groups}), no_bpf=True)


def test_agent_sweeps_entries_past_max_stale() -> None:
    """The cache is scanned on a timer: an entry nobody asks for again goes once it is past
    max_stale, instead of holding memory until the bounds need room."""
    settings = _settings(cache={"sweep_interval": 0.05, "max_stale": 10})

    async def main() -> None:
        agent = Agent(settings)
        await agent.start()
        try:
            now = agent.resolver.clock()
            for name, age in (("old.example.org", 1000), ("new.example.org", 0)):
                query = DNSRecord.question(name, "A")
                reply = query.reply()
                reply.add_answer(*RR.fromZone(f"{name} 30 IN A 192.0.2.1"))
                q = wire.parse_query(bytes(query.pack()))
                assert isinstance(q, wire.Query)
                assert agent.cache.put("view", q, bytes(reply.pack()), now - age)
            assert len(agent.cache) == 2
            for _ in range(40):
                await asyncio.sleep(0.05)
                if len(agent.cache) == 1:
                    break
            assert len(agent.cache) == 1  # the one 970 s past expiry (> max_stale 10) went; the fresh one stays
            assert agent.cache.stats.flushed >= 1
        finally:
            await agent.stop()

    asyncio.run(main())


def test_a_truncated_upstream_answer_reaches_the_pod_and_the_tcp_connection_is_counted() -> None:
    def big(req: DNSRecord, raw: bytes, tcp: bool, peer: tuple[str, int]) -> Reply:
        rep = req.reply()
        if not tcp:
            rep.header.tc = 1
            return bytes(rep.pack())
        for i in range(100):
            rep.add_answer(RR(req.q.qname, QTYPE.A, rdata=A(f"10.1.0.{i}"), ttl=30))
        return bytes(rep.pack())

    async def main() -> None:
        up = await FakeDNS(big).start()
        settings = _settings(upstream={"servers": [f"127.0.0.1:{up.port}"]})
        agent = Agent(settings)
        await agent.start()
        try:
            loop = asyncio.get_running_loop()
            for name in ("big1.example.org", "big2.example.org"):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as c:  # the pod asks over TCP
                    c.settimeout(3)
                    await loop.run_in_executor(None, c.connect, (settings.listen.address, settings.listen.port))
                    q = bytes(DNSRecord.question(name, "A").pack())
                    await loop.run_in_executor(None, c.sendall, len(q).to_bytes(2, "big") + q)
                    head = await loop.run_in_executor(None, c.recv, 2)
                    body = b""
                    while len(body) < int.from_bytes(head, "big"):
                        body += await loop.run_in_executor(None, c.recv, 65535)
                assert len(DNSRecord.parse(body).rr) == 100
            url = f"http://127.0.0.1:{settings.metrics.port}/metrics"
            text = await loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=3).read().decode())
            m = parse_exposition(text)
            assert m[f'nodeagent_upstream_tcp_connections_total{{server="127.0.0.1:{up.port}"}}'] == 1
            assert m[f'nodeagent_upstream_failures_total{{reason="truncated_retry",server="127.0.0.1:{up.port}"}}'] == 2
            assert up.tcp_connections == 1
        finally:
            await agent.stop()
            await up.close()

    asyncio.run(main())


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def test_readyz_the_ready_gauge_and_status_give_one_answer(tmp_path: Path) -> None:
    """One readiness (app.health) behind /readyz, nodeagent_ready and `node-agent status`: each
    part that is not ready is named with its reason, and all three change together."""
    settings = _settings(intercept={"pin_root": str(tmp_path / "bpf")})  # status finds no pins here
    base = f"http://127.0.0.1:{settings.metrics.port}"
    addr = ("127.0.0.1", settings.metrics.port)

    async def main() -> None:
        agent = Agent(settings)
        await agent.start()
        loop = asyncio.get_running_loop()

        async def ask() -> tuple[int, str, float, dict[str, Any]]:
            code, body = await loop.run_in_executor(None, _get, base + "/readyz")
            _, text = await loop.run_in_executor(None, _get, base + "/metrics")
            report = await loop.run_in_executor(None, status.collect, settings, addr)
            return code, body, parse_exposition(text)["nodeagent_ready"], report

        try:
            code, body, gauge, report = await ask()
            assert (code, body, gauge) == (200, "ready\n", 1.0)
            assert report["ready"] is True and report["not_ready"] == []
            assert "listen 127.0.0.1" in status.render(report) and ", ready;" in status.render(report)

            # A source that has not listed yet (what a Kubernetes source looks like before its first sync).
            agent.source_state["kubernetes:c1/pods"] = (False, 0.0)
            agent.table.synced = False
            code, body, gauge, report = await ask()
            assert code == 503
            assert body == "table: not synced (waiting for kubernetes:c1/pods)\n"
            assert gauge == 0.0
            assert report["ready"] is False
            assert report["not_ready"] == ["table: not synced (waiting for kubernetes:c1/pods)"]
            assert "NOT READY (table: not synced" in status.render(report)

            await agent.responder.close()  # a second part goes: both are named, in order
            code, body, gauge, report = await ask()
            assert (code, gauge) == (503, 0.0)
            assert body == "listener: down; table: not synced (waiting for kubernetes:c1/pods)\n"
            assert report["not_ready"] == body.strip().split("; ")
        finally:
            await agent.stop()

    asyncio.run(main())
