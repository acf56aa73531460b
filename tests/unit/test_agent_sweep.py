"""The running agent (no BPF, on loopback) scans its cache on a timer: an entry nobody asks for again
is dropped once it is past max_stale, instead of holding memory until the bounds need room."""

from __future__ import annotations

import asyncio
import dataclasses

from dnslib import RR, DNSRecord
from netutil import free_port  # tests/netutil.py

from node_agent import wire
from node_agent.agent import Agent
from node_agent.config import from_mapping


def test_agent_sweeps_entries_past_max_stale() -> None:
    settings = from_mapping({
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "upstream": {"servers": ["127.0.0.1:9"]},
        "metrics": {"address": "127.0.0.1", "port": free_port()},
        "cache": {"sweep_interval": 0.05, "max_stale": 10},
    })
    settings = dataclasses.replace(settings, no_bpf=True)

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
