"""Where slow answers come from: one long fixed-rate run per server, the same loopback servers as
peers.py, counting per second the queries over a latency bound. Bursts that hit every server alike
are the machine's; bursts only one server has are its own. Not part of `make bench` (no targets).

    .venv/bin/python bench/trace.py [--seconds 70] [--rate 3000] [--over-ms 0.5] [--servers node-agent,dnsmasq]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import dnsperf, peers  # noqa: E402
from bench.common import IdleHold, external_names, free_port, service_names, svc_fqdn  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=70)
    ap.add_argument("--rate", type=int, default=3000)
    ap.add_argument("--over-ms", type=float, default=0.5)
    ap.add_argument("--servers", default="node-agent,dnsmasq")
    ap.add_argument("--edns", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="na-trace-"))
    ext, svc = external_names(300), service_names(300)
    qfile = dnsperf.write_queries(work / "queries.txt", [n for n, _ in ext] + [svc_fqdn(ns, n) for ns, n, _ in svc])
    idle = IdleHold()
    idle.hold()
    print(f"# {a.rate} qps for {a.seconds:g} s per server, EDNS {'on' if a.edns else 'off'}, "
          f"counting answers over {a.over_ms} ms; CPU idle: {idle.describe()}")
    try:
        with peers.Peers(work, free_port(peers.AUTH), ext, svc) as p:
            for name in a.servers.split(","):
                s = p.servers[name]
                dnsperf.run(s.addr, s.port, qfile, 10, rate=2000, edns=a.edns, max_runs=1, local_addr=peers.CLIENT)
                r = dnsperf.run(s.addr, s.port, qfile, a.seconds, rate=a.rate, edns=a.edns, verbose=True,
                                local_addr=peers.CLIENT, server_pid=s.pid)
                per_s: dict[int, int] = {}
                for i, ms in enumerate(r.latencies_ms):  # in send order, at a fixed rate: index / rate = second
                    if ms > a.over_ms:
                        per_s[i // a.rate] = per_s.get(i // a.rate, 0) + 1
                slow = sum(per_s.values())
                print(f"{name}: {slow} of {len(r.latencies_ms):,} over {a.over_ms} ms, p99 {r.p99:.3f} ms, "
                      f"in {len(per_s)} of {int(a.seconds)} seconds; worst seconds: "
                      + ", ".join(f"t={t}s:{n}" for t, n in sorted(per_s.items(), key=lambda kv: -kv[1])[:5]))
    finally:
        idle.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
