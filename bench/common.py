"""Shared helpers of the benchmark: process CPU from schedstat, tables, names, mesh YAML, pinning."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SERVER_CORE = 1  # every server under test runs here
CLIENT_CORE = 0  # dnsperf and the other load generators run here


# ---- processes ----------------------------------------------------------------------------------
def cpu_ns(pid: int) -> int:
    """ns on CPU of every thread of `pid` so far (first field of /proc/<pid>/task/*/schedstat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pin(pid: int, core: int) -> None:
    """Pin every thread of pid (threads started later inherit the mask of their creator)."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True, capture_output=True, timeout=10)


def stop(proc: subprocess.Popen | None, timeout: float = 5) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_udp_dns(addr: str, port: int, name: str = "health.check.", timeout: float = 10,
                 argv_prefix: Sequence[str] = ()) -> None:
    """Wait until something answers a DNS query on addr:port (any rcode)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run([*argv_prefix, "dig", "+time=1", "+tries=1", f"@{addr}", "-p", str(port), name],
                           capture_output=True, text=True, timeout=5)
        if "status:" in r.stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no DNS answer from {addr}:{port} within {timeout} s")


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def need(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


# ---- names ----------------------------------------------------------------------------------------
CLUSTER_DOMAIN = "cluster.local"


def external_names(n: int) -> list[tuple[str, str]]:
    """(name, IPv4) stand-ins for internet names (TEST-NET and benchmark ranges only)."""
    return [(f"host{i}.bench-ext{i % 7}.example", f"198.18.{i // 250}.{i % 250 + 1}") for i in range(n)]


def service_names(n: int, namespaces: int = 4) -> list[tuple[str, str, str]]:
    """(namespace, service, ClusterIP) of n services."""
    return [(f"ns{i % namespaces}", f"svc{i}", f"10.100.{i // 250}.{i % 250 + 1}") for i in range(n)]


def svc_fqdn(ns: str, name: str) -> str:
    return f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"


def mesh_yaml(services: Iterable[tuple[str, str, str]]) -> str:
    """Kubernetes Service objects (the agent's static source format, see node_agent/testing/data/demo-mesh.yaml)."""
    docs = []
    for i, (ns, name, ip) in enumerate(services):
        docs.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": f"0b1c0000-0000-4000-8000-{i:012d}"},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        })
    return yaml.safe_dump_all(docs)


# ---- statistics and tables ------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(v: object, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # nan
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or a != a or b != b:
        return "-"
    return f"{a / b:.2f}x"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], note: str = "") -> str:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = [f"== {title}", "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths,
                                                                                                     strict=True))),
           line]
    for r in cells:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    if note:
        out.extend("   " + n for n in note.splitlines())
    return "\n".join(out)


def kube_dns_ttl() -> dict[str, object]:
    """SimNode.create keyword arguments that give kube-dns's answers a 30 s TTL (like CoreDNS's `ttl 30`):
    dnsmasq's default local TTL is 0, which would make every answer uncacheable downstream. The SimNode
    API has moved under us (a `local_ttl` parameter; earlier a fixed flag; before that nothing), and
    dnsmasq refuses the flag twice, so ask it what it does."""
    import inspect

    from node_agent.testing.simnode import SimNode

    if "local_ttl" in inspect.signature(SimNode.create).parameters:
        return {"local_ttl": 30}
    if "--local-ttl" in inspect.getsource(inspect.getmodule(SimNode)):  # type: ignore[arg-type]
        return {}
    return {"extra_dnsmasq": ("--local-ttl=30",)}


def foreign_activity(own_pids: set[int] | None = None) -> list[str]:
    """Other benchmark/test runs on this machine (they share our 2 cores and make figures noisy):
    node-agent processes and simulated nodes that are not ours."""
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me or (own_pids and int(pid) in own_pids):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            continue
        if "node_agent.cli run" in cmd or "pytest" in cmd:
            found.append(f"pid {pid}: {cmd[:80]}")
    return found


# ---- CPU idle states ----------------------------------------------------------------------------
class IdleHold:
    """Keeps the CPUs out of halt while held: /dev/cpu_dma_latency = 0 (the PM QoS request tuned's
    latency-performance profile makes). On this VM a halted vCPU takes milliseconds to wake when the
    host is busy, which puts every server's p99 at 3,000 qps in the milliseconds; held, the same runs
    show the servers' own latency. Applies to all servers alike; `paused()` measures without it."""

    PATH = "/dev/cpu_dma_latency"

    def __init__(self) -> None:
        self.fd: int | None = None

    def hold(self) -> None:
        if self.fd is not None:
            return
        try:
            self.fd = os.open(self.PATH, os.O_WRONLY)
            os.write(self.fd, (0).to_bytes(4, "little"))
        except OSError:
            self.release()  # not available (no root, no PM QoS): runs with the machine's idle policy

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file drops the request
            self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        was = self.held
        self.release()
        try:
            yield
        finally:
            if was:
                self.hold()

    def describe(self) -> str:
        if not self.held:
            return "machine default (cpu_dma_latency not held)"
        idle = Path("/sys/devices/system/cpu/cpuidle/current_driver")
        driver = idle.read_text().strip() if idle.exists() else "?"
        return f"cpu_dma_latency held at 0 (cpuidle driver {driver}: polling instead of halting)"
