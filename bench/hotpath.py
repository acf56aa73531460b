"""In-process cost of a cache hit: wire.parse_query + Cache.get, and the whole Resolver.answer_fast
(exact-repeat memo, view, cache, counters), for answers of 1, 4 and 16 A records with the records
rotated per answer (round robin, the default) beside the same answers in a fixed order (what every hit
cost before rotation). No sockets: this is the Python work per hit, the part rotation changes.

    .venv/bin/python bench/hotpath.py [--number N]     (also the `hotpath` section of bench/run.py)
"""

from __future__ import annotations

import argparse
import sys
import timeit
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import EDNS0, QTYPE, RR, A, DNSRecord

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table  # noqa: E402
from node_agent.dns import wire  # noqa: E402
from node_agent.mesh.model import Pod, Snapshot  # noqa: E402
from node_agent.mesh.table import NameTable  # noqa: E402
from node_agent.resolve.cache import Cache  # noqa: E402
from node_agent.resolve.resolver import SHARED, Resolver  # noqa: E402
from node_agent.settings import (
    TableSettings,  # noqa: E402
    UpstreamSettings,  # noqa: E402
)
from node_agent.upstream.client import Upstream  # noqa: E402

NAME = "backend.example.org"
CLIENT = "10.244.1.10"
SIZES = (1, 4, 16)


def _query(edns: bool, name: str = NAME) -> bytes:
    q = DNSRecord.question(name, "A")
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    return bytes(q.pack())


def _answer(raw: bytes, n: int) -> bytes:
    r = DNSRecord.parse(raw).reply()
    for i in range(n):
        r.add_answer(RR(NAME, QTYPE.A, rdata=A(f"10.96.0.{i + 1}"), ttl=300))
    return bytes(r.pack())


@dataclass
class HotFigures:
    parse_us: dict[bool, float] = field(default_factory=dict)  # EDNS -> us
    get_us: dict[tuple[int, bool], float] = field(default_factory=dict)  # (records, rotate) -> parse+get us
    fast_us: dict[tuple[int, bool], float] = field(default_factory=dict)  # (records, rotate) -> answer_fast us


def _best(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def _resolver(now: float) -> Resolver:
    t = NameTable(TableSettings())
    t.replace(Snapshot("bench", "Kubernetes", [Pod("default", "client", (CLIENT,), uid="u1")]))
    t.synced = True
    # Port 9 of loopback: nothing is ever asked upstream here (every query is a hit).
    return Resolver(t, Cache(), Upstream(UpstreamSettings(servers=(("127.0.0.1", 9),))), clock=lambda: now)


def measure(number: int = 200_000) -> HotFigures:
    figs = HotFigures()
    now = 1000.0
    raw = _query(True)
    plain = _query(False)
    figs.parse_us[False] = _best(lambda: wire.parse_query(plain), number)
    figs.parse_us[True] = _best(lambda: wire.parse_query(raw), number)
    q = wire.parse_query(raw)
    assert type(q) is wire.Query
    for n in SIZES:
        for rotate in (False, True):
            cache = Cache()
            assert cache.put(SHARED, q, _answer(raw, n), now, rotate=rotate)
            figs.get_us[(n, rotate)] = _best(
                lambda g=cache.get: g(SHARED, wire.parse_query(raw), now), number)  # type: ignore[misc, arg-type]
            res = _resolver(now)
            assert res.cache.put(SHARED, q, _answer(raw, n), now, rotate=rotate)
            fast = res.answer_fast
            assert fast(raw, CLIENT, "udp") is not None
            figs.fast_us[(n, rotate)] = _best(lambda f=fast: f(raw, CLIENT, "udp"), number)  # type: ignore[misc]
    return figs


def report(f: HotFigures) -> str:
    rows: list[list[object]] = []
    for n in SIZES:
        fixed, rot = f.fast_us[(n, False)], f.fast_us[(n, True)]
        gf, gr = f.get_us[(n, False)], f.get_us[(n, True)]
        rows.append([f"{n} A record{'s' if n > 1 else ''}: answer_fast", f"{fixed:.2f}", f"{rot:.2f}",
                     f"{rot - fixed:+.2f}"])
        rows.append(["  parse_query + Cache.get", f"{gf:.2f}", f"{gr:.2f}", f"{gr - gf:+.2f}"])
    return table("Cache-hit hot path in process (us per hit, EDNS on, best of 5)",
                 ["answer", "fixed order (before)", "rotated (now)", "rotation costs"], rows,
                 note=f"parse_query alone: {f.parse_us[True]:.2f} us (EDNS), {f.parse_us[False]:.2f} us (no EDNS).\n"
                      "answer_fast here is an exact repeat (same client, same query bytes, same second), served by\n"
                      "the memo; for a rotating answer the memo keeps header+question and OPT and splices in the\n"
                      "next rotation of the records. A one-record answer has nothing to rotate.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=200_000)
    print(report(measure(ap.parse_args().number)))


if __name__ == "__main__":
    main()
