"""Attaching bpf/dns_answer.c to the host end of each enrolled pod's veth.

The program runs at TC ingress of the host veth (the pod's egress). Two ways to attach, by kernel:
- tcx (6.6+): a bpf_link per interface, pinned under `<pin>/tc/if<ifindex>`. A pinned link outlives
  the agent, so a restarted agent or a successor adopts it and swaps its own program in with
  bpf_link_update: at no moment does a pod's traffic see no program (or two). The kernel detaches a
  tcx link by itself when its interface goes (the link's ifindex reads 0 from then on).
- clsact direct-action filter (older kernels): one filter at a fixed priority and handle, set with
  "replace", so a successor's program takes the old one's place in one netlink call; the filter
  holds the program, so it survives the agent too. It goes with the interface. Nothing pins it, so
  ours are found by their slot and name (`our_filters`): an agent's sweep removes those it does not
  hold, uninstall all of them. The clsact qdisc stays: others (a CNI) may use it, and empty it
  costs next to nothing.

Finding the host veth of a pod, from the node's network namespace (where the agent runs):
- the route to the pod's IP: its output interface is the veth itself (routed CNIs: Calico,
  Cilium's veth mode), or a bridge (kubenet, bridge CNIs);
- behind a bridge: the pod IP's neighbour entry gives its MAC, the bridge's forwarding database the
  port that MAC was learnt on. Both exist once the pod has sent a packet through the bridge; until
  then `find_host_veth` says so and the caller retries;
- or, given the pod's network namespace (a path like /proc/<pid>/ns/net), the interface holding
  the pod's IP there names its peer's ifindex (IFLA_LINK) in the node's namespace.

pyroute2 runs an event loop of its own: call these from a worker thread (asyncio.to_thread).
"""

from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from node_agent.kernel import bpflink

log = logging.getLogger(__name__)

BPF_TCX_INGRESS = 46  # enum bpf_attach_type (include/uapi/linux/bpf.h, 6.6+)
BPF_LINK_TYPE_TCX = 11  # enum bpf_link_type
CLSACT_INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
FILTER_PRIO = 0x4E41  # "NA": one fixed slot, so "replace" swaps our program and never stacks two
FILTER_HANDLE = 1
FILTER_NAME = "na_answer"  # TCA_BPF_NAME of our filters: with the slot, what tells them from others'
ENOTSUPP = 524  # the kernel's internal "not supported", which bpf syscalls can return


class TcError(OSError):
    pass


@dataclass(frozen=True)
class HostVeth:
    ifindex: int
    name: str


@dataclass
class AttachPoint:
    pod_ip: str
    ifindex: int
    ifname: str
    mode: str  # "tcx" or "clsact"


class _TcxLinkInfo(ct.Structure):
    # struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose tcx arm we read.
    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("prog_id", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("ifindex", ct.c_uint32),
        ("attach_type", ct.c_uint32),
        ("_rest", ct.c_uint8 * 64),
    ]


def tcx_link_ifindex(fd: int) -> int | None:
    """The interface a tcx link is attached to: None if `fd` is no tcx link, 0 once detached."""
    info = _TcxLinkInfo()
    size = ct.c_uint32(ct.sizeof(info))
    lib = bpflink._lib()
    if lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)) < 0:
        return None
    if info.type != BPF_LINK_TYPE_TCX:
        return None
    return int(info.ifindex)


# ---- finding the host veth ---------------------------------------------------------------------


def _kind(ipr: IPRoute, ifindex: int) -> tuple[str, str]:
    link = ipr.link("get", index=ifindex)[0]
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
    return link.get_attr("IFLA_IFNAME"), kind or ""


def find_host_veth(pod_ip: str, netns: str | None = None) -> HostVeth | str:
    """The host veth of the pod at `pod_ip`, or a sentence saying why it was not found."""
    family = socket.AF_INET6 if ipaddress.ip_address(pod_ip).version == 6 else socket.AF_INET
    with IPRoute() as ipr:
        try:
            route = ipr.route("get", dst=pod_ip, family=family)
        except NetlinkError as e:
            return f"no route to {pod_ip}: {os.strerror(e.code)}"
        oif = route[0].get_attr("RTA_OIF") if route else None
        if not oif:
            return f"no route to {pod_ip}"
        name, kind = _kind(ipr, oif)
        if kind == "veth":
            return HostVeth(oif, name)
        if kind == "bridge":
            found = _bridge_port(ipr, oif, pod_ip, family)
            if isinstance(found, HostVeth) or netns is None:
                return found
        elif netns is None:
            return f"{pod_ip} is routed through {name} ({kind or 'no kind'}), not a veth or a bridge"
    assert netns is not None
    return _from_netns(pod_ip, netns)


def _bridge_port(ipr: IPRoute, bridge: int, pod_ip: str, family: int) -> HostVeth | str:
    neigh = [n for n in ipr.neigh("dump", family=family, ifindex=bridge) if n.get_attr("NDA_DST") == pod_ip]
    mac = next((n.get_attr("NDA_LLADDR") for n in neigh if n.get_attr("NDA_LLADDR")), None)
    if mac is None:
        return f"{pod_ip}: no neighbour entry on the bridge yet (the pod has sent nothing)"
    for f in ipr.fdb("dump"):
        if f.get_attr("NDA_LLADDR") == mac and f.get_attr("NDA_MASTER") == bridge and f["ifindex"] != bridge:
            name, kind = _kind(ipr, f["ifindex"])
            if kind != "veth":
                return f"{pod_ip} is behind bridge port {name} ({kind}), not a veth"
            return HostVeth(f["ifindex"], name)
    return f"{pod_ip}: its MAC {mac} is in no bridge port's forwarding entries"


def _from_netns(pod_ip: str, netns: str) -> HostVeth | str:
    with NetNS(netns) as pns:
        addrs = [a for a in pns.addr("dump") if a.get_attr("IFA_ADDRESS") == pod_ip]
        if not addrs:
            return f"{pod_ip} is on no interface of {netns}"
        link = pns.link("get", index=addrs[0]["index"])[0]
        peer = link.get_attr("IFLA_LINK")
    if not peer:
        return f"{pod_ip}: its interface in {netns} has no peer"
    with IPRoute() as ipr:
        try:
            name, kind = _kind(ipr, peer)
        except NetlinkError:
            return f"{pod_ip}: its veth peer ({peer}) is not in this namespace"
    if kind != "veth":
        return f"{pod_ip}: interface {peer} ({name}) is no veth"
    return HostVeth(peer, name)


# ---- attaching ---------------------------------------------------------------------------------


class TcAttacher:
    """Keeps one program attached at TC ingress of each pod's host veth (see the module comment)."""

    def __init__(self, prog_fd: int, pin: str, *, mode: str = "auto") -> None:
        if mode not in ("auto", "tcx", "clsact"):
            raise ValueError(f"tc attach mode {mode!r}: auto, tcx or clsact")
        self.prog_fd = prog_fd
        self.dir = os.path.join(pin, "tc")
        self.mode = mode
        self.points: dict[str, AttachPoint] = {}  # pod ip -> where its program runs
        self.failed: dict[str, str] = {}  # pod ip -> why not attached
        os.makedirs(self.dir, exist_ok=True)

    def _pin_path(self, ifindex: int) -> str:
        return os.path.join(self.dir, f"if{ifindex}")

    def attach(self, pod_ip: str, netns: str | None = None) -> AttachPoint | None:
        """Attach (or adopt) at the pod's host veth; None when it cannot, with the reason in `failed`."""
        try:
            veth = find_host_veth(pod_ip, netns)
        except (OSError, NetlinkError) as e:
            veth = f"{pod_ip}: {e}"
        if isinstance(veth, str):
            self.failed[pod_ip] = veth
            return None
        old = self.points.get(pod_ip)
        if old is not None and old.ifindex == veth.ifindex:
            return old
        try:
            mode = self._attach(veth)
        except OSError as e:
            self.failed[pod_ip] = f"{veth.name}: {e}"
            return None
        point = AttachPoint(pod_ip, veth.ifindex, veth.name, mode)
        self.points[pod_ip] = point
        self.failed.pop(pod_ip, None)
        return point

    def _attach(self, veth: HostVeth) -> str:
        if self.mode in ("auto", "tcx"):
            try:
                self._attach_tcx(veth.ifindex)
                return "tcx"
            except bpflink.BpfError as e:
                # EINVAL: a kernel without tcx (before 6.6) does not know the attach type.
                if self.mode == "tcx" or e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP):
                    raise
        self._attach_clsact(veth.ifindex)
        return "clsact"

    def _attach_tcx(self, ifindex: int) -> None:
        path = self._pin_path(ifindex)
        fd = bpflink.obj_get(path)
        if fd is not None:
            try:
                if tcx_link_ifindex(fd) == ifindex:
                    bpflink.link_update(fd, self.prog_fd)  # adopt: our program, no gap
                    return
            finally:
                os.close(fd)
            os.unlink(path)  # a link of an interface that went (its ifindex now reused)
        fd = bpflink.link_create(self.prog_fd, ifindex, BPF_TCX_INGRESS)
        try:
            bpflink.obj_pin(fd, path)
        finally:
            os.close(fd)

    def _attach_clsact(self, ifindex: int) -> None:
        with IPRoute() as ipr:
            try:
                ipr.tc("add", "clsact", ifindex)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, fd=self.prog_fd, name=FILTER_NAME,
                   parent=CLSACT_INGRESS, prio=FILTER_PRIO, protocol=0x0003, direct_action=True)

    def detach(self, pod_ip: str) -> None:
        """The pod went (or opted out): remove the program from its veth, if the veth is still there."""
        self.failed.pop(pod_ip, None)
        point = self.points.pop(pod_ip, None)
        if point is None:
            return
        if point.mode == "tcx":
            path = self._pin_path(point.ifindex)
            if os.path.exists(path):
                _unpin_link(path)
            return
        with IPRoute() as ipr:
            _del_filter(ipr, point.ifindex)

    def sweep(self) -> int:
        """Remove what runs our program where no pod of ours holds it now (after adoption: a
        predecessor's, for pods that left or opted out while no agent ran): tcx links (also those
        whose interface went) and clsact filters. Returns how many."""
        held = {p.ifindex for p in self.points.values() if p.mode == "tcx"}
        n = 0
        for name in os.listdir(self.dir):
            if not name.startswith("if") or not name[2:].isdigit() or int(name[2:]) in held:
                continue
            _unpin_link(os.path.join(self.dir, name))
            n += 1
        filtered = {p.ifindex for p in self.points.values() if p.mode == "clsact"}
        return n + len(remove_filters(keep=filtered))

    def detach_all(self) -> None:
        for ip in list(self.points):
            self.detach(ip)
        self.sweep()


def _del_filter(ipr: IPRoute, ifindex: int) -> None:
    try:
        ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE, parent=CLSACT_INGRESS, prio=FILTER_PRIO,
               protocol=0x0003)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            raise


def _is_ours(f: Any) -> bool:
    if f.get_attr("TCA_KIND") != "bpf" or f["handle"] != FILTER_HANDLE or f["info"] >> 16 != FILTER_PRIO:
        return False
    opts = f.get_attr("TCA_OPTIONS")
    return opts is not None and opts.get_attr("TCA_BPF_NAME") == FILTER_NAME


def our_filters(ipr: IPRoute) -> list[int]:
    """The interfaces of this network namespace whose clsact ingress holds one of our filters."""
    found = []
    for q in ipr.get_qdiscs():
        if q.get_attr("TCA_KIND") != "clsact":
            continue
        try:
            filters = ipr.get_filters(index=q["index"], parent=CLSACT_INGRESS)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):  # the interface went meanwhile
                continue
            raise
        if any(_is_ours(f) for f in filters):
            found.append(int(q["index"]))
    return found


def remove_filters(keep: Collection[int] = ()) -> list[str]:
    """Remove our clsact filters from every interface of this network namespace but `keep`'s
    (ifindexes). Returns the interfaces' names."""
    removed = []
    with IPRoute() as ipr:
        for ifindex in our_filters(ipr):
            if ifindex in keep:
                continue
            try:
                name = ipr.link("get", index=ifindex)[0].get_attr("IFLA_IFNAME")
            except NetlinkError:
                continue  # gone, and its filter with it
            _del_filter(ipr, ifindex)
            removed.append(str(name))
    return removed


def _link_detach(fd: int) -> None:
    lib = bpflink._lib()
    lib.bpf_link_detach.argtypes = [ct.c_int]
    if lib.bpf_link_detach(fd) < 0:
        err = ct.get_errno()
        raise bpflink.BpfError(err, f"bpf_link_detach: {os.strerror(err)}")


def _unpin_link(path: str) -> None:
    """Detach the tcx link pinned at `path` (if its interface still holds it) and remove the pin."""
    fd = bpflink.obj_get(path)
    if fd is not None:
        try:
            if tcx_link_ifindex(fd):
                _link_detach(fd)
        finally:
            os.close(fd)
    os.unlink(path)
