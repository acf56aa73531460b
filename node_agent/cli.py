"""`node-agent run | uninstall | status | demo`: flags are parsed here and handed to config.load."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from node_agent import config
from node_agent.app.logs import setup_logging

log = logging.getLogger("node_agent")


def _hostport(text: str) -> tuple[str, int]:
    try:
        return config.parse_hostport(text)
    except config.ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML settings file (groups as in the README)")
    p.add_argument(
        "--pin-root", metavar="DIR", help="bpffs directory for pins (default /sys/fs/bpf/node-agent)"
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="node-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent on this node")
    _common(run)
    run.add_argument(
        "--listen", metavar="ADDR:PORT", type=_hostport, help="responder address (169.254.20.10:53)"
    )
    run.add_argument("--listen6", metavar="ADDR", help="also listen on this IPv6 address (dual-stack nodes)")
    run.add_argument(
        "--upstream",
        metavar="ADDR[:PORT]",
        action="append",
        type=_hostport,
        help="upstream DNS server, repeatable (default: the node's resolv.conf)",
    )
    run.add_argument(
        "--metrics-addr", metavar="ADDR:PORT", type=_hostport, help="metrics/health HTTP (0.0.0.0:9253)"
    )
    run.add_argument("--cgroup", metavar="PATH", help="cgroup v2 to attach to (default: the root)")
    run.add_argument(
        "--dns-service",
        metavar="ADDR",
        action="append",
        help="kube-dns ClusterIP to intercept, repeatable (default 10.96.0.10)",
    )
    run.add_argument(
        "--capture-all",
        action="store_true",
        default=None,
        help="intercept port 53 to any address, not only the DNS services",
    )
    run.add_argument(
        "--static", metavar="FILE", action="append", help="YAML of Kubernetes/Istio objects, repeatable"
    )
    run.add_argument("--kubernetes", action="store_true", default=None, help="watch the Kubernetes API")
    run.add_argument(
        "--kubeconfig", metavar="CLUSTER=PATH", action="append", help="a remote cluster to watch, repeatable"
    )
    run.add_argument("--node-name", metavar="NAME", help="this node's name (default $NODE_NAME)")
    run.add_argument(
        "--no-bpf",
        action="store_true",
        default=None,
        help="run the responder alone (VMs without BPF, benchmarks, debugging)",
    )

    uninstall = sub.add_parser("uninstall", help="detach and unpin all BPF state, remove the listen address")
    _common(uninstall)
    uninstall.add_argument("--listen", metavar="ADDR:PORT", type=_hostport)

    status = sub.add_parser("status", help="what is attached, heartbeat, per-pod counters")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--metrics-addr",
        metavar="ADDR:PORT",
        type=_hostport,
        help="the running agent's metrics address, for cache figures",
    )

    demo = sub.add_parser("demo", help="build a simulated node, run the agent, resolve from pods, tear down")
    demo.add_argument("--pods", type=int, default=3, help="number of pods (default 3)")
    demo.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="warning")
    return parser


def flags_to_groups(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Only the flags actually given; `None` means "not given", so lower layers show through."""
    g: dict[str, dict[str, Any]] = {k: {} for k in config.GROUPS}

    def put(group: str, key: str, value: Any) -> None:
        if value is not None:
            g[group][key] = value

    a = vars(args)
    if a.get("listen"):
        put("listen", "address", args.listen[0])
        put("listen", "port", args.listen[1])
    put("listen", "address6", a.get("listen6"))
    put("upstream", "servers", a.get("upstream"))
    if a.get("metrics_addr"):
        put("metrics", "address", args.metrics_addr[0])
        put("metrics", "port", args.metrics_addr[1])
    put("intercept", "cgroup", a.get("cgroup"))
    put("intercept", "pin_root", a.get("pin_root"))
    put("intercept", "dns_services", a.get("dns_service"))
    put("intercept", "capture_all", a.get("capture_all"))
    put("sources", "static_files", a.get("static"))
    put("sources", "kubernetes", a.get("kubernetes"))
    put("sources", "kubeconfigs", a.get("kubeconfig"))
    put("sources", "node_name", a.get("node_name"))
    put("log", "level", a.get("log_level"))
    put("log", "format", a.get("log_format"))
    return g


def load_settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> config.Settings:
    env = dict(os.environ if env is None else env)
    if "NODE_NAME" in env and "NODE_AGENT_SOURCES_NODE_NAME" not in env:
        env["NODE_AGENT_SOURCES_NODE_NAME"] = env.pop("NODE_NAME")
    else:
        env.pop("NODE_NAME", None)
    return config.load(
        getattr(args, "config", None), env, flags_to_groups(args), no_bpf=getattr(args, "no_bpf", None)
    )


PR_SET_THP_DISABLE = 41  # linux/prctl.h


def no_transparent_hugepages() -> bool:
    """Opt this process (and what it starts) out of transparent huge pages. Where the kernel backs
    anonymous memory with them always (Debian 12's 6.1 does), khugepaged keeps collapsing the
    agent's sparse 2 MiB ranges - the Python heap, thread stacks - into huge pages, each then
    resident in full: measured there, RSS 22-25 MB up in 48 s, all of it huge pages (the same with
    385 upstream queries as with 4,880: not the agent's work), charged to the pod's memory limit.
    The agent's working set is small and scattered: huge pages buy it nothing. The flag is the
    process's (every thread, every mapping) and its children inherit it. False where the kernel
    refuses (before 3.15)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)) == 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from node_agent.testing.demo import run_demo

        setup_logging(args.log_level, "text")
        return run_demo(pods=args.pods)
    try:
        settings = load_settings(args)
    except config.ConfigError as e:
        print(f"node-agent: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.log.level, settings.log.format)
    if args.command == "run":
        from node_agent.app.agent import run_agent

        if not no_transparent_hugepages():
            log.debug("transparent huge pages stay on: prctl refused")
        return run_agent(settings)
    if args.command == "uninstall":
        from node_agent.app.agent import uninstall

        return uninstall(settings)
    if args.command == "status":
        from node_agent.app.status import collect, render

        report = collect(settings, args.metrics_addr)
        print(json.dumps(report, indent=2) if args.json else render(report))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
