"""Part 1 end to end: kernel BPF steering on a simulated node, with glibc, dig and a real kube-dns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from node_agent.settings import InterceptSettings
from node_agent.testing.simnode import KUBE_DNS, SimNode

pytestmark = pytest.mark.kernel  # all of it is the kernel's steering: `make kernels` runs it on each kernel

# A pod-side client that reports where the answer came from (what an app sees in recvfrom).
RECVFROM = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"\x03web\x01a\x03svc\x07cluster\x05local\x00" + b"\x00\x01\x00\x01"
s.sendto(q, ("10.96.0.10", 53))
data, addr = s.recvfrom(4096)
print(addr[0], addr[1], len(data), data[:2].hex())
"""


def _from_pod(node: SimNode, since: int, pod_ip: str) -> list[str]:
    return [name for _, name, src in node.kube_dns_queries()[since:] if src == pod_ip]


def _attached(node: SimNode) -> list[int]:
    """Programs the kernel runs in cgroup links on the node's cgroup, as `bpftool link show` lists
    them (not `bpftool cgroup show`: bpftool 7.1 exits 255 with nothing on 5.10, issue 15)."""
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True)
    cg_id = os.stat(node.cgroup).st_ino
    return [int(link["prog_id"]) for link in json.loads(out.stdout.strip() or "[]")
            if link.get("type") == "cgroup" and int(link.get("cgroup_id", -1)) == cg_id]


def test_pod_dns_goes_through_the_agent(node: SimNode, mesh: str) -> None:
    agent = node.start_agent(mesh, opt_out=["legacy"])
    client = node.pod("client")
    before = len(node.kube_dns_queries())

    # glibc, UDP: the short name resolves in the pod's own namespace (the responder knew who asked).
    r = client.run("getent", "ahostsv4", "web")
    assert "10.96.1.10" in r.stdout, r
    # dig over UDP and TCP, asking kube-dns's address as the pod's resolv.conf says.
    udp = client.run("dig", "+short", "+time=2", "+tries=1", "db.b.svc.cluster.local")
    assert udp.stdout.split() == ["10.96.2.20"], udp
    tcp = client.run("dig", "+tcp", "+time=2", "+tries=1", "example.org")
    assert "93.184.215.14" in tcp.stdout and "SERVER: 10.96.0.10#53" in tcp.stdout, tcp.stdout
    # The app sees the answer come from the address it asked, with its own ID.
    seen = client.run("python3", "-c", RECVFROM).stdout.split()
    assert seen[:2] == [KUBE_DNS, "53"] and seen[3] == "1234", seen

    # kube-dns never saw the pod: what reached it came from the agent (example.org, forwarded).
    assert _from_pod(node, before, client.ip) == []
    assert any(name == "example.org" for _, name, _ in node.kube_dns_queries()[before:])

    m = agent.metrics()
    assert m['nodeagent_namespace_requests_total{namespace="a"}'] >= 4
    assert m['nodeagent_bpf_steered_total{namespace="a"}'] >= 4
    assert m["nodeagent_bpf_pods_enrolled"] == 3


def test_opted_out_pod_goes_to_kube_dns_directly(node: SimNode, mesh: str) -> None:
    agent = node.start_agent(mesh, opt_out=["legacy"])
    legacy = node.pod("legacy")
    before = len(node.kube_dns_queries())
    r = legacy.run("getent", "ahostsv4", "web.a.svc.cluster.local")
    assert "10.96.1.10" in r.stdout
    assert "web.a.svc.cluster.local" in _from_pod(node, before, legacy.ip)
    m = agent.metrics()
    assert m.get('nodeagent_bpf_events_total{event="opt_out"}', 0) >= 1


def test_unknown_source_is_refused(node: SimNode, mesh: str) -> None:
    """A pod the agent has no record of (not in its source) is steered by nobody and, asking the
    responder directly, gets REFUSED: the agent is no open resolver."""
    node.start_agent(mesh)
    stranger = node.add_pod("stranger", "a")  # after the agent started: not in its pod list
    r = stranger.run("dig", "+time=2", "+tries=1", "@169.254.20.10", "web.a.svc.cluster.local")
    assert "status: REFUSED" in r.stdout, r.stdout


def test_kill_fails_open_and_next_agent_adopts(node: SimNode, mesh: str) -> None:
    agent = node.start_agent(mesh)
    client = node.pod("client")
    assert "10.96.1.10" in client.run("getent", "ahostsv4", "web").stdout
    links = set(_attached(node))
    assert len(links) == 8

    # kill -9: no clean-up runs; the programs stay attached but must stop steering within the
    # heartbeat's bound (at once where the kernel lets them see the responder's sockets close).
    agent.stop(signal.SIGKILL)
    killed = time.monotonic()
    stale_after = InterceptSettings().stale_after  # the simulated node's agents run with the default
    tries: list[tuple[float, bool]] = []  # (sent, in s after the kill; reached kube-dns from the pod)
    for _ in range(50):
        before = len(node.kube_dns_queries())
        sent = time.monotonic() - killed
        r = client.run("dig", "+short", "+time=2", "+tries=1", "web.a.svc.cluster.local")
        tries.append((sent, r.stdout.strip() == "10.96.1.10" and bool(_from_pod(node, before, client.ip))))
        if tries[-1][1] or sent >= stale_after:
            break
        time.sleep(0.05)  # a query refused at once (nothing listening) must not spin the loop out
    # Timed by when each query left, not when it came back, so a slow machine's process starts and
    # the dead agent's 2 s timeouts do not count: a query sent before the bound may be lost into the
    # dead agent, none sent after it.
    assert tries[-1][1], f"a query sent {tries[-1][0]:.2f} s after kill -9 never reached kube-dns: {tries}"
    print(f"fail-open: the first query to reach kube-dns left {tries[-1][0]:.2f} s after kill -9, "
          f"after {len(tries) - 1} lost")

    # A new agent adopts the pinned links and maps: steering again, same links, no duplicates.
    node.start_agent(mesh)
    before = len(node.kube_dns_queries())
    assert "10.96.1.10" in client.run("getent", "ahostsv4", "web").stdout
    assert _from_pod(node, before, client.ip) == []
    after = _attached(node)
    assert len(after) == 8
    assert set(after) != links, "the programs should have been swapped for the new ones"


def test_sigterm_fails_open_at_once_and_uninstall_removes_everything(node: SimNode, mesh: str) -> None:
    agent = node.start_agent(mesh)
    client = node.pod("client")
    assert agent.stop(signal.SIGTERM) == 0
    # A clean stop zeroes the heartbeat: the very next query goes to kube-dns, no 1 s gap.
    before = len(node.kube_dns_queries())
    r = client.run("dig", "+short", "+time=1", "+tries=1", "web.a.svc.cluster.local")
    assert r.stdout.strip() == "10.96.1.10"
    assert _from_pod(node, before, client.ip)

    res = agent.uninstall()
    assert res.returncode == 0, res.stderr
    assert _attached(node) == []
    assert not os.path.exists(agent.pin_root)


def test_capture_all_steers_any_port53_destination(node: SimNode, mesh: str) -> None:
    """--capture-all: a pod with its own nameserver (an address that exists only inside this node,
    with nothing listening) is answered by the agent too, and sees the answer come from that address."""
    client = node.pod("client")
    elsewhere = "10.96.0.53"
    r = client.run("dig", "+time=1", "+tries=1", f"@{elsewhere}", "web.a.svc.cluster.local")
    assert "timed out" in r.stdout or "no servers could be reached" in r.stdout, r.stdout  # nobody there
    node.start_agent(mesh, args=["--capture-all"])
    r = client.run("dig", "+time=2", "+tries=1", f"@{elsewhere}", "web.a.svc.cluster.local")
    assert "10.96.1.10" in r.stdout and f"SERVER: {elsewhere}#53" in r.stdout, r.stdout


def test_ipv6_dns_service_is_steered_too(node: SimNode, mesh: str) -> None:
    """A dual-stack pod asking kube-dns's IPv6 ClusterIP is answered by the agent's IPv6 listener,
    over UDP and TCP, and sees the answer come from the address it asked."""
    node.start_agent(mesh)
    client = node.pod("client")
    before = len(node.kube_dns_queries())
    for proto in ("+notcp", "+tcp"):
        r = client.run("dig", proto, "+time=2", "+tries=1", "@fd00:10:96::a", "web.a.svc.cluster.local")
        assert "10.96.1.10" in r.stdout and "SERVER: fd00:10:96::a#53" in r.stdout, r.stdout
    assert [src for _, _, src in node.kube_dns_queries()[before:]] == [], "kube-dns must not see the pod"
    m = node.agents[-1].metrics()
    assert m['nodeagent_requests_total{proto="tcp",rcode="NOERROR",type="A"}'] >= 1


def test_fail_open_transitions_are_counted(node: SimNode, mesh: str) -> None:
    """bpf_events{event="failopen_start"} counts the switch to fail-open (not each query), and
    failopen_end the switch back when an agent beats again."""
    node.start_agent(mesh).stop(signal.SIGTERM)  # clean stop: heartbeat zeroed
    client = node.pod("client")
    for _ in range(3):
        assert client.run("dig", "+short", "+time=2", "+tries=1", "web.a.svc.cluster.local").stdout.strip()
    agent = node.start_agent(mesh)
    assert client.run("dig", "+short", "+time=2", "+tries=1", "web.a.svc.cluster.local").stdout.strip()
    m = agent.metrics()
    assert m['nodeagent_bpf_events_total{event="failopen_start"}'] == 1
    assert m['nodeagent_bpf_events_total{event="failopen"}'] == 3
    assert m['nodeagent_bpf_events_total{event="failopen_end"}'] == 1
