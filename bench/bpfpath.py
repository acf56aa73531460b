"""Three ways for a pod's query to reach the agent, on a simulated node (node_agent.testing.simnode):

    bpf     pod (in its cgroup) -> 10.96.0.10:53, rewritten by the agent's cgroup BPF programs to
            169.254.20.10:53 (the product's path)
    direct  pod -> 169.254.20.10:53 (no steering at all: the floor)
    dnat    pod netns has an nftables table `ip daddr 10.96.0.10 udp dport 53 dnat to 169.254.20.10`
            (what a per-pod-iptables design does); the load generator runs in the pod's netns but not
            in its cgroup, so BPF does not steer it and netfilter (with conntrack) does the work

dnsperf runs inside the pod's netns pinned to core 0; the agent (BPF on) is pinned to core 1. The same
names are warmed into the agent's cache first, so every measured query is a cache hit. kube-dns's
query log is checked for each mode: a steered query must never reach it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench import dnsperf
from bench.common import (
    CLIENT_CORE,
    SERVER_CORE,
    external_names,
    fmt,
    kube_dns_ttl,
    mesh_yaml,
    pin,
    ratio,
    svc_fqdn,
    table,
)
from node_agent.testing.simnode import DEFAULT_ZONE, KUBE_DNS, RESPONDER, Pod, SimNode, sh

MODES = ("bpf", "direct", "dnat")
LABELS = {
    "bpf": "BPF steering (pod -> 10.96.0.10)",
    "direct": "direct (pod -> 169.254.20.10)",
    "dnat": "nftables DNAT in pod netns",
}
NFT_TABLE = "nabench"


@dataclass
class BpfFigures:
    sat: dict[str, dnsperf.Result] = field(default_factory=dict)
    fixed: dict[str, dnsperf.Result] = field(default_factory=dict)
    leaked: dict[str, int] = field(default_factory=dict)  # queries from the pod's IP that reached kube-dns
    rate: int = 0


def _pod_runner(pod: Pod):  # type: ignore[no-untyped-def]
    def run(argv: Sequence[str], timeout: float, out: IO[str]) -> tuple[int, int]:
        return dnsperf.wait_rusage(pod.popen(*argv, stdout=out, stderr=subprocess.STDOUT), timeout)

    return run


def _netns_runner(netns: str):  # type: ignore[no-untyped-def]
    def run(argv: Sequence[str], timeout: float, out: IO[str]) -> tuple[int, int]:
        p = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=out, stderr=subprocess.STDOUT, text=True)
        return dnsperf.wait_rusage(p, timeout)

    return run


def _nft(netns: str, on: bool) -> None:
    if on:
        rules = (f"table ip {NFT_TABLE} {{\n chain out {{\n  type nat hook output priority -100; policy accept;\n"
                 f"  ip daddr {KUBE_DNS} udp dport 53 dnat to {RESPONDER}\n"
                 f"  ip daddr {KUBE_DNS} tcp dport 53 dnat to {RESPONDER}\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=rules, text=True, check=True,
                       capture_output=True, timeout=10)
    else:
        sh("ip", "netns", "exec", netns, "nft", "delete", "table", "ip", NFT_TABLE, check=False)


def measure(workdir: Path, *, seconds: float, rate: int, n_ext: int = 100, n_svc: int = 100,
            rounds: int = 3) -> BpfFigures:
    externals = external_names(n_ext)
    services = [("a", f"svc{i}", f"10.100.{i // 250}.{i % 250 + 1}") for i in range(n_svc)]
    names = [n for n, _ in externals] + [svc_fqdn(ns, n) for ns, n, _ in services]
    figs = BpfFigures(rate=rate)
    with SimNode.create(pods=(("client", "a"),), zone=(*DEFAULT_ZONE, *externals),
                        **kube_dns_ttl()) as node:  # type: ignore[arg-type]
        assert node.workdir is not None and node.dnsmasq is not None
        pod = node.pod("client")
        mesh = node.workdir / "bench-mesh.yaml"
        mesh.write_text(mesh_yaml(services))
        qfile = dnsperf.write_queries(node.workdir / "queries.txt", names)
        agent = node.start_agent(str(mesh), args=["--log-level", "warning"])
        pin(agent.proc.pid, SERVER_CORE)
        pin(node.dnsmasq.pid, CLIENT_CORE)
        runners = {"bpf": _pod_runner(pod), "direct": _pod_runner(pod), "dnat": _netns_runner(pod.netns)}
        servers = {"bpf": KUBE_DNS, "direct": RESPONDER, "dnat": KUBE_DNS}
        try:
            _nft(pod.netns, True)
            # Warm the agent's cache (same pod IP in every mode, so the same view and entries).
            for edns in (True, False):
                dnsperf.run(RESPONDER, 53, qfile, 10, rate=2000, edns=edns, max_runs=1, runner=runners["direct"])
            sat: dict[str, list[dnsperf.Result]] = {m: [] for m in MODES}
            fixed: dict[str, list[dnsperf.Result]] = {m: [] for m in MODES}
            figs.leaked = dict.fromkeys(MODES, 0)
            for _ in range(rounds):
                for m in MODES:
                    before = sum(1 for _, _, src in node.kube_dns_queries() if src == pod.ip)
                    sat[m].append(dnsperf.run(servers[m], 53, qfile, seconds / rounds, edns=True,
                                              server_pid=agent.proc.pid, runner=runners[m]))
                    fixed[m].append(dnsperf.run(servers[m], 53, qfile, seconds / rounds, rate=rate, edns=True,
                                                verbose=True, server_pid=agent.proc.pid, runner=runners[m]))
                    figs.leaked[m] += sum(1 for _, _, src in node.kube_dns_queries() if src == pod.ip) - before
            for m in MODES:
                figs.sat[m] = dnsperf.merge(sat[m])
                figs.fixed[m] = dnsperf.merge(fixed[m])
        finally:
            _nft(pod.netns, False)
    return figs


def report(f: BpfFigures) -> str:
    rows = []
    d_both = f.sat["direct"].cpu_us_per_query + f.sat["direct"].client_us_per_query
    for m in MODES:
        s, x = f.sat[m], f.fixed[m]
        both = s.cpu_us_per_query + s.client_us_per_query
        rows.append([LABELS[m], s.qps, s.cpu_us_per_query, s.client_us_per_query, both, ratio(both, d_both),
                     fmt(x.p50, 3), fmt(x.p99, 3), x.cpu_us_per_query, s.lost + x.lost, f.leaked[m]])
    steal = [r.steal_pct for r in [*f.sat.values(), *f.fixed.values()]]
    return table(
        "Pod -> agent paths on a simulated node (agent with BPF on, core 1; dnsperf in the pod netns, core 0; EDNS on)",
        ["path", "sat. QPS", "agent us/q", "client us/q", "sum us/q", "vs direct", f"p50 ms @{f.rate}",
         f"p99 ms @{f.rate}", f"agent us/q @{f.rate}", "lost", "pod->kube-dns"],
        rows,
        note="us/q columns 2-5 at saturation: agent = its schedstat delta, client = dnsperf's rusage (user+sys, "
             "i.e. the sending side's kernel path:\nBPF sendmsg/recvmsg hooks or netfilter DNAT + conntrack), per "
             "completed query. 'pod->kube-dns' = queries from the pod's IP in kube-dns's log (leaked past the agent; "
             "should be 0).\n"
             f"hypervisor steal during runs: mean {sum(steal) / max(1, len(steal)):.1f}%",
    )
