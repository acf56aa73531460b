"""`node-agent status`: what is attached and how it is doing, from the pins and the metrics endpoint."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from typing import Any

from node_agent.app.health import Report
from node_agent.app.metrics import parse_exposition
from node_agent.kernel import cgroups, features, loader
from node_agent.kernel.loader import Interceptor
from node_agent.settings import Settings


def _cgroup_paths(root: str, wanted: set[int], max_depth: int = 6) -> dict[int, str]:
    """cgroup id -> path, by walking cgroupfs (ids are directory inode numbers)."""
    found: dict[int, str] = {}
    base_depth = root.rstrip("/").count("/")
    for dirpath, dirnames, _ in os.walk(root):
        ino = os.stat(dirpath).st_ino
        if ino in wanted:
            found[ino] = dirpath
            if len(found) == len(wanted):
                break
        if dirpath.count("/") - base_depth >= max_depth:
            dirnames.clear()
    return found


def _base_url(addr: tuple[str, int] | None, settings: Settings) -> str:
    host, port = addr or (settings.metrics.address, settings.metrics.port)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{host}:{port}"


def _scrape(base: str) -> dict[str, float] | str:
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError as e:
        return f"metrics endpoint {base} not reachable: {e}"
    return parse_exposition(text)


def _readiness(base: str) -> Report | None:
    """The agent's own answer (/readyz: 200 or 503, the body names what is not ready)."""
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
            return Report.parse(resp.read().decode())
    except urllib.error.HTTPError as e:
        with e:
            return Report.parse(e.read().decode())
    except OSError:
        return None


def _kernel_features() -> dict[str, Any]:
    """What this kernel gives the programs: asked again here (microseconds), not read from the
    agent, so it shows on a node where the agent cannot start, and without one."""
    try:
        return features.probe().as_dict()
    except features.FeatureError as e:
        return {"kernel": os.uname().release, "error": str(e)}


def collect(settings: Settings, metrics_addr: tuple[str, int] | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {"pin_dir": loader.pin_dir(settings.intercept), "installed": False,
                              "kernel_features": _kernel_features()}
    ic = Interceptor(settings.intercept)
    if os.geteuid() == 0 and ic.open_existing():
        try:
            age, owner = ic.heartbeat()
            pods = ic.pods()
            links = ic.links()
            root = cgroups.cgroup2_mount()
            ids = {p.cgroup_id for p in pods.values()} | {i.cgroup_id for i in links.values()}
            paths = _cgroup_paths(root, ids)
            report.update(
                installed=True,
                config=ic.config(),
                heartbeat_age_s=None if age is None else round(age, 3),
                heartbeat_owner_pid=owner,
                liveness=(live := ic.liveness()),
                steering=age is not None and age <= ic.config()["stale_after_s"]
                and (bool(live["sockets"]) or not ic.config()["socket_check"]),
                programs={name: {"link_id": i.link_id, "prog_id": i.prog_id,
                                 "cgroup": paths.get(i.cgroup_id, str(i.cgroup_id))} for name, i in links.items()},
                kernel_counters=ic.stats(),
                pods=[{"cgroup": paths.get(p.cgroup_id, str(p.cgroup_id)), "cgroup_id": p.cgroup_id,
                       "opt_out": p.opt_out, "steered": p.steered, "failopen": p.failopen}
                      for p in sorted(pods.values(), key=lambda p: -p.steered)],
                pins=sorted(os.listdir(loader.pin_dir(settings.intercept))),
            )
        finally:
            ic.close()
    elif os.geteuid() != 0:
        report["error"] = "reading BPF maps needs root"
    base = _base_url(metrics_addr, settings)
    m = _scrape(base)
    if isinstance(m, str):
        report["metrics_error"] = m
    else:
        hits, misses = m.get("nodeagent_cache_hits_total", 0.0), m.get("nodeagent_cache_misses_total", 0.0)
        report["listen"] = f"{settings.listen.address}:{settings.listen.port}"
        ready = _readiness(base)
        report["ready"] = ready is not None and ready.ready
        report["not_ready"] = ["/readyz not reachable"] if ready is None else ready.reasons
        report["cache"] = {"hits": int(hits), "misses": int(misses),
                           "entries": int(m.get("nodeagent_cache_entries", 0)),
                           "hit_ratio": round(hits / (hits + misses), 3) if hits + misses else None}
        report["upstream_forwarded"] = int(m.get("nodeagent_forwarded_total", 0))
        report["kernel_answers"] = kernel_answers(m)
    return report


def _labelled(m: dict[str, float], name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name`, each with its labels."""
    out = []
    for key, value in m.items():
        if key.startswith(name + "{"):
            labels = {k: _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), v)
                      for k, v in _LABEL.findall(key[len(name):])}
            out.append((labels, value))
    return out


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")  # the exposition format escapes \\, \" and newlines in label values


def kernel_answers(m: dict[str, float]) -> dict[str, Any]:
    """The kernel answer path as the agent's metrics describe it (app/metrics.KernelAnswerCollector)."""
    active = m.get("nodeagent_kernel_answers_active", 0.0) == 1.0
    off = [labels.get("reason", "") for labels, _ in _labelled(m, "nodeagent_kernel_answers_off")]
    events = {labels["event"]: int(v) for labels, v in _labelled(m, "nodeagent_kernel_answer_events_total")}
    return {
        "active": active,
        "off_reason": None if active else (off[0] if off else "the agent reports no kernel answers"),
        "attach_points": sorted(({"pod_ip": lb["pod_ip"], "interface": lb["interface"], "mode": lb["mode"]}
                                 for lb, _ in _labelled(m, "nodeagent_kernel_answer_attached")),
                                key=lambda p: p["pod_ip"]),
        "unattached": sorted(({"pod_ip": lb["pod_ip"], "reason": lb["reason"]}
                              for lb, _ in _labelled(m, "nodeagent_kernel_answer_unattached")),
                             key=lambda p: p["pod_ip"]),
        "map_entries": int(m.get("nodeagent_kernel_answer_map_entries", 0)),
        "map_capacity": int(m.get("nodeagent_kernel_answer_map_capacity", 0)),
        "answered": events.get("answered", 0),
        "events": events,
        "by_namespace": {lb["namespace"]: int(v) for lb, v in _labelled(m, "nodeagent_kernel_answers_total")},
    }


def _kernel_answer_lines(k: dict[str, Any]) -> list[str]:
    if not k["active"]:
        return [f"kernel answers: off ({k['off_reason']})"]
    points, waiting = k["attach_points"], k["unattached"]
    modes: dict[str, int] = {}
    for p in points:
        modes[p["mode"]] = modes.get(p["mode"], 0) + 1
    passed = ", ".join(f"{name} {n}" for name, n in sorted(k["events"].items()) if name != "answered" and n)
    return [
        f"kernel answers: on, {len(points)} attach point{'' if len(points) == 1 else 's'}"
        f" ({', '.join(f'{mode} {n}' for mode, n in sorted(modes.items())) or 'none'}), {len(waiting)} waiting;"
        f" answered {k['answered']}{f' (passed on: {passed})' if passed else ''}",
        f"  answer map: {k['map_entries']} of {k['map_capacity']} entries",
        *[f"  {p['pod_ip']} on {p['interface']} ({p['mode']})" for p in points[:50]],
        *[f"  {p['pod_ip']}: not attached: {p['reason']}" for p in waiting[:50]],
    ]


def _failopen_line(config: dict[str, Any], live: dict[str, Any]) -> str:
    """When the programs fail open, and why they last did."""
    last = f"; failed open ({live['cause']})" if live["failed_open"] else ""
    if config["socket_check"]:
        return (f"fail-open: the moment the agent's sockets close (open: {' '.join(live['sockets']) or 'none'}) "
                f"or its heartbeat passes the bound{last}")
    return f"fail-open: after the heartbeat bound only (no socket check on this kernel or agent){last}"


def render(r: dict[str, Any]) -> str:
    lines = [f"pins: {r['pin_dir']} ({'installed' if r['installed'] else 'nothing installed'})"]
    if r.get("error"):
        lines.append(f"  {r['error']}")
    kf = r.get("kernel_features") or {}
    if kf.get("error"):
        lines.append(f"kernel {kf['kernel']}: BPF features not known ({kf['error']})")
    elif kf:
        have = [name for name, ok in kf["found"].items() if ok]
        lines.append(f"kernel {kf['kernel']}: BPF features {' '.join(have) or '-'}")
        if kf["missing"]:
            lines.append(f"  BELOW THE FLOOR, the agent cannot steer here: missing {' '.join(kf['missing'])}")
        lines += [f"  degraded: {d}" for d in kf["degraded"]]
    if r["installed"]:
        c = r["config"]
        hb = "zeroed (failed open)" if r["heartbeat_age_s"] is None else f"{r['heartbeat_age_s']:.3f} s ago"
        lines += [
            f"steering: {'ON' if r['steering'] else 'OFF (fail-open)'}; heartbeat {hb}"
            f" by pid {r['heartbeat_owner_pid']} (bound {c['stale_after_s']} s)",
            _failopen_line(c, r["liveness"]),
            f"responder: {' '.join(a for a in (c['responder4'], c['responder6']) if a)} port {c['port']};"
            f" intercepting {', '.join(c['dns_services']) or '-'}"
            f"{' + every port-53 destination' if c['capture_all'] else ''}",
            "programs:",
            *[f"  {name:16} link {p['link_id']:<5} prog {p['prog_id']:<6} on {p['cgroup']}"
              for name, p in r["programs"].items()],
            "kernel counters: " + ", ".join(f"{k} {v}" for k, v in r["kernel_counters"].items()),
            f"pods enrolled: {len(r['pods'])}",
            *[f"  {p['cgroup']}  steered {p['steered']}  failopen {p['failopen']}"
              f"{'  (opted out)' if p['opt_out'] else ''}" for p in r["pods"][:50]],
        ]
    if "cache" in r:
        c = r["cache"]
        ready = "ready" if r["ready"] else "NOT READY (" + "; ".join(r["not_ready"]) + ")"
        lines.append(f"listen {r['listen']}, {ready}; cache {c['entries']} entries, hits {c['hits']},"
                     f" misses {c['misses']}, hit ratio {c['hit_ratio']}; forwarded upstream {r['upstream_forwarded']}")
        if "kernel_answers" in r:
            lines += _kernel_answer_lines(r["kernel_answers"])
    elif r.get("metrics_error"):
        lines.append(r["metrics_error"])
    return "\n".join(lines)
