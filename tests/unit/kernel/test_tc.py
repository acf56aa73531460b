"""kernel/tc.py on real veths (root, bcc): finding a pod's host veth behind a bridge or from its netns,
attaching bpf/dns_answer.c with tcx or clsact, adoption by a second attacher, detach and sweep - and
the program answering a real datagram from the pod over the veth, with checksums a strict receiver
accepts (captured with a packet socket in the pod, checked here)."""

from __future__ import annotations

import ctypes as ct
import errno
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from node_agent.dns import wire
from node_agent.kernel import answers, bpflink, tc
from node_agent.resolve.cache import Cache

pytestmark = pytest.mark.root

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
BRIDGE_IP, POD_IP, RESPONDER, PORT = "10.77.0.1", "10.77.0.5", "169.254.20.10", 53


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=20).stdout


@dataclass
class Topo:
    node: str
    pod: str

    def in_node(self, fn: Callable[[], T]) -> T:
        """Run fn in a thread that entered the node netns (setns moves only the calling thread)."""
        out: list[Any] = []

        def body() -> None:
            libc = ct.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{self.node}", os.O_RDONLY)
            try:
                assert libc.setns(fd, CLONE_NEWNET) == 0, os.strerror(ct.get_errno())
            finally:
                os.close(fd)
            try:
                out.append(fn())
            except BaseException as e:  # re-raised in the caller
                out.append(e)

        t = threading.Thread(target=body)
        t.start()
        t.join(30)
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]  # type: ignore[no-any-return]


@pytest.fixture
def topo() -> Iterator[Topo]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tag = secrets.token_hex(3)
    t = Topo(f"natc{tag}-n", f"natc{tag}-p")
    try:
        sh("ip", "netns", "add", t.node)
        sh("ip", "netns", "add", t.pod)
        sh("ip", "-n", t.node, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", t.node, "addr", "add", f"{BRIDGE_IP}/24", "dev", "br0")
        sh("ip", "-n", t.node, "link", "set", "br0", "up")
        sh("ip", "link", "add", "hv0", "netns", t.node, "type", "veth", "peer", "name", "eth0", "netns", t.pod)
        sh("ip", "-n", t.node, "link", "set", "hv0", "master", "br0", "up")
        sh("ip", "-n", t.pod, "link", "set", "lo", "up")
        sh("ip", "-n", t.pod, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
        sh("ip", "-n", t.pod, "link", "set", "eth0", "up")
        sh("ip", "-n", t.pod, "route", "add", "default", "via", BRIDGE_IP)
        yield t
    finally:
        for ns in (t.pod, t.node):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def prog() -> Iterator[tuple[Any, int, str]]:
    pytest.importorskip("bcc")
    pin = f"/sys/fs/bpf/na-test-tc-{secrets.token_hex(4)}"
    bpf = answers.compile_program(pin, 256)
    try:
        yield bpf, answers.load_program(bpf).fd, pin
    finally:
        bpf.cleanup()
        shutil.rmtree(pin, ignore_errors=True)


def pod_send(topo: Topo, payload: bytes, dst: str = BRIDGE_IP, port: int = 9, wait: float = 0.0) -> dict[str, Any]:
    """Send one UDP datagram from the pod; capture on its eth0 what comes back (a packet socket sees
    the frame as delivered) and what its UDP socket receives."""
    script = r"""
import json, socket, sys, time
dst, port, payload, wait = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), float(sys.argv[4])
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
cap.bind(("eth0", 0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(wait or 0.01)
s.sendto(payload, (dst, port))
out = {"reply": None, "frames": []}
try:
    out["reply"] = s.recvfrom(4096)[0].hex()
except OSError:
    pass
cap.settimeout(0.2)
end = time.monotonic() + 0.5
while time.monotonic() < end:
    try:
        data, addr = cap.recvfrom(4096)
    except OSError:
        break
    if addr[2] != socket.PACKET_OUTGOING:
        out["frames"].append(data.hex())
print(json.dumps(out))
"""
    r = subprocess.run(["ip", "netns", "exec", topo.pod, sys.executable, "-c", script, dst, str(port),
                        payload.hex(), str(wait)], capture_output=True, text=True, timeout=20, check=True)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def ones(data: bytes) -> int:
    s = answers.ones_sum(data)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksums_ok(frame: bytes) -> bool:
    ip = frame[14:34]
    udp = frame[34:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return ones(ip) == 0xFFFF and ones(pseudo + udp) == 0xFFFF


def test_host_veth_behind_a_bridge_and_from_the_netns(topo: Topo) -> None:
    # Before the pod sent anything the bridge has not learnt it: a reason, no guess.
    assert isinstance(topo.in_node(lambda: tc.find_host_veth(POD_IP)), str)
    found = topo.in_node(lambda: tc.find_host_veth(POD_IP, f"/run/netns/{topo.pod}"))
    assert isinstance(found, tc.HostVeth) and found.name == "hv0"
    pod_send(topo, b"x")
    via_bridge = topo.in_node(lambda: tc.find_host_veth(POD_IP))
    assert via_bridge == found
    assert isinstance(topo.in_node(lambda: tc.find_host_veth("10.78.0.1")), str)  # no route


def put_answer(bpf: Any, name: str, address: bytes) -> tuple[Cache, bytes]:
    m = answers.AnswerMaps(bpf)
    m.configure(RESPONDER, "", PORT, max_udp=1232, edns_payload=1232, enabled=True)
    m.set_pod(POD_IP, 1)
    qname = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    resp = (struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + qname + struct.pack("!HH", 1, 1)
            + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + address)
    parsed = wire.parse_query(q)
    assert isinstance(parsed, wire.Query)
    cache = Cache()
    now = time.monotonic() - 0.5
    assert cache.put("v", parsed, resp, now, rotate=False)
    raw = cache.raw("v", parsed.ck)
    assert raw is not None and m.put(1, parsed.ck, raw, slot=0)
    return cache, q


def need_tcx(topo: Topo, fd: int) -> None:
    """Skip on a kernel without tcx (before 6.6), found by trying: a tcx link on the node's loopback,
    closed at once. EINVAL is what such a kernel says for the attach type it does not know."""
    def probe() -> None:
        link = bpflink.link_create(fd, socket.if_nametoindex("lo"), tc.BPF_TCX_INGRESS)
        os.close(link)  # unpinned: closing it detaches it
    try:
        topo.in_node(probe)
    except bpflink.BpfError as e:
        if e.errno != errno.EINVAL:
            raise
        pytest.skip("this kernel has no tcx (Linux 6.6): the agent attaches with clsact here")


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_attached_program_answers_the_pod_over_its_veth(topo: Topo, prog: tuple[Any, int, str], mode: str) -> None:
    bpf, fd, pin = prog
    if mode == "tcx":
        need_tcx(topo, fd)
    cache, q = put_answer(bpf, "web.a.svc", bytes((10, 1, 2, 3)))
    pod_send(topo, b"x")  # the bridge learns the pod
    att = topo.in_node(lambda: tc.TcAttacher(fd, pin, mode=mode))
    point = topo.in_node(lambda: att.attach(POD_IP))
    assert point is not None, att.failed
    assert (point.ifname, point.mode) == ("hv0", mode)
    before = answers.AnswerMaps(bpf).stats()["answered"]
    parsed = wire.parse_query(q)
    assert isinstance(parsed, wire.Query)
    sent = time.monotonic()
    got = pod_send(topo, q, RESPONDER, PORT, wait=2.0)
    # The kernel answered somewhere in [sent, now]: it equals the cache's reply at one of those ages.
    expected = {cache.get("v", parsed, sent), cache.get("v", parsed, time.monotonic())}
    assert got["reply"] is not None, "no answer reached the pod's socket"
    assert bytes.fromhex(got["reply"]) in expected
    frames = [bytes.fromhex(f) for f in got["frames"]]
    replies = [f for f in frames if f[26:30] == bytes((169, 254, 20, 10))]
    assert replies and all(checksums_ok(f) for f in replies)
    assert answers.AnswerMaps(bpf).stats()["answered"] == before + 1
    # Not to the responder: passes (no reply from the bridge address, and no answer counted).
    assert pod_send(topo, q, BRIDGE_IP, PORT)["reply"] is None
    topo.in_node(lambda: att.detach(POD_IP))
    assert pod_send(topo, q, RESPONDER, PORT, wait=0.3)["reply"] is None  # nothing answers now
    if mode == "tcx":
        assert os.listdir(os.path.join(pin, "tc")) == []


def test_tcx_link_is_adopted_and_swept(topo: Topo, prog: tuple[Any, int, str]) -> None:
    bpf, fd, pin = prog
    need_tcx(topo, fd)
    pod_send(topo, b"x")
    first = topo.in_node(lambda: tc.TcAttacher(fd, pin, mode="tcx"))
    assert topo.in_node(lambda: first.attach(POD_IP)) is not None
    (name,) = os.listdir(os.path.join(pin, "tc"))
    link = bpflink.obj_get(os.path.join(pin, "tc", name))
    assert link is not None
    try:
        link_id = _link_id(link)
        # A successor with its own program: same link (no moment without a program), its program in.
        other = answers.load_program(bpf)
        second = topo.in_node(lambda: tc.TcAttacher(other.fd, pin, mode="tcx"))
        assert topo.in_node(lambda: second.attach(POD_IP)) is not None
        assert os.listdir(os.path.join(pin, "tc")) == [name]
        assert _link_id(link) == link_id
        # The veth goes: the kernel detaches the link; a sweep unpins it.
        sh("ip", "-n", topo.node, "link", "del", "hv0")
        assert tc.tcx_link_ifindex(link) == 0
        second.points.clear()
        assert second.sweep() == 1
        assert os.listdir(os.path.join(pin, "tc")) == []
    finally:
        os.close(link)


def _link_id(fd: int) -> int:
    info = tc._TcxLinkInfo()
    size = ct.c_uint32(ct.sizeof(info))
    assert bpflink._lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)) == 0
    return int(info.id)


def test_clsact_filters_are_swept_and_removed_but_not_others(topo: Topo, prog: tuple[Any, int, str]) -> None:
    """Our filters are pinned nowhere: a sweep finds them by slot and name. One another program put
    on the same clsact ingress (another priority, another name) is never touched."""
    _, fd, pin = prog
    pod_send(topo, b"x")
    first = topo.in_node(lambda: tc.TcAttacher(fd, pin, mode="clsact"))
    assert topo.in_node(lambda: first.attach(POD_IP)) is not None

    def theirs() -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.tc("add-filter", "bpf", ipr.link_lookup(ifname="hv0")[0], 7, fd=fd, name="cni_prog",
                   parent=tc.CLSACT_INGRESS, prio=100, protocol=0x0003, direct_action=True)

    topo.in_node(theirs)

    def listed() -> list[tuple[int, str]]:
        out = json.loads(sh("ip", "netns", "exec", topo.node, "tc", "-j", "filter", "show", "dev", "hv0", "ingress"))
        return sorted((f["pref"], f["options"]["bpf_name"]) for f in out if "options" in f)

    assert listed() == [(100, "cni_prog"), (tc.FILTER_PRIO, tc.FILTER_NAME)]
    assert topo.in_node(first.sweep) == 0  # held
    second = topo.in_node(lambda: tc.TcAttacher(fd, pin, mode="clsact"))  # holds none
    assert topo.in_node(second.sweep) == 1
    assert listed() == [(100, "cni_prog")]
    first.points.clear()  # so that attach puts it back
    assert topo.in_node(lambda: first.attach(POD_IP)) is not None
    assert topo.in_node(tc.remove_filters) == ["hv0"]
    assert listed() == [(100, "cni_prog")]
