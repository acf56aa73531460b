"""Upstream load of an ndots:5 workload: queries that reach kube-dns, with three things in front of it.

Each scenario builds a fresh simulated node (node_agent.testing.simnode) with the same pods, the same kube-dns
zone and the same workload: every pod runs real glibc `getent ahosts NAME` (A + AAAA per search-list
expansion, exactly what an application's getaddrinfo does with the kubelet's resolv.conf: 3 search
domains, ndots:5) over a list of names, for several rounds (apps without their own DNS cache):

    none        pods talk to kube-dns (10.96.0.10) directly
    dnsmasq     a plain caching forwarder in the agent's place: dnsmasq on 169.254.20.10 in the node netns,
                --server=10.96.0.10, pods' 10.96.0.10:53 DNATed to it by nftables on the node bridge
                (how NodeLocal DNSCache-style setups without BPF reach it). --neg-ttl=30 because the
                simulated kube-dns sends no SOA with negative answers (CoreDNS does).
    node-agent  the agent with BPF steering, mesh table = the same services kube-dns serves;
                cache.neg_ttl_nosoa=30 for the same reason, so both caches keep negatives equally long

Counted: every query in kube-dns's log during the workload (node.kube_dns_queries()), and getent
failures (a name that did not resolve), which must be 0 in every scenario.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.common import external_names, kube_dns_ttl, mesh_yaml, ratio, stop, svc_fqdn, table
from node_agent.testing.simnode import DEFAULT_ZONE, KUBE_DNS, RESPONDER, SimNode, sh

SCENARIOS = ("none", "dnsmasq", "node-agent")
NAMESPACES = ("shop", "pay", "auth", "media", "search", "ads")


@dataclass
class Sweep:
    """One namespace count: queries at kube-dns per scenario."""

    namespaces: int
    pods: int
    lookups: int = 0
    queries: dict[str, int] = field(default_factory=dict)
    distinct: dict[str, int] = field(default_factory=dict)  # distinct (qtype, name) among them
    top_repeats: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class UpstreamFigures:
    sweeps: list[Sweep] = field(default_factory=list)
    rounds: int = 0
    names_per_pod: int = 0
    mix: str = ""


def workload(ns: str, services: list[tuple[str, str, str]], externals: list[tuple[str, str]]) -> list[str]:
    """What an app in namespace ns looks up: own-namespace short names, name.namespace, full service
    names without the trailing dot, and external names (every form but the last gets search expansions)."""
    own = [n for s_ns, n, _ in services if s_ns == ns][:4]
    other = [(s_ns, n) for s_ns, n, _ in services if s_ns != ns][:4]
    names = list(own)
    names += [f"{n}.{s_ns}" for s_ns, n in other[:2]]
    names += [svc_fqdn(s_ns, n) for s_ns, n in other[2:]]
    names += [e for e, _ in externals]
    return names


def _run_workload(node: SimNode, names_by_pod: dict[str, list[str]], rounds: int) -> int:
    """Round by round, pod after pod (deterministic: no two pods race for the same name, so the counts
    do not depend on in-flight coalescing). Returns the number of failed lookups."""
    failed = 0
    for _ in range(rounds):
        for pod in node.pods:
            names = " ".join(names_by_pod[pod.name])
            script = f"f=0; for n in {names}; do getent ahosts $n >/dev/null || f=$((f+1)); done; echo $f"
            r = pod.run("sh", "-c", script, timeout=120)
            failed += int(r.stdout.strip() or 0)
    return failed


def _queries_after(node: SimNode, before: int) -> list[tuple[str, str, str]]:
    time.sleep(0.5)  # dnsmasq writes its log as it goes; let the last lines land
    return node.kube_dns_queries()[before:]


def measure(workdir: Path, *, pods_per_ns: int, rounds: int, ns_counts: tuple[int, ...], n_ext: int = 6
            ) -> UpstreamFigures:
    services = [(NAMESPACES[i % len(NAMESPACES)], f"svc{i}", f"10.100.0.{i + 1}") for i in range(4 * len(NAMESPACES))]
    externals = [(f"api{i}.partner{i}.example", ip) for i, (_, ip) in enumerate(external_names(n_ext))]
    zone = (*DEFAULT_ZONE, *[(svc_fqdn(ns, n), ip) for ns, n, ip in services], *externals)
    figs = UpstreamFigures(rounds=rounds)
    for n_ns in ns_counts:
        pod_list = tuple((f"app{i}", NAMESPACES[i % n_ns]) for i in range(pods_per_ns * n_ns))
        names_by_pod = {name: workload(ns, services, externals) for name, ns in pod_list}
        sw = Sweep(namespaces=n_ns, pods=len(pod_list))
        figs.names_per_pod = len(next(iter(names_by_pod.values())))
        sw.lookups = sw.pods * rounds * figs.names_per_pod
        ex = names_by_pod[pod_list[0][0]]
        figs.mix = f"per pod: {', '.join(ex[:2])}, {ex[4]}, {ex[6]}, {ex[8]}, ... ({len(ex)} names)"
        for scenario in SCENARIOS:
            with SimNode.create(pods=pod_list, zone=zone, **kube_dns_ttl()) as node:  # type: ignore[arg-type]
                assert node.workdir is not None
                fwd: subprocess.Popen[str] | None = None
                try:
                    if scenario == "dnsmasq":
                        fwd = _start_forwarder(node)
                    elif scenario == "node-agent":
                        mesh = node.workdir / "bench-mesh.yaml"
                        mesh.write_text(mesh_yaml(services))
                        cfg = node.workdir / "bench-agent.yaml"
                        cfg.write_text(yaml.safe_dump({"cache": {"neg_ttl_nosoa": 30}}))
                        node.start_agent(str(mesh), args=["--config", str(cfg), "--log-level", "warning"])
                    before = len(node.kube_dns_queries())
                    sw.failures[scenario] = _run_workload(node, names_by_pod, rounds)
                    seen = _queries_after(node, before)
                    sw.queries[scenario] = len(seen)
                    keys = Counter((t, n) for t, n, _ in seen)
                    sw.distinct[scenario] = len(keys)
                    sw.top_repeats[scenario] = [(f"{t} {n}", c) for (t, n), c in keys.most_common(2) if c > 1]
                finally:
                    stop(fwd)
        figs.sweeps.append(sw)
    return figs


def _start_forwarder(node: SimNode) -> subprocess.Popen[str]:
    n = node.node_netns
    assert node.workdir is not None
    sh("ip", "-n", n, "addr", "replace", f"{RESPONDER}/32", "dev", "lo")
    rules = (f"table ip nabench_fwd {{\n chain pre {{\n  type nat hook prerouting priority -100; policy accept;\n"
             f"  iifname \"cbr0\" ip daddr {KUBE_DNS} udp dport 53 dnat to {RESPONDER}\n"
             f"  iifname \"cbr0\" ip daddr {KUBE_DNS} tcp dport 53 dnat to {RESPONDER}\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", n, "nft", "-f", "-"], input=rules, text=True, check=True,
                   capture_output=True, timeout=10)
    err = node.workdir / "fwd.err"
    # -k, not -d: in debug mode dnsmasq serves TCP in its only process, and a slow TCP client stalls its UDP.
    p = subprocess.Popen(node.node_exec(
        "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
        f"--listen-address={RESPONDER}", "--bind-interfaces", "--port=53", "--user=root",
        f"--server={KUBE_DNS}", "--cache-size=10000", "--neg-ttl=30",
        f"--pid-file={node.workdir / 'fwd.pid'}"), stdout=subprocess.DEVNULL, stderr=open(err, "w"), text=True)
    node.wait_dns_server(RESPONDER, p, "forwarder dnsmasq", err)
    return p


def report(f: UpstreamFigures) -> str:
    rows = []
    notes = []
    for sw in f.sweeps:
        none, fwd = sw.queries.get("none"), sw.queries.get("dnsmasq")
        for s in SCENARIOS:
            q = sw.queries.get(s)
            vs_fwd = f"{(1 - q / fwd) * 100:.0f}% fewer" if q is not None and fwd and q <= fwd else ratio(q, fwd)
            rows.append([f"{sw.namespaces} ns, {sw.pods} pods: {s}", sw.lookups, q, sw.distinct.get(s),
                         q / sw.lookups if q is not None and sw.lookups else None, ratio(q, none), vs_fwd,
                         sw.failures.get(s)])
            if s == "node-agent" and sw.top_repeats.get(s):
                notes.append(f"{sw.namespaces} ns: most repeated at kube-dns with node-agent: "
                             + ", ".join(f"{n} x{c}" for n, c in sw.top_repeats[s]))
    return table(
        f"Upstream load, ndots:5 glibc `getent ahosts` replay from pods: {f.names_per_pod} names x {f.rounds} rounds",
        ["namespaces, pods: in front of kube-dns", "lookups", "queries at kube-dns", "distinct (type,name)",
         "per lookup", "vs none", "vs dnsmasq fwd", "failed lookups"],
        rows,
        note=f"{f.mix}; pods spread evenly over the namespaces, run one after another\n"
             "'queries at kube-dns' for 'none' = what the pods themselves send (A+AAAA per search expansion)\n"
             + "\n".join(notes),
    )
