"""Micro-benchmark of the cache-hit hot path: wire.parse_query + Cache.get (no assertions).

Run: .venv/bin/python bench/hotpath.py [--number N]
"""

from __future__ import annotations

import argparse
import timeit

from dnslib import EDNS0, QTYPE, RR, A, DNSRecord

from node_agent import wire
from node_agent.cache import Cache

NAME = "backend.default.svc.cluster.local"


def _answer(q: DNSRecord) -> bytes:
    r = q.reply()
    r.add_answer(RR(NAME, QTYPE.A, rdata=A("10.96.0.17"), ttl=30))
    return bytes(r.pack())


def _query(edns: bool, name: str = NAME) -> bytes:
    q = DNSRecord.question(name, "A")
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    return bytes(q.pack())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=200_000)
    n = ap.parse_args().number
    cache = Cache()
    now = 1000.0
    view = ("default", "pod-a")
    raw_plain = _query(False)
    raw_edns = _query(True)
    raw_0x20 = _query(True, "BaCkEnD.DeFaUlT.sVc.ClUsTeR.LoCaL")
    for raw in (raw_plain, raw_edns):
        q = wire.parse_query(raw)
        assert type(q) is wire.Query
        assert cache.put(view, q, _answer(DNSRecord.parse(raw)), now)
    parse = wire.parse_query
    memo = wire._QMEMO
    get = cache.get
    cases = {
        "parse_query (no EDNS)": lambda: parse(raw_plain),
        "parse_query (EDNS)": lambda: parse(raw_edns),
        "parse_query (EDNS, memo cold)": lambda: (memo.clear(), parse(raw_edns)),  # type: ignore[func-returns-value]
        "memo.clear() alone": memo.clear,
        "parse+get hit (no EDNS)": lambda: get(view, parse(raw_plain), now),  # type: ignore[arg-type]
        "parse+get hit (EDNS)": lambda: get(view, parse(raw_edns), now),  # type: ignore[arg-type]
        "parse+get hit (EDNS, 0x20)": lambda: get(view, parse(raw_0x20), now),  # type: ignore[arg-type]
        "parse+get miss": lambda: get("other-view", parse(raw_edns), now),  # type: ignore[arg-type]
    }
    ticking = [now]

    def aging() -> bytes | None:  # a new second on every call: the TTL re-patch path
        ticking[0] += 1.001
        return get(view, parse(raw_edns), now + ticking[0] % 25)  # type: ignore[arg-type]

    cases["parse+get hit, re-age every op"] = aging
    for label, fn in cases.items():
        best = min(timeit.repeat(fn, number=n, repeat=5))
        print(f"{label:34s} {best / n * 1e6:6.3f} us/op")
    s = cache.stats
    print(f"stats: hits={s.hits} misses={s.misses} entries={s.entries} bytes={s.bytes}")


if __name__ == "__main__":
    main()
