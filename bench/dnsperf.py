"""Run dnsperf (2.10) and parse what it prints; server CPU per query from /proc schedstat.

dnsperf 2.10 has no latency histogram (-O offers only num-queries-per-conn, suppress, doh-*), but `-v`
prints every answer with its own latency ("> NOERROR name A 0.000123"), measured by dnsperf in C.
Fixed-rate runs (-Q) use that for p50/p99; saturated runs (no -Q) do not print per query.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.common import CLIENT_CORE, cpu_ns, percentile

# (argv, timeout, output file) -> (exit code, client CPU ns). dnsperf's output goes to a file, not a
# pipe: a parent reading a pipe wakes up per chunk and, on a 2-core box, that alone pushed p99 from
# 0.7 ms to 4 ms.
Runner = Callable[[Sequence[str], float, IO[str]], tuple[int, int]]


def wait_rusage(p: subprocess.Popen[str], timeout: float) -> tuple[int, int]:
    """Reap p with wait4: exit code and the CPU time (user + system) it used. `taskset`, `ip netns exec`
    and `sh -c 'exec ...'` all exec in place, so p.pid is dnsperf itself."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, int((ru.ru_utime + ru.ru_stime) * 1e9)
        if time.monotonic() > deadline:
            p.kill()
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, int((ru.ru_utime + ru.ru_stime) * 1e9)
        time.sleep(0.02)


def local_runner(argv: Sequence[str], timeout: float, out: IO[str]) -> tuple[int, int]:
    return wait_rusage(subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, text=True), timeout)


@dataclass
class Result:
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    avg_ms: float = 0.0
    stdev_ms: float = 0.0
    runtime: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    server_cpu_ns: int = 0
    client_cpu_ns: int = 0  # dnsperf's own user + system time (its kernel path: BPF hooks, netfilter)
    machine_cpu_ns: int = 0  # busy time of all cores (user+nice+system+irq+softirq) during the run
    steal_pct: float = 0.0  # hypervisor steal time on the whole machine during the run
    qps_runs: list[float] = field(default_factory=list)  # per run, when merged

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def client_us_per_query(self) -> float:
        return self.client_cpu_ns / self.completed / 1000 if self.completed else float("nan")

    @property
    def machine_us_per_query(self) -> float:
        return self.machine_cpu_ns / self.completed / 1000 if self.completed else float("nan")

    @property
    def cpu_us_per_query(self) -> float:
        return self.server_cpu_ns / self.completed / 1000 if self.completed else float("nan")


def merge(results: Sequence[Result]) -> Result:
    """Rounds of the same measurement: counts and CPU summed, latencies pooled, QPS the median round."""
    m = Result()
    for r in results:
        m.sent += r.sent
        m.completed += r.completed
        m.lost += r.lost
        m.runtime += r.runtime
        m.server_cpu_ns += r.server_cpu_ns
        m.machine_cpu_ns += r.machine_cpu_ns
        m.client_cpu_ns += r.client_cpu_ns
        m.latencies_ms += r.latencies_ms
        m.qps_runs += r.qps_runs or [r.qps]
        for k, v in r.rcodes.items():
            m.rcodes[k] = m.rcodes.get(k, 0) + v
    m.qps = statistics.median(m.qps_runs) if m.qps_runs else 0.0
    m.avg_ms = statistics.fmean(m.latencies_ms) if m.latencies_ms else statistics.fmean(r.avg_ms for r in results)
    m.steal_pct = statistics.fmean(r.steal_pct for r in results) if results else 0.0
    return m


def cpu_times() -> list[int]:
    """The machine's `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def steal_between(a: list[int], b: list[int]) -> float:
    d = [y - x for x, y in zip(a, b, strict=False)]
    total = sum(d[:8])
    return 100.0 * d[7] / total if total > 0 and len(d) > 7 else 0.0


def busy_ns(a: list[int], b: list[int]) -> int:
    d = [y - x for x, y in zip(a, b, strict=False)]
    ticks = d[0] + d[1] + d[2] + d[5] + d[6]  # user nice system irq softirq
    return int(ticks * 1e9 / os.sysconf("SC_CLK_TCK"))


def write_queries(path: Path, names: Sequence[str], qtypes: Sequence[str] = ("A",)) -> Path:
    path.write_text("".join(f"{n} {t}\n" for n in names for t in qtypes))
    return path


def _int(pat: str, text: str) -> int:
    m = re.search(pat, text)
    return int(m.group(1)) if m else 0


def _float(pat: str, text: str) -> float:
    m = re.search(pat, text)
    return float(m.group(1)) if m else 0.0


def parse(text: str) -> Result:
    r = Result(
        sent=_int(r"Queries sent:\s+(\d+)", text),
        completed=_int(r"Queries completed:\s+(\d+)", text),
        lost=_int(r"Queries lost:\s+(\d+)", text),
        qps=_float(r"Queries per second:\s+([\d.]+)", text),
        avg_ms=_float(r"Average Latency \(s\):\s+([\d.]+)", text) * 1000,
        stdev_ms=_float(r"Latency StdDev \(s\):\s+([\d.]+)", text) * 1000,
        runtime=_float(r"Run time \(s\):\s+([\d.]+)", text),
    )
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        for code, n in re.findall(r"(\w+) (\d+) \(", m.group(1)):
            r.rcodes[code] = int(n)
    r.latencies_ms = [float(x) * 1000 for x in re.findall(r"^> \w+ \S+ \S+ ([\d.]+)$", text, re.M)]
    return r


def run(
    server: str,
    port: int,
    datafile: Path,
    seconds: float,
    *,
    rate: int | None = None,
    edns: bool = False,
    verbose: bool = False,
    local_addr: str | None = None,
    max_outstanding: int = 100,
    max_runs: int | None = None,
    server_pid: int | None = None,
    runner: Runner = local_runner,
    core: int | None = CLIENT_CORE,
    timeout_s: float = 2.0,
    program: str = "dnsperf",
) -> Result:
    """One dnsperf run: 1 client, 1 thread, pinned to `core`; bounded by -l (and -n if given).
    `program` may be another generator with dnsperf's flags and output (bench/stubload.c)."""
    argv = [program, "-s", server, "-p", str(port), "-d", str(datafile), "-l", f"{seconds:g}",
            "-c", "1", "-T", "1", "-q", str(max_outstanding), "-t", f"{timeout_s:g}"]
    if rate:
        argv += ["-Q", str(rate)]
    if edns:
        argv.append("-e")
    if verbose:
        argv.append("-v")
    if local_addr:
        argv += ["-a", local_addr]
    if max_runs:
        argv += ["-n", str(max_runs)]
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    with tempfile.TemporaryFile("w+") as out:
        t0 = cpu_times()
        before = cpu_ns(server_pid) if server_pid else 0
        code, client_ns = runner(argv, seconds + timeout_s + 30, out)
        after = cpu_ns(server_pid) if server_pid else 0
        t1 = cpu_times()
        out.seek(0)
        text = out.read()
    if "Statistics:" not in text:
        raise RuntimeError(f"{Path(program).name} failed ({code}): {text[-800:]}")
    r = parse(text)
    r.server_cpu_ns = after - before
    r.steal_pct = steal_between(t0, t1)
    r.client_cpu_ns = client_ns
    r.machine_cpu_ns = busy_ns(t0, t1)
    return r
