"""Kernel answers end to end (issue 16), on the simulated node, through the BPF path: pods ask kube-dns's
address, the cgroup programs steer the query to the responder address, and bpf/dns_answer.c on the
pod's host veth answers hot cache entries before the query reaches the agent's socket.

What each test shows, against the agent's own userspace answers (TCP queries always go to userspace;
a name's first, unpromoted UDP query does too):
- the kernel's replies are the userspace replies, byte for byte but for TTLs (0x20 spelling, EDNS and DO, NODATA,
  NXDOMAIN, a forwarded name, a VIP), and dig, glibc (getent) and musl get the same answers from it;
  the kernel did answer (its counter rose, the responder read no UDP datagram for those);
- TTLs age in kernel answers as in userspace ones; a table change is visible at once; a name only
  the kernel answers is still prefetched before it expires;
- the kernel answers nothing for a pod that opted out (or opts out at run time) or a source address
  that is no pod; multi-address answers keep rotating (they stay in userspace);
- a hand-over under load keeps answering, every answer right, the successor's kernel answering;
- metrics count kernel answers as requests and cache hits; `node-agent status` shows the path.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import yaml
from dnslib import DNSRecord

from node_agent.kernel import answers, tc
from node_agent.testing.pace import python_pace, slowdown
from node_agent.testing.simnode import (
    RESPONDER,
    AgentProcess,
    Pod,
    SimNode,
)
from tests.e2e import whoload
from tests.e2e.loads import Load, tally

HERE = Path(__file__).parent
ON = "cache: {kernel_answers: true}\n"
# The tests' time bounds hold on the reference machine; agent starts take most of each, so the bounds
# grow as a start does here (a VM under software emulation, scripts/kernels.sh full: 10x or more).
SLOWER = slowdown()

# Runs in a pod with the system python3 (no dependencies): sends DNS queries to kube-dns's address as
# a stub resolver would (the cgroup programs steer them) and prints what came back, as JSON.
#   pair NAME TYPE EDNS DO          one UDP query, then the same query (same ID) over TCP: hex replies
#   alternate NAME SECONDS GAP      TCP and UDP queries in turn for SECONDS from the first reply (a line
#                                   "started" then): [proto, sent, first A address or rcode]
#   udp NAME SECONDS GAP            the same with UDP queries only
CLIENT = r"""
import json, random, socket, struct, sys, time

def query(name, qtype, edns, do, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", qtype, 1)
    if edns:
        q += b"\x00" + struct.pack(">HHIH", 41, 1232, 0x8000 if do else 0, 0)
    return q

def udp(msg):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect(("10.96.0.10", 53))
    s.send(msg)
    try:
        return s.recv(4096)
    except socket.timeout:
        return b""
    finally:
        s.close()

def tcp(msg):
    s = socket.create_connection(("10.96.0.10", 53), timeout=2)
    s.sendall(struct.pack(">H", len(msg)) + msg)
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack(">H", buf[:2])[0]:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf[2:]

def first_a(msg):
    if len(msg) < 12:
        return "none"
    an = struct.unpack(">H", msg[6:8])[0]
    i = 12
    while msg[i]:
        i += 1 + msg[i]
    i += 5
    for _ in range(an):
        if msg[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while msg[i]:
                i += 1 + msg[i]
            i += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1:
            return socket.inet_ntoa(msg[i:i + 4])
        i += rdlen
    return "rcode %d" % (msg[3] & 15)

cmd = sys.argv[1]
if cmd == "pair":
    name, qtype, edns, do = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1"
    msg = query(name, qtype, edns, do, random.randrange(65536))
    t0 = time.monotonic()
    u = udp(msg)
    t = tcp(msg)
    print(json.dumps({"udp": u.hex(), "tcp": t.hex(), "span": time.monotonic() - t0}))
elif cmd in ("alternate", "udp"):
    name, seconds, gap = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    out, end, n = [], None, 0
    while (end is None or time.monotonic() < end) and n < 20000:
        proto = "tcp" if n % 2 == 0 and cmd == "alternate" else "udp"
        sent = time.monotonic()
        reply = (tcp if proto == "tcp" else udp)(query(name, 1, False, False, random.randrange(65536)))
        out.append([proto, sent, first_a(reply)])
        if end is None:
            end = time.monotonic() + seconds
            print("started", flush=True)
        n += 1
        time.sleep(gap)
    print(json.dumps(out))
"""

A, AAAA = 1, 28
T = TypeVar("T")


@dataclass(frozen=True)
class Counts:
    answered: int  # the program's "answered" verdicts
    not_pod: int
    udp: int  # UDP datagrams the responder read (userspace)
    requests: int  # nodeagent_requests_total, all labels
    hits: int  # nodeagent_cache_hits_total
    by_ns: dict[str, int]  # nodeagent_kernel_answers_total
    ns_requests: int  # nodeagent_namespace_requests_total, all namespaces
    prefetches: int


def counts(agent: AgentProcess) -> Counts:
    m = agent.metrics()

    def total(prefix: str) -> int:
        return int(sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{")))

    by_ns = {re.sub(r'.*namespace="([^"]*)".*', r"\1", k): int(v) for k, v in m.items()
             if k.startswith("nodeagent_kernel_answers_total{")}
    return Counts(int(m.get('nodeagent_kernel_answer_events_total{event="answered"}', 0)),
                  int(m.get('nodeagent_kernel_answer_events_total{event="not_pod"}', 0)),
                  int(m.get("nodeagent_udp_received_total", 0)), total("nodeagent_requests_total"),
                  int(m.get("nodeagent_cache_hits_total", 0)), by_ns, total("nodeagent_namespace_requests_total"),
                  int(m.get("nodeagent_cache_prefetches_total", 0)))


def client(pod: Pod, *args: str, timeout: float = 30) -> Any:
    r = pod.run("python3", "-c", CLIENT, *args, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])  # a load's "started" line before it


def pair(pod: Pod, name: str, qtype: int = A, edns: bool = False, do: bool = False) -> tuple[bytes, bytes]:
    """The replies to one query sent over UDP (the kernel's, once the entry is hot) and over TCP
    (always userspace's), with the same ID."""
    return timed_pair(pod, name, qtype, edns, do)[:2]


def timed_pair(pod: Pod, name: str, qtype: int = A, edns: bool = False,
               do: bool = False) -> tuple[bytes, bytes, float]:
    """`pair`, and the seconds from sending the UDP query to reading the TCP reply."""
    out = client(pod, "pair", name, str(qtype), "1" if edns else "0", "1" if do else "0")
    assert isinstance(out, dict)
    return bytes.fromhex(out["udp"]), bytes.fromhex(out["tcp"]), float(out["span"])


def kernel_answered(agent: AgentProcess, ask: Callable[[], T], n: int = 1) -> tuple[bool, T]:
    """Run `ask`; whether the kernel answered all it sent: the program's counter rose by `n` or more
    and the responder read no UDP datagram meanwhile."""
    before = counts(agent)
    out = ask()
    after = counts(agent)
    done = after.udp == before.udp and after.answered - before.answered >= n
    return done, out


def until_kernel(agent: AgentProcess, ask: Callable[[], T], n: int = 1, seconds: float = 15.0) -> T:
    """Ask until the kernel answers everything `ask` sends (the first asks go to userspace: a pod's
    veth is found once it sent a packet, an entry goes in once hit twice), for at most `seconds` on
    the reference machine (more where agent starts are slower). Returns the answer."""
    deadline = time.monotonic() + seconds * SLOWER
    tries = 0
    while True:
        done, out = kernel_answered(agent, ask, n)
        tries += 1
        if done:
            return out
        if time.monotonic() > deadline:
            pytest.fail(f"the kernel did not answer in {tries} tries, {seconds * SLOWER:.0f} s:\n"
                        f"{agent.log.read_text()[-3000:]}")
        time.sleep(0.2)


def view(reply: bytes) -> tuple[object, ...]:
    """A reply as dnslib reads it, TTLs left out: what a first (userspace) answer and a later one share."""
    r = DNSRecord.parse(reply)
    rrs = tuple((str(rr.rname), rr.rtype, str(rr.rdata)) for rr in r.rr + r.auth + r.ar)
    return r.header.id, r.header.bitmap, str(r.q.qname), r.q.qtype, rrs


def masked(reply: bytes) -> bytes:
    """The reply's octets with every RR's TTL zeroed (OPT's TTL field is flags: kept)."""
    out = bytearray(reply)
    i = 12

    def skip_name(i: int) -> int:
        while out[i] and out[i] & 0xC0 != 0xC0:
            i += 1 + out[i]
        return i + (2 if out[i] & 0xC0 == 0xC0 else 1)

    i = skip_name(i) + 4
    for _ in range(sum(int.from_bytes(reply[k:k + 2], "big") for k in (6, 8, 10))):
        i = skip_name(i)
        if int.from_bytes(reply[i:i + 2], "big") != 41:
            out[i + 4:i + 8] = b"\0\0\0\0"
        i += 10 + int.from_bytes(reply[i + 8:i + 10], "big")
    assert i == len(reply), reply.hex()
    return bytes(out)


def ttls(reply: bytes) -> list[int]:
    r = DNSRecord.parse(reply)
    return [rr.ttl for rr in r.rr + r.auth if rr.rtype != 41]


def config(node: SimNode, text: str) -> list[str]:
    assert node.workdir is not None
    path = node.workdir / f"agent-{len(list(node.workdir.glob('agent*.yaml')))}.yaml"
    path.write_text(text)
    return ["--config", str(path)]


# The tests that change the table under an agent move web.a's ClusterIP (the demo mesh's 10.96.1.10).
WEB = "web.a.svc.cluster.local"
OLD_VIP, NEW_VIP = "10.96.1.10", "10.96.1.99"


def mesh_copy(node: SimNode, mesh: str) -> Path:
    """The mesh file copied into the node's workdir, for a test to change under a running agent."""
    assert node.workdir is not None
    mesh_file = node.workdir / "mesh.yaml"
    shutil.copy(mesh, mesh_file)
    return mesh_file


def move_web_vip(mesh_file: Path) -> None:
    """web.a's ClusterIP becomes NEW_VIP, in one rename: an agent watching the file never reads half of it."""
    text = mesh_file.read_text()
    changed = text.replace(f"clusterIP: {OLD_VIP}\n  clusterIPs: [{OLD_VIP}]",
                           f"clusterIP: {NEW_VIP}\n  clusterIPs: [{NEW_VIP}]")
    assert changed != text, "the mesh file has no web.a ClusterIP to move"
    tmp = mesh_file.with_suffix(".new")
    tmp.write_text(changed)
    tmp.rename(mesh_file)


def kernel_agent(node: SimNode, mesh_file: Path, pod: Pod, name: str) -> AgentProcess:
    """An agent with kernel answers on, started on `mesh_file`, once its kernel answers `name` to `pod`."""
    agent = node.start_agent(str(mesh_file), opt_out=["legacy"], args=config(node, ON))
    until_kernel(agent, functools.partial(pair, pod, name))
    return agent


def started(pod: Pod, *args: str) -> subprocess.Popen[str]:
    """CLIENT's load `args`, once it has its first reply: a pod's Python takes seconds to start
    under emulation, and what a test changes "during the load" must not come before it."""
    # Bounded by the client's own socket timeouts: its first query ends within 2 s of its start.
    return whoload.started(pod.popen("python3", "-c", CLIENT, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE))


def load_result(proc: subprocess.Popen[str], timeout: float) -> list[list[Any]]:
    """What a `started` load saw: [proto, sent, first A address or rcode] per query."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return cast(list[list[Any]], json.loads(out))


def alternating(pod: Pod, name: str, seconds: str) -> subprocess.Popen[str]:
    """CLIENT's `alternate` load: TCP and UDP queries for `name` in turn, 10 ms apart, for `seconds`."""
    return started(pod, "alternate", name, seconds, "0.01")


def switched_once(load: subprocess.Popen[str]) -> tuple[list[tuple[str, str]], int]:
    """The (proto, answer) pairs an `alternating` load saw, and the index of its first NEW_VIP answer,
    asserting that every answer before it was OLD_VIP and every one from it on NEW_VIP."""
    seen = [(proto, answer) for proto, _, answer in load_result(load, 30 * SLOWER)]
    first_new = next(i for i, (_, answer) in enumerate(seen) if answer == NEW_VIP)
    assert {a for _, a in seen[:first_new]} == {OLD_VIP}, Counter(seen[:first_new])
    assert {a for _, a in seen[first_new:]} == {NEW_VIP}, Counter(seen[first_new:])
    return seen, first_new


# ---- the same answers ---------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.timeout(120 * SLOWER)
def test_kernel_replies_are_the_userspace_replies_byte_for_byte(node: SimNode, mesh: str) -> None:
    agent = node.start_agent(mesh, opt_out=["legacy"], args=config(node, ON))
    pod = node.pod("client")
    cases = [
        ("web.a.svc.cluster.local", A, False, False),  # a table answer (ClusterIP)
        ("WeB.a.SVC.cluster.LOCAL", A, False, False),  # 0x20: the reply keeps the query's spelling
        ("web.a.svc.cluster.local", A, True, False),  # EDNS: our OPT in the reply
        ("web.a.svc.cluster.local", A, True, True),  # DO: another key, DO echoed
        ("web.a.svc.cluster.local", AAAA, False, False),  # NODATA, the zone's SOA in authority
        ("nope.a.svc.cluster.local", A, False, False),  # NXDOMAIN
        ("example.org", A, False, False),  # forwarded to kube-dns, one entry shared by every view
        ("istio.io", A, True, False),  # a ServiceEntry VIP
    ]
    for name, qtype, edns, do in cases:
        ask = functools.partial(pair, pod, name, qtype, edns, do)
        # Userspace's, unless the entry is hot already (the 0x20 and EDNS cases share the first's).
        first_udp, first_tcp = ask()
        assert first_udp and view(first_udp) == view(first_tcp), name
        udp, tcp, span = until_kernel(agent, functools.partial(timed_pair, pod, name, qtype, edns, do))
        assert masked(udp) == masked(tcp), f"{name} {qtype} {edns=} {do=}:\nkernel {udp.hex()}\nuser   {tcp.hex()}"
        # TTLs: the kernel ages exactly (whole seconds since stored); userspace's exact-repeat memo
        # replays an answer for the rest of the clock second it was made in, so it may say 1 s more;
        # and userspace answered up to `span` s later, so it may say as many whole seconds less
        # (one on a fast machine, when the two straddle a second).
        low = -math.ceil(span)
        assert all(low <= t - k <= 1 for k, t in zip(ttls(udp), ttls(tcp), strict=True)), (ttls(udp), ttls(tcp), span)
        assert view(udp)[1:] == view(first_udp)[1:], name  # the first answer's, but for ID and TTLs
        assert DNSRecord.parse(udp).q.qname.label == tuple(p.encode() for p in name.split(".")), name
    c = counts(agent)
    # Kernel answers are requests and cache hits like any other: the dashboards add up.
    assert c.answered > 0 and c.by_ns == {"a": c.answered}, c
    assert c.requests == c.ns_requests, c


@pytest.mark.timeout(120 * SLOWER)
def test_dig_glibc_and_musl_get_their_answers_from_the_kernel(node: SimNode, mesh: str, gai: str) -> None:
    agent = node.start_agent(mesh, opt_out=["legacy"], args=config(node, ON))
    pod = node.pod("client")

    def dig(*args: str) -> str:
        r = pod.run("dig", "+time=2", "+tries=1", "+nocookie", *args)
        assert "status:" in r.stdout, r.stdout
        # What differs between two answers to the same question: the ID, TTLs, timings.
        out = re.sub(r"id: \d+", "id: X", r.stdout)
        out = re.sub(r"^(\S+)\s+\d+\s+IN", r"\1 TTL IN", out, flags=re.M)
        return "\n".join(line for line in out.splitlines() if not line.startswith((";; Query time", ";; WHEN")))

    for args in (("web",), ("+search", "web"), ("+noedns", "db.b.svc.cluster.local"),
                 ("AAAA", "web.a.svc.cluster.local"), ("nope.b.svc.cluster.local",), ("example.org",)):
        first = dig(*args)
        assert until_kernel(agent, functools.partial(dig, *args)) == first, args

    def getent(family: str, name: str) -> list[str]:
        r = pod.run("getent", family, name)
        return sorted(r.stdout.splitlines())

    for family, name, queries in (("ahostsv4", "web", 1), ("ahosts", "web", 2), ("ahostsv4", "example.org", 1)):
        addresses = getent(family, name)
        assert addresses, (family, name)
        assert until_kernel(agent, functools.partial(getent, family, name), queries) == addresses, (family, name)

    def musl(name: str) -> tuple[int, list[str]]:
        r = pod.run(gai, name)
        return r.returncode, r.stdout.split()

    for name in ("web", "db.b", "example.org"):
        got = musl(name)
        assert got[0] == 0, (name, got)
        # musl asks A and AAAA in parallel on one socket, for each search name it tries.
        assert until_kernel(agent, functools.partial(musl, name), 2) == got, name
    c = counts(agent)
    assert c.requests == c.ns_requests and c.by_ns.get("a", 0) == c.answered, c


# ---- coherence -------------------------------------------------------------------------------------


@pytest.mark.timeout(120 * SLOWER)
def test_ttls_age_and_a_table_change_is_visible_at_once(node: SimNode, mesh: str) -> None:
    mesh_file = mesh_copy(node, mesh)
    agent = node.start_agent(str(mesh_file), opt_out=["legacy"], args=config(node, ON))
    pod = node.pod("client")
    name = WEB
    # TTLs age in whole seconds, as userspace's, and are never 0.
    udp0, _ = until_kernel(agent, functools.partial(pair, pod, name))
    time.sleep(2.2)
    done, (udp1, tcp1, span) = kernel_answered(agent, functools.partial(timed_pair, pod, name))
    assert done
    assert ttls(udp0)[0] - ttls(udp1)[0] >= 2 and ttls(udp1)[0] > 0, (ttls(udp0), ttls(udp1))
    assert -math.ceil(span) <= ttls(tcp1)[0] - ttls(udp1)[0] <= 1, (ttls(udp1), ttls(tcp1), span)  # as above

    # The Service's ClusterIP changes. TCP queries (userspace) and UDP ones (the kernel's, while it
    # holds the name) in turn: once any answer is the new address, none is the old one again.
    load = alternating(pod, name, "6")
    time.sleep(1.5)
    move_web_vip(mesh_file)
    seen, first_new = switched_once(load)
    assert ("udp", OLD_VIP) in seen[:first_new] and ("udp", NEW_VIP) in seen[first_new:]
    # ... and the new answer goes into the kernel in its turn.
    udp2, _ = until_kernel(agent, functools.partial(pair, pod, name))
    assert NEW_VIP in str(DNSRecord.parse(udp2).rr[0].rdata)


@pytest.mark.timeout(120 * SLOWER)
def test_names_only_the_kernel_answers_are_prefetched(node: SimNode, mesh: str) -> None:
    """Prefetch sees kernel hits: a popular name the kernel answers is refreshed before it expires,
    so userspace never gets a query for it once it is in the kernel - over three of its TTLs."""
    ttl = max(3, math.ceil(3 * python_pace()))  # each of a slow machine's client queries takes seconds
    settings = f"cache: {{kernel_answers: true, prefetch_hits: 3, prefetch_fraction: 0.5}}\ntable: {{ttl: {ttl}}}\n"
    agent = node.start_agent(mesh, opt_out=["legacy"], args=config(node, settings))
    pod = node.pod("client")
    name = "web.a.svc.cluster.local"
    until_kernel(agent, functools.partial(pair, pod, name))
    before = counts(agent)
    load = started(pod, "udp", name, str(3 * ttl), "0.05")
    udp = [a for _, _, a in load_result(load, 3 * ttl + 30 * SLOWER)]
    after = counts(agent)
    assert len(udp) >= 20 * ttl and set(udp) == {"10.96.1.10"}, Counter(udp)
    # Every query of the load was the kernel's: none reached userspace, not even when the entry
    # neared its expiry (each prefetch's new answer replaced the kernel's copy before it expired).
    assert after.udp == before.udp, (before, after)
    assert after.answered - before.answered >= len(udp), (before, after, len(udp))
    assert after.prefetches - before.prefetches >= 2, (before, after)


# ---- who the kernel answers ----------------------------------------------------------------------


@pytest.mark.timeout(120 * SLOWER)
def test_no_kernel_answers_for_opted_out_pods_or_strangers_and_rotation_stays(node: SimNode, mesh: str) -> None:
    agent = node.start_agent(mesh, opt_out=["legacy"], args=config(node, ON))
    pod, legacy = node.pod("client"), node.pod("legacy")
    name = "web.a.svc.cluster.local"
    until_kernel(agent, functools.partial(pair, pod, name))

    def direct(p: Pod, *args: str) -> str:
        r = p.run("dig", "+time=2", "+tries=1", "+nocookie", "+short", f"@{RESPONDER}", *args)
        return r.stdout.strip()

    # The opted-out pod is not steered; asking the responder itself, it gets userspace's answer.
    before = counts(agent)
    assert [direct(legacy, name) for _ in range(5)] == ["10.96.1.10"] * 5
    after = counts(agent)
    assert after.answered == before.answered and after.udp - before.udp == 5, (before, after)
    # An address in the client pod that is no pod: the program passes it (not_pod), userspace refuses.
    assert pod.run("ip", "addr", "add", "10.244.1.99/24", "dev", "eth0").returncode == 0
    before = counts(agent)
    r = pod.run("dig", "+time=2", "+tries=1", "+nocookie", "-b", "10.244.1.99", f"@{RESPONDER}", name)
    assert "status: REFUSED" in r.stdout, r.stdout
    after = counts(agent)
    assert after.answered == before.answered and after.not_pod > before.not_pod, (before, after)
    # Two addresses rotate per answer: never in the kernel, the order still turns.
    orders = Counter(tuple(direct(pod, "kafka.a.svc.cluster.local").split()) for _ in range(6))
    assert len(orders) == 2 and all(len(o) == 2 for o in orders), orders
    # The client opts out at run time (its pod object changes): the kernel stops answering it at once.
    assert node.workdir is not None
    (node.workdir / "pods.yaml").write_text(yaml.safe_dump_all(node.pods_manifest(opt_out=["legacy", "client"])))
    deadline = time.monotonic() + 10 * SLOWER
    while time.monotonic() < deadline:
        done, _ = kernel_answered(agent, functools.partial(direct, pod, name))
        if not done:
            break
        time.sleep(0.2)
    before = counts(agent)
    assert [direct(pod, name) for _ in range(3)] == ["10.96.1.10"] * 3
    after = counts(agent)
    assert after.answered == before.answered and after.udp - before.udp == 3, (before, after)
    assert "10.244.1.10" not in {p["pod_ip"] for p in attach_points(agent)}


def attach_points(agent: AgentProcess) -> list[dict[str, str]]:
    out = []
    for key in agent.metrics():
        if key.startswith("nodeagent_kernel_answer_attached{"):
            out.append(dict(re.findall(r'(\w+)="([^"]*)"', key)))
    return out


def status(node: SimNode, agent: AgentProcess, *flags: str) -> str:
    r = subprocess.run(node.node_exec(sys.executable, "-m", "node_agent.cli", "status", *flags, "--pin-root",
                                      agent.pin_root, "--metrics-addr", f"127.0.0.1:{agent.metrics_port}"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.timeout(120 * SLOWER)
def test_status_shows_attach_points_and_map_fill_or_why_it_is_off(node: SimNode, mesh: str) -> None:
    # A TTL no slow machine outlasts between the kernel's answer and `status`: the entry stays.
    agent = node.start_agent(mesh, opt_out=["legacy"], args=config(node, ON + "table: {ttl: 600}\n"))
    pod = node.pod("client")
    until_kernel(agent, functools.partial(pair, pod, "web.a.svc.cluster.local"))
    text = status(node, agent)
    assert re.search(r"kernel answers: on, \d+ attach points? \(tcx|clsact", text), text
    assert re.search(r"answer map: [1-9]\d* of 16384 entries", text), text
    assert re.search(rf"\s{re.escape(pod.ip)} on veth\d+ \((tcx|clsact)\)", text), text
    js = json.loads(status(node, agent, "--json"))
    assert js["kernel_answers"]["active"] is True and js["kernel_answers"]["answered"] >= 1, js["kernel_answers"]
    agent.stop()
    off = node.start_agent(mesh, opt_out=["legacy"], args=config(node, "cache: {kernel_answers: false}\n"))
    assert "kernel answers: off (off by the setting cache.kernel_answers)" in status(node, off), status(node, off)


# ---- hand-over -------------------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.timeout(180 * SLOWER)
def test_handover_keeps_answering_with_no_wrong_answer(node: SimNode, mesh: str) -> None:
    """A successor swaps its program in at each attach point; the old agent's program, with its own
    maps, stops answering when it stops. Under load from two pods: every query answered, every
    answer the agent's VIP, the kernel answering before and after."""
    pace = python_pace()
    old = node.start_agent(mesh, opt_out=["legacy"], args=config(node, ON))
    load = Load(node, pace, udp=100, tcp=10, timeout=2.0)
    deadline = time.monotonic() + 20 * SLOWER
    while counts(old).answered < 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counts(old).answered >= 50, "the old agent's kernel never answered"
    new = node.start_agent(mesh, opt_out=["legacy"], args=config(node, ON))
    time.sleep(0.3)
    assert old.stop(signal.SIGTERM) == 0
    before = counts(new).answered
    deadline = time.monotonic() + 20 * SLOWER
    while counts(new).answered < before + 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    queries = load.stop()
    assert queries and all(q.who == "agent" for q in queries), tally(queries)
    assert counts(new).answered >= before + 50, "the successor's kernel did not answer"
    text = old.log.read_text()
    assert "successor has taken over" in text and "program disabled" in text, text[-2000:]


def agent_pid(agent: AgentProcess) -> int:
    """`nsenter` execs the agent (same pid) unless it forked a child."""
    pid = agent.proc.pid
    if Path(f"/proc/{pid}/comm").read_text().strip() == "nsenter":
        pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    return pid


@pytest.mark.timeout(180 * SLOWER)
def test_a_dead_successors_program_is_swapped_out_when_steering_comes_back(node: SimNode, mesh: str) -> None:
    """The successor swapped its program in, then died (kill -9) before the old agent stopped: the
    old one takes steering back and swaps its own program in again, so the dead one's maps, which
    nobody flushes any more, answer nothing: a table change is visible at once."""
    mesh_file = mesh_copy(node, mesh)
    name = WEB
    pod = node.pod("client")
    old = kernel_agent(node, mesh_file, pod, name)
    new = kernel_agent(node, mesh_file, pod, name)  # the successor's program and maps answer now
    os.kill(agent_pid(new), signal.SIGKILL)
    new.proc.wait(10)
    deadline = time.monotonic() + 10 * SLOWER
    while "steering taken back" not in old.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "steering taken back" in old.log.read_text(), old.log.read_text()[-2000:]
    until_kernel(old, functools.partial(pair, pod, name))  # the old agent's program again
    load = alternating(pod, name, "4")
    time.sleep(1.0)
    move_web_vip(mesh_file)
    switched_once(load)


@pytest.mark.timeout(180 * SLOWER)
def test_a_restarted_agent_swaps_a_dead_ones_program_out(node: SimNode, mesh: str) -> None:
    """kill -9 leaves the dead agent's program attached with its maps (steering fails open, so it
    sees no query). The table changes meanwhile; once the next agent is up, its program runs at the
    pod's veth: no answer comes from the dead one's maps (they still hold the old address)."""
    mesh_file = mesh_copy(node, mesh)
    name = WEB
    pod = node.pod("client")
    dead = kernel_agent(node, mesh_file, pod, name)
    os.kill(agent_pid(dead), signal.SIGKILL)
    dead.proc.wait(10)
    move_web_vip(mesh_file)
    restarted = node.start_agent(str(mesh_file), opt_out=["legacy"], args=config(node, ON))
    seen = [answer for _, _, answer in client(pod, "udp", name, "2", "0.01")]
    assert seen and set(seen) == {NEW_VIP}, Counter(seen)
    udp, _ = until_kernel(restarted, functools.partial(pair, pod, name))  # and its own kernel answers
    assert NEW_VIP in str(DNSRecord.parse(udp).rr[0].rdata)


# ---- clsact filters (kernels before 6.6) -----------------------------------------------------------


CLSACT = "cache: {kernel_answers: true, kernel_answer_attach: clsact}\n"


def our_filters(node: SimNode, ifname: str) -> list[int]:
    """The program ids of the filters in our slot (kernel/tc.py's priority) of the interface's clsact
    ingress, as `tc` lists them."""
    r = subprocess.run(node.node_exec("tc", "-j", "filter", "show", "dev", ifname, "ingress"),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return [int(f["options"]["prog"]["id"]) for f in json.loads(r.stdout or "[]")
            if f.get("pref") == tc.FILTER_PRIO and "options" in f]


def prog_loaded(prog_id: int) -> bool:
    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True,
                          timeout=20).returncode == 0


@pytest.mark.kernel
@pytest.mark.timeout(240 * SLOWER)
def test_clsact_filters_answer_are_swapped_at_hand_over_swept_and_uninstalled(node: SimNode, mesh: str) -> None:
    """The attach path of kernels without tcx (before 6.6), forced on this one: the program in a
    clsact filter answers; a successor replaces the filter's program in the same slot (one filter,
    the old program freed once its agent exits, not stacked); a filter on the veth of a pod that
    opted out while no agent ran is removed when the next agent starts; uninstall removes the rest."""
    client, other = node.pod("client"), node.pod("other")
    name = "web.a.svc.cluster.local"
    old = node.start_agent(mesh, opt_out=["legacy"], args=config(node, CLSACT))
    for p in (client, other):
        until_kernel(old, functools.partial(pair, p, name))
    modes = {p["pod_ip"]: p["mode"] for p in attach_points(old)}
    assert modes.get(client.ip) == modes.get(other.ip) == "clsact", modes
    assert os.listdir(os.path.join(answers.pin_dir(old.pin_root), "tc")) == []  # no tcx link
    (first,) = our_filters(node, "veth0")
    assert our_filters(node, "veth1") == [first]  # one program per agent, at every attach point

    new = node.start_agent(mesh, opt_out=["legacy"], args=config(node, CLSACT))
    # Swapped before the successor steers (it is ready only after): its program, in the same slot.
    (second,) = our_filters(node, "veth0")
    assert second != first and our_filters(node, "veth1") == [second]
    assert old.stop() == 0
    until_kernel(new, functools.partial(pair, client, name))
    deadline = time.monotonic() + 10 * SLOWER
    while prog_loaded(first) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not prog_loaded(first), "a filter still holds the old agent's program"
    assert new.stop() == 0
    assert our_filters(node, "veth0") == [second]  # left in place (disabled) for the next agent

    # The client opts out while no agent runs: the next agent takes our filter off its veth at
    # start and puts its own program in at the other pod's.
    third = node.start_agent(mesh, opt_out=["legacy", "client"], args=config(node, CLSACT))
    assert our_filters(node, "veth0") == []
    (own,) = our_filters(node, "veth1")
    assert own not in (first, second)
    until_kernel(third, functools.partial(pair, other, name))
    assert third.stop() == 0
    res = third.uninstall()
    assert res.returncode == 0, res.stderr
    assert our_filters(node, "veth0") == our_filters(node, "veth1") == [], res.stdout
    assert "veth1" in res.stdout, res.stdout
