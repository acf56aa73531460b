"""The issue's targets, each against the figures this run measured (pass/fail, no assertions)."""

from __future__ import annotations

from typing import Any

from bench import kernelpath
from bench.bpfpath import BpfFigures
from bench.common import table
from bench.peers import PeerFigures
from bench.upstream_load import UpstreamFigures


def _row(target: str, measured: str, ok: bool | None, undecided: str = "-") -> list[object]:
    """`undecided` stands where ok is None: "-" for a row given for reference, no target of its own."""
    return [target, measured, undecided if ok is None else ("PASS" if ok else "FAIL")]


def report(c: dict[str, object]) -> str:
    rows: list[list[object]] = []
    p = c.get("peers")
    if isinstance(p, PeerFigures):
        a, d, u = (p.sat[(n, True)] for n in ("node-agent", "dnsmasq", "unbound"))
        rd, ru = a.cpu_us_per_query / d.cpu_us_per_query, a.cpu_us_per_query / u.cpu_us_per_query
        rows.append(_row("hit CPU/query, EDNS on, saturated: <= 1.0x dnsmasq",
                         f"{a.cpu_us_per_query:.1f} vs {d.cpu_us_per_query:.1f} us = {rd:.2f}x", rd <= 1.0))
        rows.append(_row("hit CPU/query, EDNS on, saturated: <= 1.15x unbound",
                         f"{a.cpu_us_per_query:.1f} vs {u.cpu_us_per_query:.1f} us = {ru:.2f}x", ru <= 1.15))
        if ("io-floor", True) in p.sat:
            fl = p.sat[("io-floor", True)].cpu_us_per_query
            rows.append(_row("  (io-floor: the agent's UDP path, no DNS work)",
                             f"{fl:.1f} us = {fl / d.cpu_us_per_query:.2f}x dnsmasq, "
                             f"{fl / u.cpu_us_per_query:.2f}x unbound", None))
        rates = sorted({k[2] for k in p.fixed})
        if 3000 in rates:
            fa, fd, fu = (p.fixed[(n, True, 3000)] for n in ("node-agent", "dnsmasq", "unbound"))
            rows.append(_row("  (same at 3,000 qps, for reference)",
                             f"{fa.cpu_us_per_query:.1f} vs {fd.cpu_us_per_query:.1f} / {fu.cpu_us_per_query:.1f} us"
                             f" = {fa.cpu_us_per_query / fd.cpu_us_per_query:.2f}x / "
                             f"{fa.cpu_us_per_query / fu.cpu_us_per_query:.2f}x", None))
        for edns in sorted({k[1] for k in p.sat}, reverse=True):
            a_, d_ = p.sat[("node-agent", edns)], p.sat[("dnsmasq", edns)]
            r = a_.qps / d_.qps
            rows.append(_row(f"saturated QPS >= 0.9x dnsmasq (EDNS {'on' if edns else 'off'})",
                             f"{a_.qps:,.0f} vs {d_.qps:,.0f} = {r:.2f}x", r >= 0.9))
        for (n, edns, rate), res in sorted(p.fixed.items()):
            if n == "node-agent" and rate == 3000:
                dm, ub = p.fixed[("dnsmasq", edns, rate)].p99, p.fixed[("unbound", edns, rate)].p99
                rows.append(_row(f"p99 at 3,000 qps < 1 ms (loopback, EDNS {'on' if edns else 'off'})",
                                 f"{res.p99:.3f} ms (dnsmasq {dm:.3f}, unbound {ub:.3f})", res.p99 < 1.0))
                if edns and p.default_idle:
                    da, dd, du = (p.default_idle[n].p99 for n in ("node-agent", "dnsmasq", "unbound"))
                    rows.append(_row("  (same, CPU idle not held, for reference)",
                                     f"{da:.3f} ms (dnsmasq {dd:.3f}, unbound {du:.3f})", None))
        lost = sum(r.lost for (n, *_), r in [*p.sat.items(), *p.fixed.items()] if n == "node-agent")
        sent = sum(r.sent for (n, *_), r in [*p.sat.items(), *p.fixed.items()] if n == "node-agent")
        rows.append(_row("zero lost queries (loopback runs)", f"{lost} of {sent:,}", lost == 0))
        rows.append(_row("agent RSS (small table, after runs) < 300 MB", f"{p.rss_mib['node-agent']:.0f} MiB",
                         p.rss_mib["node-agent"] < 300))
    b = c.get("bpfpath")
    if isinstance(b, BpfFigures):
        x = b.fixed["bpf"]
        rows.append(_row("p99 at 3,000 qps < 1 ms (through BPF from a pod)",
                         f"{x.p99:.3f} ms (direct {b.fixed['direct'].p99:.3f})", x.p99 < 1.0))
        leaked = sum(b.leaked.values())
        rows.append(_row("no pod query reaches kube-dns past the agent", f"{leaked}", leaked == 0))
        lost = sum(r.lost for r in [*b.sat.values(), *b.fixed.values()])
        sent = sum(r.sent for r in [*b.sat.values(), *b.fixed.values()])
        rows.append(_row("zero lost queries (pod runs, all paths)", f"{lost} of {sent:,}", lost == 0))
    kernel = c.get("kernel")
    for k in kernel if isinstance(kernel, list) else ():
        if isinstance(k, kernelpath.KernelFigures):
            # The section's own rows; None there is a target the rounds' range leaves open either way.
            for t, m, ok in kernelpath.target_rows(k):
                rows.append(_row(t if t.startswith(" ") else f"kernel answers ({k.client}): {t}", m, ok,
                                 undecided="unclear"))
    up = c.get("upstream")
    if isinstance(up, UpstreamFigures):
        for sw in up.sweeps:
            if not sw.queries.get("dnsmasq"):
                continue
            fewer = 1 - sw.queries["node-agent"] / sw.queries["dnsmasq"]
            rows.append(_row(f"ndots:5 upstream queries >= 75% fewer than dnsmasq fwd ({sw.namespaces} ns)",
                             f"{sw.queries['node-agent']} vs {sw.queries['dnsmasq']} = {fewer * 100:.0f}% fewer",
                             fewer >= 0.75))
    s: Any = c.get("scale")
    if isinstance(s, dict):
        rows.append(_row("full sync of the scale table < 2 s", f"{s['full_sync_ms']:,.0f} ms (table); "
                         f"{s['convert_sync_ms']:,.0f} ms from API objects", s["full_sync_ms"] < 2000))
        rows.append(_row("resident memory < 300 MB (scale table)", f"{s['rss_table_mib']:.0f} MiB VmRSS",
                         s["rss_table_mib"] < 300))
        g = s["hit_scale_us"] / s["hit_small_us"]
        rows.append(_row("hit-path CPU does not grow with table size", f"{s['hit_small_us']:.2f} -> "
                         f"{s['hit_scale_us']:.2f} us/query ({g:.2f}x)", g < 1.2))
    return table("Targets", ["target", "measured", "verdict"], rows)
