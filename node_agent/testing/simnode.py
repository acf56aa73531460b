"""A simulated Kubernetes node, made of real kernel parts, for the demo, the tests and the benchmarks.

- a node netns with a bridge (cbr0, 10.244.1.1/24) like kubenet, and kube-dns: a real dnsmasq on
  10.96.0.10:53 serving a small cluster zone, logging every query with its source address;
- N pod netns, each on a veth into the bridge, each pod's processes in its own cgroup v2 under one
  test cgroup, with the resolv.conf the kubelet writes (nameserver 10.96.0.10, the search list,
  ndots:5), untouched;
- no route out of any of them: the node netns has no default route and no uplink, pods route only to
  the node. Everything is removed by `close()`, also after a failed set-up.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from node_agent.app.metrics import parse_exposition
from node_agent.kernel import cgroups
from node_agent.kernel.loader import uninstall
from node_agent.testing.pace import python_pace, ready_bound

KUBE_DNS = "10.96.0.10"
KUBE_DNS6 = "fd00:10:96::a"  # the dual-stack kube-dns ClusterIP
RESPONDER6 = "fd00:a9fe::10"
NODE_BRIDGE_IP6 = "fd00:10:244:1::1"
RESPONDER = "169.254.20.10"
METRICS_PORT = 9253
CLUSTER_DOMAIN = "cluster.local"
NODE_BRIDGE_IP = "10.244.1.1"
POD_NET = "10.244.1"

# kube-dns's zone in the simulated cluster, and a stand-in for "the internet" behind it.
DEFAULT_ZONE: tuple[tuple[str, str], ...] = (
    ("kube-dns.kube-system.svc.cluster.local", KUBE_DNS),
    ("web.a.svc.cluster.local", "10.96.1.10"),
    ("db.b.svc.cluster.local", "10.96.2.20"),
    ("kafka.a.svc.cluster.local", "10.244.1.21"),
    ("kafka-0.kafka.a.svc.cluster.local", "10.244.1.21"),
    ("kafka-1.kafka.a.svc.cluster.local", "10.244.1.22"),
    ("istio.io", "151.101.1.1"),
    ("example.org", "93.184.215.14"),
    ("api.example.com", "203.0.113.7"),
)


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Pod:
    name: str
    namespace: str
    ip: str
    netns: str
    cgroup: str
    uid: str
    ip6: str = ""

    def run(self, *cmd: str, timeout: float = 20, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run cmd inside the pod: its netns, its resolv.conf, its cgroup (so BPF sees the pod)."""
        script = f'echo $$ > "{self.cgroup}/cgroup.procs" && exec ip netns exec {self.netns} "$@"'
        return subprocess.run(
            ["sh", "-c", script, "sh", *cmd], capture_output=True, text=True, timeout=timeout, check=check
        )

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        script = f'echo $$ > "{self.cgroup}/cgroup.procs" && exec ip netns exec {self.netns} "$@"'
        return subprocess.Popen(["sh", "-c", script, "sh", *cmd], text=True, **kw)  # type: ignore[call-overload]

    @property
    def cgroup_id(self) -> int:
        return cgroups.cgroup_id(self.cgroup)


@dataclass
class SimNode:
    """Build with `SimNode.create(...)`; use as a context manager so teardown always runs."""

    tag: str
    cgroup: str
    pods: list[Pod] = field(default_factory=list)
    dnsmasq: subprocess.Popen[str] | None = None
    dnsmasq_log: Path | None = None
    workdir: Path | None = None
    agents: list[AgentProcess] = field(default_factory=list)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    _netns: list[str] = field(default_factory=list)

    @property
    def node_netns(self) -> str:
        return f"na{self.tag}-node"

    @classmethod
    def create(
        cls,
        pods: Sequence[tuple[str, str]] = (("client", "a"), ("other", "b")),
        zone: Sequence[tuple[str, str]] = DEFAULT_ZONE,
        extra_dnsmasq: Sequence[str] = (),
        local_ttl: int = 30,
    ) -> SimNode:
        """pods: (name, namespace) pairs. zone: (name, address) records kube-dns serves, with TTL
        local_ttl (30 like CoreDNS; dnsmasq's own default 0 would make every answer uncacheable)."""
        tag = secrets.token_hex(3)
        root = cgroups.cgroup2_mount()
        node = cls(tag=tag, cgroup=os.path.join(root, f"na-sim-{tag}"))
        try:
            node._build(pods, zone, [f"--local-ttl={local_ttl}", *extra_dnsmasq])
        except BaseException:
            node.close()
            raise
        return node

    def __enter__(self) -> SimNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def node_exec(self, *cmd: str) -> list[str]:
        """argv that runs cmd in the node netns. nsenter, not `ip netns exec`: the latter remounts /sys
        for the netns, which would hide cgroupfs and bpffs from the agent."""
        return ["nsenter", f"--net=/run/netns/{self.node_netns}", *cmd]

    def _build(
        self, pods: Sequence[tuple[str, str]], zone: Sequence[tuple[str, str]], extra_dnsmasq: Sequence[str]
    ) -> None:
        self.workdir = Path(f"/tmp/na-sim-{self.tag}")
        self.workdir.mkdir(mode=0o755)
        os.makedirs(self.cgroup)
        n = self.node_netns
        sh("ip", "netns", "add", n)
        self._netns.append(n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", n, "link", "add", "cbr0", "type", "bridge")
        sh("ip", "-n", n, "addr", "add", f"{NODE_BRIDGE_IP}/24", "dev", "cbr0")
        sh("ip", "-n", n, "link", "set", "cbr0", "up")
        sh("ip", "-n", n, "addr", "add", f"{KUBE_DNS}/32", "dev", "lo")
        # Dual stack; nodad: no duplicate-address wait, the addresses are usable at once.
        sh("ip", "-n", n, "addr", "add", f"{NODE_BRIDGE_IP6}/64", "dev", "cbr0", "nodad")
        sh("ip", "-n", n, "addr", "add", f"{KUBE_DNS6}/128", "dev", "lo", "nodad")
        for i, (name, ns) in enumerate(pods):
            self.add_pod(name, ns, index=i)
        self._start_dnsmasq(zone, extra_dnsmasq)

    def add_pod(self, name: str, namespace: str, index: int | None = None) -> Pod:
        i = len(self.pods) if index is None else index
        netns = f"na{self.tag}-p{i}"
        ip = f"{POD_NET}.{10 + i}"
        ip6 = f"fd00:10:244:1::{10 + i:x}"
        sh("ip", "netns", "add", netns)
        self._netns.append(netns)
        host_if = f"veth{i}"
        sh(
            "ip",
            "link",
            "add",
            host_if,
            "netns",
            self.node_netns,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
        )
        sh("ip", "-n", self.node_netns, "link", "set", host_if, "master", "cbr0", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        # Pods reach the node's service addresses through the node; the node has no way out.
        sh("ip", "-n", netns, "route", "add", "default", "via", NODE_BRIDGE_IP)
        sh("ip", "-n", netns, "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
        sh("ip", "-n", netns, "-6", "route", "add", "default", "via", NODE_BRIDGE_IP6)
        etc = Path("/etc/netns") / netns
        etc.mkdir(parents=True, exist_ok=True)
        searches = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
        (etc / "resolv.conf").write_text(f"search {searches}\nnameserver {KUBE_DNS}\noptions ndots:5\n")
        # An empty hosts file, so glibc's "files" source cannot answer for the pod.
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        # Named the way the kubelet's cgroupfs driver names pod cgroups, so the agent finds them the
        # same way it does on a real node.
        uid = str(uuid.uuid4())
        cg = os.path.join(self.cgroup, "kubepods", f"pod{uid}")
        os.makedirs(cg, exist_ok=True)
        pod = Pod(name, namespace, ip, netns, cg, uid=uid, ip6=ip6)
        self.pods.append(pod)
        return pod

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)

    def _dnsmasq(self, listen: Sequence[str], args: Sequence[str], err: Path) -> subprocess.Popen[str]:
        """A dnsmasq in the node netns on port 53 of the `listen` addresses, authoritative-style:
        what it does not know does not exist (no upstream to ask), nothing cached. Its stderr goes
        to the file `err`, never an unread pipe: a full pipe would stall it mid-test."""
        cmd = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
               *[f"--listen-address={a}" for a in listen], "--bind-interfaces", "--port=53", "--user=root",
               "--cache-size=0", "--address=/#/", *args]
        return subprocess.Popen(self.node_exec(*cmd), stdout=subprocess.DEVNULL, stderr=open(err, "w"), text=True)

    def _start_dnsmasq(self, zone: Sequence[tuple[str, str]], extra: Sequence[str]) -> None:
        assert self.workdir is not None
        self.dnsmasq_log = self.workdir / "kube-dns.log"
        (self.workdir / "hosts").write_text("")
        err = self.workdir / "dnsmasq.err"
        self.dnsmasq = self._dnsmasq([KUBE_DNS, KUBE_DNS6], [
            "--log-queries=extra",
            f"--log-facility={self.dnsmasq_log}",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            f"--addn-hosts={self.workdir / 'hosts'}",  # records a test may change (set_kube_dns_record)
            *[f"--host-record={name},{addr}" for name, addr in zone],
            *extra,
        ], err)
        self.wait_dns_server(KUBE_DNS, self.dnsmasq, "dnsmasq (kube-dns)", err)

    def wait_dns_server(self, address: str, proc: subprocess.Popen[str], what: str, err: Path,
                        bound: float = 5.0) -> None:
        """Wait until the DNS server `proc` at `address` in the node netns answers kube-dns's own name
        (every server here serves or forwards it); raise with its stderr (the file `err`) if it
        exits first, and stop it if it does not answer within `bound` seconds."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            probe = sh(*self.node_exec("dig", "+short", "+time=1", "+tries=1", f"@{address}",
                                       f"kube-dns.kube-system.svc.{CLUSTER_DOMAIN}"), check=False)
            if probe.stdout.strip() == KUBE_DNS:
                return
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {err.read_text()}")
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{what} did not answer within {bound:g} s")

    def set_kube_dns_record(self, name: str, address: str) -> None:
        """Change (or add) a record kube-dns serves, as a DNS change upstream would."""
        assert self.workdir is not None and self.dnsmasq is not None
        hosts = self.workdir / "hosts"
        lines = [line for line in hosts.read_text().splitlines() if not line.endswith(f" {name}")]
        hosts.write_text("".join(f"{line}\n" for line in [*lines, f"{address} {name}"]))
        self.dnsmasq.send_signal(signal.SIGHUP)  # dnsmasq re-reads --addn-hosts
        time.sleep(0.2)

    def add_server(self, address: str, port: int, name: str, proto: str = "tcp") -> subprocess.Popen[str]:
        """A backend on the node (address on the node netns's lo) that answers with its name: TCP
        servers send it to each connection, UDP servers reply to each datagram with it."""
        sh("ip", "-n", self.node_netns, "addr", "replace", f"{address}/32", "dev", "lo")
        proc = subprocess.Popen(self.node_exec(sys.executable, "-c", _NAME_SERVER, proto, address, str(port), name),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        self.servers.append(proc)
        return proc

    def add_dns_server(self, address: str) -> subprocess.Popen[str]:
        """Another DNS server on the node (address on the node netns's lo) that knows kube-dns's own
        name and nothing else (NXDOMAIN, at once): an agent's upstream where the test's load must
        not reach kube-dns, the server pods fail open to."""
        assert self.workdir is not None
        sh("ip", "-n", self.node_netns, "addr", "replace", f"{address}/32", "dev", "lo")
        err = self.workdir / f"dns-{address}.err"
        proc = self._dnsmasq([address], [f"--host-record=kube-dns.kube-system.svc.{CLUSTER_DOMAIN},{KUBE_DNS}"], err)
        self.servers.append(proc)
        self.wait_dns_server(address, proc, f"dnsmasq at {address}", err)
        return proc

    def kube_dns_queries(self) -> list[tuple[str, str, str]]:
        """(qtype, name, source ip) of every query kube-dns received, in order. Names lower-cased:
        the agent randomizes their case (0x20) against spoofing."""
        if not self.dnsmasq_log or not self.dnsmasq_log.exists():
            return []
        pat = re.compile(r"query\[(\w+)\] (\S+) from (\S+)")
        return [(t, n.lower(), src) for t, n, src in pat.findall(self.dnsmasq_log.read_text())]

    def pods_manifest(self, opt_out: Sequence[str] = ()) -> list[dict[str, object]]:
        """The pods as the API server would list them (v1 Pod), for the agent's static source."""
        return [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": p.name,
                    "namespace": p.namespace,
                    "uid": p.uid,
                    "annotations": {"dns.node-agent.io/steer": "false"} if p.name in opt_out else {},
                },
                "spec": {
                    "nodeName": f"sim-{self.tag}",
                    "dnsPolicy": "ClusterFirst",
                    "containers": [{"name": "app"}],
                },
                "status": {"phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}, {"ip": p.ip6}]},
            }
            for p in self.pods
        ]

    def start_agent(self, *static_files: str, args: Sequence[str] = (), opt_out: Sequence[str] = (),
                    pin_root: str | None = None, wait: bool = True, upstream: str = KUBE_DNS) -> AgentProcess:
        """Run `node-agent run` in the node netns, attached to this node's cgroup, with the pods (and
        the given mesh files) as its static source, forwarding to `upstream` (kube-dns, as on a
        node). Pins go to a per-node bpffs directory."""
        assert self.workdir is not None
        # Replaced, not rewritten in place: running agents watch this file (a hand-over starts the
        # next agent beside them), and one reading it between a truncate and the write would drop
        # every pod until its next look (static.watch_file waits for a file to settle, but cannot
        # know a writer that stalls longer).
        pods_file = self.workdir / "pods.yaml"
        part = pods_file.with_suffix(".part")
        part.write_text(yaml.safe_dump_all(self.pods_manifest(opt_out)))
        os.replace(part, pods_file)
        n = sum(1 for _ in self.workdir.glob("agent-*.log"))
        log = self.workdir / f"agent-{n}.log"
        pin_root = pin_root or f"/sys/fs/bpf/na-sim-{self.tag}"
        cmd = [sys.executable, "-m", "node_agent.cli", "run", "--listen", f"{RESPONDER}:53",
               "--listen6", RESPONDER6, "--upstream", upstream, "--dns-service", KUBE_DNS,
               "--dns-service", KUBE_DNS6, "--cgroup", self.cgroup,
               "--pin-root", pin_root, "--metrics-addr", f"127.0.0.1:{METRICS_PORT + n}",
               "--static", str(pods_file), *[a for f in static_files for a in ("--static", f)], *args]
        with open(log, "w") as out:
            proc = subprocess.Popen(self.node_exec(*cmd), stdout=out, stderr=subprocess.STDOUT, text=True)
        agent = AgentProcess(self, proc, log, pin_root, METRICS_PORT + n)
        self.agents.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    def http_get(self, path: str, port: int = METRICS_PORT) -> tuple[int, str]:
        """GET from inside the node netns (the agent's metrics listen on its loopback)."""
        r = sh(*self.node_exec("curl", "-s", "-m", "3", "-w", "\\n%{http_code}", f"http://127.0.0.1:{port}{path}"),
               check=False)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    def close(self) -> None:
        """Every step runs even when one fails or is interrupted (Ctrl-C, or pytest interrupted at a
        bound during a teardown): the first error is raised after the last step, so nothing the node
        made - netns, cgroups, pinned programs - outlives it."""
        errors: list[BaseException] = []

        def step(fn: Callable[..., object], *args: Any) -> None:
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the other steps
                errors.append(e)

        for proc in self.servers:
            step(proc.kill)
            step(proc.wait)
        for agent in self.agents:
            step(agent.stop)
        for pin_root in {a.pin_root for a in self.agents}:
            step(uninstall, pin_root)  # links pinned there keep programs attached to our cgroup otherwise
        if self.dnsmasq:
            step(_end, self.dnsmasq)
        for pod_cg in [p.cgroup for p in self.pods] + [self.cgroup]:
            step(_kill_cgroup, pod_cg)
        for ns in reversed(self._netns):
            step(functools.partial(sh, "ip", "netns", "del", ns, check=False))
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        for pod_cg in [p.cgroup for p in self.pods] + [os.path.join(self.cgroup, "kubepods"), self.cgroup]:
            step(_rmdir_cgroup, pod_cg)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise errors[0]


_NAME_SERVER = r"""
import socket, sys
proto, addr, port, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
if proto == "tcp":
    s.listen(64)
print("ready", flush=True)
while True:
    if proto == "tcp":
        c, _ = s.accept()
        c.sendall(name + b"\n")
        c.close()
    else:
        data, peer = s.recvfrom(2048)
        s.sendto(name + b" " + data, peer)
"""


@dataclass
class AgentProcess:
    node: SimNode
    proc: subprocess.Popen[str]
    log: Path
    pin_root: str
    metrics_port: int  # each agent of a node its own, so two can run side by side (hand-over)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until /readyz says ready; an agent that exits fails at once. The default bound follows
        the machine (`ready_bound`)."""
        timeout = ready_bound() if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log.read_text()}")
            code, _ = self.node.http_get("/readyz", self.metrics_port)
            if code == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"agent not ready within {timeout:.0f} s:\n{self.log.read_text()}")

    def metrics(self) -> dict[str, float]:
        """The agent's /metrics as {"name{labels}": value}."""
        _, text = self.node.http_get("/metrics", self.metrics_port)
        return parse_exposition(text)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        # 20 s on the reference machine, where it takes 0.25 s; in a 5.10 VM under emulation
        # (scripts/kernels.sh full) it took longer than 20 s.
        return sh(*self.node.node_exec(sys.executable, "-m", "node_agent.cli", "uninstall",
                                       "--pin-root", self.pin_root, "--listen", f"{RESPONDER}:53"), check=False,
                  timeout=20.0 * python_pace())


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_cgroup(path: str) -> None:
    procs = os.path.join(path, "cgroup.procs")
    if not os.path.exists(procs):
        return
    for line in Path(procs).read_text().split():
        try:
            os.kill(int(line), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rmdir_cgroup(path: str) -> None:
    deadline = time.monotonic() + 3
    while os.path.isdir(path):
        try:
            os.rmdir(path)
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
