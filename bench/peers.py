"""The servers under test on loopback, all pinned to one core, with the same names behind them.

    127.0.10.1:PORT  "authority": dnsmasq, no cache, serves every benchmark name (TTL 3600), pinned to
                     the client core; it stands in for kube-dns + the internet and only sees misses.
    127.0.10.2:PORT  node-agent --no-bpf: cluster names from its mesh table, the rest forwarded to .1
    127.0.10.3:PORT  dnsmasq, caching forwarder to .1
    127.0.10.4:PORT  unbound, 1 thread, caching forwarder to .1 (no validation)

Clients query from 127.0.0.1; the agent answers only known clients, so its config lists 127.0.0.1 as
a node IP (table.node_ips). Everything is a subprocess of ours, stopped in `close()`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import dnsperf
from bench.common import (
    CLIENT_CORE,
    REPO,
    SERVER_CORE,
    IdleHold,
    cpu_ns,
    external_names,
    fmt,
    free_port,
    mesh_yaml,
    ratio,
    rss_kib,
    service_names,
    stop,
    svc_fqdn,
    table,
    wait_udp_dns,
)

AUTH = "127.0.10.1"
ADDRS = {"node-agent": "127.0.10.2", "dnsmasq": "127.0.10.3", "unbound": "127.0.10.4", "io-floor": "127.0.10.5"}
CLIENT = "127.0.0.1"


def dnsmasq_forwarder_argv(listen: str, port: int, upstream: str, upstream_port: int, pid_file: Path) -> list[str]:
    """dnsmasq as a caching forwarder (10,000 entries) on listen:port, in the foreground."""
    return ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--no-resolv", "--no-hosts",
            f"--listen-address={listen}", "--bind-interfaces", f"--port={port}", "--user=root",
            "--cache-size=10000", f"--server={upstream}#{upstream_port}", f"--pid-file={pid_file}"]


def unbound_forwarder_conf(listen: str, port: int, upstream: str, upstream_port: int, workdir: Path, *,
                           allow: Sequence[str]) -> str:
    """unbound.conf of a caching forwarder with one thread, no validation, answering `allow` (CIDRs)."""
    acl = "".join(f"  access-control: {a} allow\n" for a in allow)
    return f"""server:
  interface: {listen}@{port}
  port: {port}
  num-threads: 1
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{workdir}"
  pidfile: "{workdir / 'unbound.pid'}"
  logfile: ""
  use-syslog: no
  verbosity: 0
  module-config: "iterator"
  do-not-query-localhost: no
{acl}  do-ip6: no
  so-reuseport: no
  msg-cache-size: 16m
  rrset-cache-size: 32m
  minimal-responses: yes
forward-zone:
  name: "."
  forward-addr: {upstream}@{upstream_port}
remote-control:
  control-enable: no
"""


@dataclass
class Server:
    name: str
    addr: str
    port: int
    proc: subprocess.Popen[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        return rss_kib(self.pid) / 1024


@dataclass
class Peers:
    workdir: Path
    port: int
    externals: list[tuple[str, str]]
    services: list[tuple[str, str, str]]
    agent_log_level: str = "warning"
    servers: dict[str, Server] = field(default_factory=dict)
    auth: subprocess.Popen[str] | None = None
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __enter__(self) -> Peers:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _popen(self, argv: list[str], core: int, log: Path) -> subprocess.Popen[str]:
        out = open(log, "w")  # noqa: SIM115 - closed with the process (inherited by it)
        p = subprocess.Popen(["taskset", "-c", str(core), *argv], stdout=out, stderr=subprocess.STDOUT, text=True,
                             cwd=REPO)
        out.close()
        self._procs.append(p)
        return p

    def start(self) -> None:
        w, port = self.workdir, self.port
        records = [*self.externals, *[(svc_fqdn(ns, n), ip) for ns, n, ip in self.services]]
        hosts = w / "auth.hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in records))
        self.auth = self._popen(
            ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
             f"--listen-address={AUTH}", "--bind-interfaces", f"--port={port}", "--user=root", "--cache-size=0",
             "--local-ttl=3600", "--address=/#/", f"--pid-file={w / 'auth.pid'}"],
            CLIENT_CORE, w / "auth.log")
        wait_udp_dns(AUTH, port)

        # node-agent
        mesh = w / "mesh.yaml"
        mesh.write_text(mesh_yaml(self.services))
        cfg = w / "agent.yaml"
        cfg.write_text(yaml.safe_dump({"table": {"node_ips": [CLIENT]}}))
        a = ADDRS["node-agent"]
        agent = self._popen(
            [sys.executable, "-m", "node_agent.cli", "run", "--no-bpf", "--config", str(cfg),
             "--listen", f"{a}:{port}", "--upstream", f"{AUTH}:{port}",
             "--metrics-addr", f"127.0.0.1:{free_port()}", "--static", str(mesh),
             "--log-level", self.agent_log_level],
            SERVER_CORE, w / "agent.log")
        self.servers["node-agent"] = Server("node-agent", a, port, agent)

        # dnsmasq as a caching forwarder
        d = ADDRS["dnsmasq"]
        dm = self._popen(dnsmasq_forwarder_argv(d, port, AUTH, port, w / "dnsmasq.pid"), SERVER_CORE,
                         w / "dnsmasq.log")
        self.servers["dnsmasq"] = Server("dnsmasq", d, port, dm)

        # unbound as a caching forwarder, one thread
        u = ADDRS["unbound"]
        conf = w / "unbound.conf"
        conf.write_text(unbound_forwarder_conf(u, port, AUTH, port, w, allow=("127.0.0.0/8",)))
        ub = self._popen(["unbound", "-d", "-c", str(conf)], SERVER_CORE, w / "unbound.log")
        self.servers["unbound"] = Server("unbound", u, port, ub)

        # the floor: the agent's own UDP path echoing the question, no DNS work (bench/floor.py)
        f = ADDRS["io-floor"]
        fl = self._popen([sys.executable, str(REPO / "bench" / "floor.py"), f, str(port)], SERVER_CORE,
                         w / "io-floor.log")
        self.servers["io-floor"] = Server("io-floor", f, port, fl)

        for s in self.servers.values():
            try:
                wait_udp_dns(s.addr, s.port, svc_fqdn(*self.services[0][:2]) + ".", timeout=20)
            except RuntimeError:
                log = (w / f"{s.name}.log").read_text()[-2000:] if (w / f"{s.name}.log").exists() else ""
                raise RuntimeError(f"{s.name} did not come up:\n{log}") from None
        time.sleep(0.2)

    def close(self) -> None:
        for p in reversed(self._procs):
            stop(p)
        self._procs.clear()


# ---- the section ------------------------------------------------------------------------------------
@dataclass
class PeerFigures:
    sat: dict[tuple[str, bool], dnsperf.Result] = field(default_factory=dict)  # (server, edns) -> dnsperf.Result
    fixed: dict[tuple[str, bool, int], dnsperf.Result] = field(default_factory=dict)  # (server, edns, rate) -> Result
    rss_mib: dict[str, float] = field(default_factory=dict)
    idle_cpu_us_per_s: dict[str, float] = field(default_factory=dict)
    idle_policy: str = ""
    default_idle: dict[str, dnsperf.Result] = field(default_factory=dict)  # 3,000 qps, EDNS on, idle not held


def measure(workdir: Path, *, n_ext: int, n_svc: int, sat_seconds: float, rate_seconds: float,
            rates: tuple[int, ...], edns_modes: tuple[bool, ...] = (True, False), rounds: int = 3,
            idle: IdleHold | None = None) -> PeerFigures:
    """Servers are interleaved in `rounds` short slices per measurement (this is a VM with noisy
    neighbours: steal time comes in bursts; interleaving spreads it evenly over the servers).
    With `idle` held, the fixed-rate runs are repeated once at 3,000 qps with it paused, so the
    table shows latency under the machine's own idle policy too."""

    externals = external_names(n_ext)
    services = service_names(n_svc)
    names = [n for n, _ in externals] + [svc_fqdn(ns, n) for ns, n, _ in services]
    qfile = dnsperf.write_queries(workdir / "queries.txt", names)
    figs = PeerFigures(idle_policy=idle.describe() if idle else IdleHold().describe())
    with Peers(workdir, free_port(AUTH), externals, services) as peers:
        for name, s in peers.servers.items():
            # Warm: every name once, with and without EDNS (the agent keys entries by the DO bit only).
            for edns in (True, False):
                dnsperf.run(s.addr, s.port, qfile, 10, rate=2000, edns=edns, max_runs=1, local_addr=CLIENT)
            c0 = cpu_ns(s.pid)
            time.sleep(1.0)
            figs.idle_cpu_us_per_s[name] = (cpu_ns(s.pid) - c0) / 1000
        def interleaved(seconds: float, **kw: Any) -> dict[str, dnsperf.Result]:
            """One measurement: every server, `rounds` slices each, taking turns; pooled per server."""
            runs: dict[str, list[dnsperf.Result]] = {n: [] for n in peers.servers}
            for _ in range(rounds):
                for name, s in peers.servers.items():
                    runs[name].append(dnsperf.run(s.addr, s.port, qfile, seconds / rounds, local_addr=CLIENT,
                                                  server_pid=s.pid, **kw))
            return {n: dnsperf.merge(r) for n, r in runs.items()}

        for edns in edns_modes:
            for name, res in interleaved(sat_seconds, edns=edns).items():
                figs.sat[(name, edns)] = res
            for rate in rates:
                for name, res in interleaved(rate_seconds, rate=rate, edns=edns, verbose=True).items():
                    figs.fixed[(name, edns, rate)] = res
        if idle is not None and idle.held and 3000 in rates and True in edns_modes:
            with idle.paused():
                figs.default_idle = interleaved(rate_seconds, rate=3000, edns=True, verbose=True)
        for name, s in peers.servers.items():
            figs.rss_mib[name] = s.rss_mib()
    return figs


def _rate_rows(rate: str, mode: str, f: dict[str, dnsperf.Result], order: list[str]) -> list[list[object]]:
    rows: list[list[object]] = []
    for label, attr in (("p50 ms", "p50"), ("p99 ms", "p99"), ("CPU us/query", "cpu_us_per_query")):
        vals = [getattr(f[n], attr) for n in order]
        rows.append([f"  {rate} {label}, {mode}", *[fmt(v, 3) if attr != "cpu_us_per_query" else v for v in vals],
                     ratio(vals[0], vals[1]), ratio(vals[0], vals[2])])
    rows.append([f"  {rate} lost, {mode}", *[f[n].lost for n in order], "", ""])
    return rows


def report(figs: PeerFigures, rates: tuple[int, ...], edns_modes: tuple[bool, ...]) -> str:
    order = ["node-agent", "dnsmasq", "unbound", "io-floor"]
    out = []
    rows = []
    for edns in edns_modes:
        e = "on" if edns else "off"
        r = {n: figs.sat[(n, edns)] for n in order}
        rows.append([f"saturated QPS, EDNS {e}", *[r[n].qps for n in order],
                     ratio(r["node-agent"].qps, r["dnsmasq"].qps), ratio(r["node-agent"].qps, r["unbound"].qps)])
        rows.append([f"  CPU us/query (saturated), EDNS {e}", *[r[n].cpu_us_per_query for n in order],
                     ratio(r["node-agent"].cpu_us_per_query, r["dnsmasq"].cpu_us_per_query),
                     ratio(r["node-agent"].cpu_us_per_query, r["unbound"].cpu_us_per_query)])
        rows.append([f"  lost (saturated), EDNS {e}", *[r[n].lost for n in order], "", ""])
        for rate in rates:
            rows += _rate_rows(f"{rate} qps", f"EDNS {e}", {n: figs.fixed[(n, edns, rate)] for n in order}, order)
    if figs.default_idle:
        rows += _rate_rows("3000 qps", "EDNS on, idle not held", figs.default_idle, order)
    steal = [r.steal_pct for r in [*figs.sat.values(), *figs.fixed.values(), *figs.default_idle.values()]]
    rows.append(["RSS MiB (after runs)", *[figs.rss_mib[n] for n in order], "", ""])
    rows.append(["idle CPU us/s (after warm-up)", *[figs.idle_cpu_us_per_s[n] for n in order], "", ""])
    out.append(table("Cache hits on loopback: 1 dnsperf client on core 0, server on core 1",
                     ["measure", *order, "agent/dnsmasq", "agent/unbound"], rows,
                     note="io-floor = bench/floor.py, the agent's UDP path (uvloop + recvmmsg/sendmmsg) echoing the "
                          "question, no DNS work (the floor of the agent's design)\n"
                          "CPU = server's /proc/PID/task/*/schedstat run-time delta / completed queries; "
                          "p50/p99 from dnsperf -v per-query latencies,\n"
                          "rounds interleaved across servers and pooled; "
                          f"CPU idle: {figs.idle_policy};\n"
                          f"hypervisor steal during runs: mean {sum(steal) / max(1, len(steal)):.1f}%, "
                          f"max {max(steal, default=0):.1f}%"))
    return "\n".join(out)
