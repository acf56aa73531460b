"""`node-agent demo`: a simulated node, the real agent, real resolvers in pods; prints what happened.

Each query is run in a pod with glibc (`getent`) or `dig`; who answered is read from the evidence,
not assumed: kube-dns's query log (by source address) and the agent's counters.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from node_agent.testing import DEMO_MESH
from node_agent.testing.simnode import KUBE_DNS, SimNode


@dataclass(frozen=True)
class Probe:
    pod: str
    tool: str  # getent | dig | dig+tcp
    name: str
    expect: str  # an address (or NXDOMAIN) that must be in the answer; "" = any answer
    note: str = ""
    by: str = ""  # if set: must be in who answered (read from kube-dns's log), e.g. "table/cache"


PROBES = (
    Probe("client", "getent", "web", "10.96.1.10", "short name, own namespace a"),
    Probe("client", "getent", "db.b", "10.96.2.20", "service in namespace b"),
    Probe("client", "getent", "kafka-0.kafka", "10.244.1.21", "StatefulSet pod of a headless service"),
    Probe("client", "getent", "istio.io", "240.240.", "ServiceEntry, auto-allocated VIP"),
    Probe("client", "getent", "my-vm.com", "240.240.", "ServiceEntry selecting a VM (WorkloadEntry)"),
    Probe("client", "getent", "reviews", "10.97.0.30", "service of another cluster"),
    Probe("client", "dig+tcp", "api.example.com", "", "public host kept inside via an ingress gateway"),
    Probe("client", "dig", "example.org", "93.184.215.14", "not in the mesh: forwarded to kube-dns",
          by="via kube-dns, 1 upstream q"),
    Probe("client", "dig", "nothere.a.svc.cluster.local", "NXDOMAIN", "unknown cluster name: table NXDOMAIN"),
    Probe("other", "getent", "db", "10.96.2.20", "short name, own namespace b"),
    Probe("other", "getent", "internal-only.example.com", "", "ServiceEntry exported to b only"),
    Probe("other", "dig", "example.org", "93.184.215.14", "same external name from namespace b: cached, no upstream q",
          by="table/cache"),
    Probe("legacy", "getent", "web.a.svc.cluster.local", "10.96.1.10", "opted out: straight to kube-dns",
          by="kube-dns, directly"),
    Probe("client", "tcp:3306", "db-1.example.com", "db-1", "VIP carries traffic: kernel picks the backend"),
    Probe("client", "tcp:3306", "db-2.example.com", "db-2", "same port, other ServiceEntry, other server"),
)

# A pod dialling a name: resolve (through the agent) and connect (through the VIP translation).
DIAL = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.recv(100).decode().strip(), "via", s.getpeername()[0])
"""


def _ask(node: SimNode, p: Probe) -> str:
    pod = node.pod(p.pod)
    if p.tool.startswith("tcp:"):
        r = pod.run("python3", "-c", DIAL, p.name, p.tool[4:], timeout=15)
        return r.stdout.strip() or "(no connection)"
    if p.tool == "getent":
        r = pod.run("getent", "ahostsv4", p.name, timeout=15)
        addrs = sorted({line.split()[0] for line in r.stdout.splitlines() if line.strip()})
        return " ".join(addrs) if addrs else "(no answer)"
    cmd = ["dig", "+time=2", "+tries=1", "+noall", "+answer", "+comments", p.name]
    if p.tool == "dig+tcp":
        cmd.insert(1, "+tcp")
    r = pod.run(*cmd, timeout=15)
    if "NXDOMAIN" in r.stdout:
        return "NXDOMAIN"
    answers = [line.split()[-1] for line in r.stdout.splitlines() if line and not line.startswith(";")]
    return " ".join(answers) if answers else "(no answer)"


def _who(node: SimNode, before: int, pod_ip: str, tool: str) -> str:
    if tool.startswith("tcp:"):
        return "the backend server, via its VIP"
    new = node.kube_dns_queries()[before:]
    if any(src == pod_ip for _, _, src in new):
        return "kube-dns, directly"
    if new:
        return f"node-agent (via kube-dns, {len(new)} upstream q)"
    return "node-agent (table/cache)"


def run_demo(pods: int = 3) -> int:
    mesh = DEMO_MESH
    layout = [("client", "a"), ("other", "b"), ("legacy", "a")]
    layout += [(f"pod{i}", "a") for i in range(3, max(pods, 3))]
    print(f"node-agent demo: building a simulated node ({len(layout)} pods, kube-dns = dnsmasq at {KUBE_DNS})")
    failures = 0
    with SimNode.create(pods=layout) as node:
        node.add_server("10.99.1.1", 3306, "db-1")  # the two databases behind db-1/db-2.example.com
        node.add_server("10.99.1.2", 3306, "db-2")
        t0 = time.monotonic()
        agent = node.start_agent(mesh, opt_out=["legacy"])
        print(f"agent up in {time.monotonic() - t0:.1f} s: BPF on {node.cgroup}, responder 169.254.20.10:53\n")
        print(f"{'pod':7} {'ns':3} {'tool':8} {'query':30} {'answer':28} {'answered by':40} note")
        for p in PROBES:
            pod = node.pod(p.pod)
            before = len(node.kube_dns_queries())
            answer = _ask(node, p)
            ok = p.expect in answer if p.expect else answer not in ("(no answer)", "NXDOMAIN")
            who = _who(node, before, pod.ip, p.tool)
            ok = ok and p.by in who
            failures += not ok
            mark = "ok " if ok else "BAD"
            print(f"{p.pod:7} {pod.namespace:3} {p.tool:8} {p.name:30} {answer[:28]:28} {who:40} {mark} {p.note}")
        m = agent.metrics()
        steered = {k: v for k, v in m.items() if k.startswith("nodeagent_bpf_steered_total")}
        print("\nkernel-steered queries by namespace:",
              ", ".join(f"{k.split('=')[1].strip('}').strip(chr(34))}: {int(v)}" for k, v in steered.items()))
        print(f"cache hits {int(m.get('nodeagent_cache_hits_total', 0))}, "
              f"table answers {int(m.get('nodeagent_table_answers_total', 0))}, "
              f"forwarded upstream {int(m.get('nodeagent_forwarded_total', 0))}")
        code = agent.stop()
        print(f"agent stopped (exit {code}); tearing the node down")
        agent.uninstall()
    print("demo: all answers as expected" if not failures else f"demo: {failures} unexpected answers")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(run_demo())
