"""node-agent benchmark: figures side by side with dnsmasq and unbound, in one run (no assertions).

    .venv/bin/python bench/run.py              # full run (~25 min)
    .venv/bin/python bench/run.py --quick      # smoke run (~1 min), same tables, short and small
    .venv/bin/python bench/run.py --sections peers,scale

Sections: hotpath (in-process cost of a cache hit, records rotated vs fixed order), peers (loopback,
cache hits vs dnsmasq/unbound), bpfpath (simulated node: BPF steering vs direct vs nftables DNAT),
kernel (whole-machine CPU per cache hit from a pod: node-agent with and without kernel answers,
dnsmasq and unbound at the responder address, at 1k/3k/10k qps and saturated; load from dnsperf and
from bench/stubload.c, a generator shaped like a pod's stub resolver), upstream (ndots:5
replay from pods: queries reaching kube-dns), scale (name table of 10k services / 50k endpoints /
5k ServiceEntries / 250 pods). Needs root for bpfpath, kernel and upstream (network namespaces,
cgroups, BPF), and dnsperf, dnsmasq, unbound, nft, taskset, a C compiler (stubload).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bpfpath, hotpath, kernelpath, peers, scale, targets, upstream_load  # noqa: E402
from bench.common import IdleHold, foreign_activity, need  # noqa: E402

SECTIONS = ("hotpath", "peers", "bpfpath", "kernel", "upstream", "scale")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: short runs, small tables (~1 min)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, query files)")
    a = ap.parse_args(argv)
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s): {', '.join(bad)}")
    missing = need("dnsperf", "dnsmasq", "unbound", "nft", "taskset", "dig", "getent")
    if missing:
        print(f"bench: missing tools: {', '.join(missing)} (run `make setup`)", file=sys.stderr)
        return 2
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        print("bench: needs 2 cores (client on core 0, server on core 1)", file=sys.stderr)
        return 2
    q = a.quick
    cmd = "bench/run.py" + (" --quick" if q else "")
    cmd += "" if a.sections == ",".join(SECTIONS) else f" --sections {a.sections}"
    print(f"# node-agent benchmark: {cmd}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  kernel {platform.release()}  {cpu_model()}  "
          f"{os.cpu_count()} cores  python {platform.python_version()}")
    print(f"# {tool_versions()}")
    print()
    work = Path(tempfile.mkdtemp(prefix="na-bench-"))
    t0 = time.monotonic()
    collected: dict[str, object] = {}
    busy = foreign_activity()
    if busy:
        print("# WARNING: other node-agent/pytest processes are running on this machine; they share the cores and")
        print("#          the figures below are noisier than on an idle box:")
        for b in busy[:5]:
            print(f"#            {b}")
        print()
    idle = IdleHold()
    idle.hold()
    print(f"# CPU idle during the run: {idle.describe()}\n")
    try:
        if "hotpath" in sections:
            hot = hotpath.measure(number=20_000 if q else 200_000)
            collected["hotpath"] = hot
            print(hotpath.report(hot), "\n", flush=True)
        if "peers" in sections:
            rates = (1000, 3000) if q else (1000, 3000, 10000)
            edns = (True,) if q else (True, False)
            d = work / "peers"
            d.mkdir()
            figs = peers.measure(d, n_ext=100 if q else 300, n_svc=100 if q else 300,
                                 sat_seconds=2 if q else 10, rate_seconds=2 if q else 10, rates=rates, edns_modes=edns,
                                 idle=idle)
            collected["peers"] = figs
            print(peers.report(figs, rates, edns), "\n", flush=True)
        if "bpfpath" in sections:
            d = work / "bpfpath"
            d.mkdir()
            bf = bpfpath.measure(d, seconds=2 if q else 10, rate=3000)
            collected["bpfpath"] = bf
            print(bpfpath.report(bf), "\n", flush=True)
        if "kernel" in sections:
            kps = []
            for client in kernelpath.CLIENTS:
                d = work / f"kernel-{client}"
                d.mkdir()
                kp = kernelpath.measure(d, seconds=3 if q else 15, rounds=2 if q else 5, n_names=100 if q else 300,
                                        client=client)
                kps.append(kp)
                print(kernelpath.report(kp), "\n", flush=True)
            collected["kernel"] = kps
        if "upstream" in sections:
            d = work / "upstream"
            d.mkdir()
            up = upstream_load.measure(d, pods_per_ns=1 if q else 2, rounds=2 if q else 3,
                                       ns_counts=(1, 3) if q else (1, 3, 6))
            collected["upstream"] = up
            print(upstream_load.report(up), "\n", flush=True)
        if "scale" in sections:
            sc = scale.measure_subprocess(quick=q)
            collected["scale"] = sc
            print(scale.report(sc), "\n", flush=True)
        if set(collected) - {"kernel"}:  # the kernel section prints its own targets
            print(targets.report(collected), "\n")
        late = [b for b in foreign_activity() if b not in busy]
        if late:
            print("# WARNING: other node-agent/pytest processes started during the run:", *late[:5], sep="\n#   ")
    finally:
        idle.release()
        if a.keep:
            print(f"# work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"# total {time.monotonic() - t0:.0f} s")
    return 0


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def tool_versions() -> str:
    import subprocess

    def first(argv: list[str], pick: int = 0) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            lines = (r.stdout + r.stderr).splitlines()
            return lines[pick].strip() if len(lines) > pick else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    def first_all(argv: list[str]) -> list[str]:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            return (r.stdout + r.stderr).splitlines()
        except (OSError, subprocess.TimeoutExpired):
            return []

    dm = first(["dnsmasq", "-v"]).replace("Dnsmasq version ", "dnsmasq ").split("  ")[0]
    ub = "unbound " + first(["unbound", "-V"]).replace("Version ", "")
    dp = "dnsperf " + next((ln.split()[-1] for ln in first_all(["dnsperf", "-h"]) if ln.startswith("Version")), "?")
    return f"{dm}, {ub}, {dp}"


if __name__ == "__main__":
    sys.exit(main())
