"""The kernel side: load bpf/dns_steer.c with bcc, attach it to a cgroup through pinned links, and
keep its maps filled (responder address and sockets, DNS service addresses, enrolled pods,
heartbeat). Map names, layouts and codecs live in maps.py.

Who steers. The programs steer while a responder socket of the query's kind is in na_socks (the
kernel drops it as the socket closes: a killed agent fails pods open at once) and the heartbeat is
fresh (an agent alive but stuck fails them open after the bound). Of two agents on one node (a
hand-over) exactly one beats: the one named in na_agent, which only a taking-over agent writes
(`take_over`: its sockets go in first, then ownership, then a beat). A beat never writes na_agent,
so a predecessor's beat racing the take-over cannot undo it; the predecessor sees the new owner
at its next tick and stays quiet, and at its stop finds the successor's sockets in the map and
ownership gone (`hand_over`) before it lets go. Where the kernel cannot hold or look up the
sockets, the heartbeat alone decides (`socket_check` is False, and `status` says so).

The agent never imports a source: it is told which pods to enroll by cgroup id.
"""

from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from node_agent.kernel import bpflink, cgroups, deathwatch, maps
from node_agent.kernel.features import FeatureError, Features, check_kernel
from node_agent.kernel.maps import (
    CAUSE_NAMES,
    CONST,
    SOURCE,
    PodEntry,
    SockTable,
    addr_words,
    set_words,
    sock_kind,
    socket_cookie,
    u32,
    words_addr,
)
from node_agent.settings import InterceptSettings

log = logging.getLogger(__name__)

# (program, bcc.BPFAttachType value). Values are the kernel's enum bpf_attach_type.
PROGRAMS: tuple[tuple[str, int], ...] = (
    ("na_connect4", 10),  # CGROUP_INET4_CONNECT
    ("na_connect6", 11),  # CGROUP_INET6_CONNECT
    ("na_sendmsg4", 14),  # CGROUP_UDP4_SENDMSG
    ("na_sendmsg6", 15),  # CGROUP_UDP6_SENDMSG
    ("na_recvmsg4", 19),  # CGROUP_UDP4_RECVMSG
    ("na_recvmsg6", 20),  # CGROUP_UDP6_RECVMSG
    ("na_getpeername4", 29),  # CGROUP_INET4_GETPEERNAME
    ("na_getpeername6", 30),  # CGROUP_INET6_GETPEERNAME
)
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18


STAT_NAMES = {
    CONST["NA_STAT_STEERED"]: "steered",
    CONST["NA_STAT_FAILOPEN"]: "failopen",
    CONST["NA_STAT_OPT_OUT"]: "opt_out",
    CONST["NA_STAT_UNENROLLED"]: "unenrolled",
    CONST["NA_STAT_RESTORED"]: "restored",
    CONST["NA_STAT_VIP"]: "vip_translated",
    CONST["NA_STAT_VIP_NO_BACKEND"]: "vip_no_backend",
    CONST["NA_STAT_FAILOPEN_START"]: "failopen_start",
    CONST["NA_STAT_FAILOPEN_END"]: "failopen_end",
}


def pin_dir(settings: InterceptSettings) -> str:
    """Where this layout version's maps and links are pinned (a new layout gets a new directory)."""
    return os.path.join(settings.pin_root, f"v{CONST['NA_LAYOUT_VERSION']}")


class InterceptError(RuntimeError):
    pass


def check_environment() -> None:
    """Fail early with a message a person can act on."""
    if os.geteuid() != 0:
        raise InterceptError(
            "BPF steering needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); "
            "run as root or use --no-bpf to run the responder alone"
        )
    try:
        cgroups.cgroup2_mount()
    except cgroups.CgroupError as e:
        raise InterceptError(str(e)) from e
    if not any(line.split()[2] == "bpf" for line in open("/proc/mounts") if len(line.split()) > 2):
        raise InterceptError("bpffs is not mounted: mount -t bpf bpf /sys/fs/bpf")


def _compile(pin_dir: str, flags: tuple[str, ...] = ()) -> Any:
    """`flags`: the optional kernel features' macros (Features.cflags)."""
    from bcc import BPF  # imported late: `node-agent --no-bpf` and unit tests run without bcc

    os.makedirs(pin_dir, exist_ok=True)
    cflags = [f'-DPIN_DIR="{pin_dir}"', f"-I{SOURCE.parent}", "-Wno-macro-redefined", *flags]
    try:
        return BPF(src_file=str(SOURCE).encode(), cflags=cflags)
    except Exception as e:  # bcc raises bare Exception on compile/load failures
        raise InterceptError(
            f"could not compile/load {SOURCE}: {e} (kernel headers: see README, "
            "'BPF on nodes without kernel headers')"
        ) from e


def trim_heap() -> None:
    """Give the compiler's freed heap back to the kernel (glibc keeps it otherwise). A killed agent's
    sockets close only after the kernel has torn its memory down, so every megabyte held is time
    pods keep sending into a dead agent (about 0.1 ms per MB on a small VM)."""
    trim = getattr(ct.CDLL(None), "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


@dataclass(frozen=True)
class Target:
    """Where steered DNS goes: the responder's listen addresses (one setting, in ListenSettings)."""

    address4: str = "169.254.20.10"
    address6: str = ""
    port: int = 53

    @staticmethod
    def of(addresses: Iterable[str], port: int) -> Target:
        v4 = [a for a in addresses if ":" not in a]
        v6 = [a for a in addresses if ":" in a]
        return Target(v4[0] if v4 else "", v6[0] if v6 else "", port)


@dataclass
class Interceptor:
    settings: InterceptSettings
    target: Target = field(default_factory=Target)
    _bpf: Any = None
    _links: dict[str, int] = field(default_factory=dict)
    _pid: int = field(default_factory=os.getpid)
    _target: str = ""
    attached: bool = False
    features: Features | None = None  # what the kernel has (prepare): the programs compile for it
    socket_check: bool = False  # the programs check na_socks (else the heartbeat alone decides)
    took_over: bool = False  # we have steered: only then may our stop fail pods open
    _socks: SockTable | None = None
    _sockets: list[socket.socket] = field(default_factory=list)  # the responder's, registered in na_socks
    _mine: dict[int, int] = field(default_factory=dict)  # na_socks kind -> our socket's cookie
    _watch: deathwatch.DeathWatch | None = None  # takes our sockets out of na_socks as we die

    # ---- life cycle -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Compile and adopt the pinned maps (pods can be enrolled from here on). Steers nothing yet:
        a previous agent's programs, if any, keep running. Slow (bcc): run it off the event loop."""
        check_environment()
        try:  # below the floor: one error naming what is missing, before anything is compiled
            self.features = check_kernel()
        except FeatureError as e:
            raise InterceptError(str(e)) from e
        t0 = time.monotonic()
        self._target = cgroups.resolve(self.settings.cgroup)
        self._bpf = _compile(pin_dir(self.settings), tuple(self.features.cflags()))
        self._socks = self._open_socks()
        trim_heap()
        log.info("compiled %s in %.2fs; maps pinned in %s", SOURCE.name, time.monotonic() - t0, pin_dir(self.settings))

    def _open_socks(self) -> SockTable | None:
        if isinstance(self._bpf, maps.FakeMaps):
            return self._bpf.socks
        return maps.SockMap.open(os.path.join(pin_dir(self.settings), maps.SOCKS.decode()))

    def attach(self, sockets: Sequence[socket.socket] = ()) -> None:
        """Take steering over (`take_over`: the responder's `sockets` into na_socks, config,
        ownership, a beat), then attach the programs or swap them into the pinned links. Call once
        the responder listens: from here on pods' DNS comes to it. Taking over comes first so a
        fresh install never steers to nobody."""
        self._sockets = list(sockets)
        self.take_over()
        self._start_watch()
        cg_fd = os.open(self._target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, attach_type in PROGRAMS:
                self._attach(name, attach_type, cg_fd, cgroups.cgroup_id(self._target))
        finally:
            os.close(cg_fd)
        self.attached = True
        log.info("steering attached to cgroup %s (%d programs)", self._target, len(PROGRAMS))

    def _attach(self, name: str, attach_type: int, cg_fd: int, cg_id: int) -> None:
        try:
            fn = self._bpf.load_func(name.encode(), BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach_type=attach_type)
        except Exception as e:  # bcc raises bare Exception; it printed the verifier's log above
            raise InterceptError(f"the kernel refused program {name}: {e}") from e
        pin = os.path.join(pin_dir(self.settings), f"link_{name}")
        old = bpflink.obj_get(pin)
        if old is not None:
            info = bpflink.link_info(old)
            if info.cgroup_id == cg_id and info.attach_type == attach_type:
                bpflink.link_update(old, fn.fd)  # atomic: no moment without a program
                self._links[name] = old
                log.debug("adopted link %d for %s (prog %d -> new)", info.link_id, name, info.prog_id)
                return
            # Configured for another cgroup now: attach the new one first, then drop the old link.
            os.close(old)
        link = bpflink.link_create(fn.fd, cg_fd, attach_type)
        if os.path.exists(pin):
            os.unlink(pin)
        bpflink.obj_pin(link, pin)
        self._links[name] = link

    def _start_watch(self) -> None:
        """Where the programs check na_socks: a watcher that takes our sockets out of it the moment
        this process is killed, before the kernel closes them (kernel/deathwatch.py)."""
        if not self.socket_check or not isinstance(self._socks, maps.SockMap):
            return
        try:
            self._watch = deathwatch.DeathWatch.start(
                os.path.join(pin_dir(self.settings), maps.SOCKS.decode()), self._mine)
        except OSError as e:
            log.warning("no deathwatch (%s): if killed, pods fail open once the kernel has closed "
                        "our sockets, after tearing the process down", e)

    def _stop_watch(self) -> None:
        if self._watch is not None:
            rc = self._watch.stop()
            if rc != 0:
                log.warning("the deathwatch had %s", "to be killed" if rc is None else f"exited with {rc}")
            self._watch = None

    @property
    def maps(self) -> Any:
        """The bcc object holding the pinned maps (for the VIP programmer)."""
        return self._bpf

    def configure(self) -> None:
        s = self.settings
        cfg_map = self._bpf[maps.CONFIG]
        cfg = cfg_map.Leaf()
        t = self.target
        cfg.responder4 = addr_words(t.address4)[0] if t.address4 else 0
        if t.address6:
            set_words(cfg.responder6, t.address6)
        cfg.responder_port = socket.htons(t.port)
        cfg.flags = CONST["NA_CAPTURE_ALL"] if s.capture_all else 0
        if self.socket_check:
            cfg.flags |= CONST["NA_SOCKET_CHECK"]
        cfg.stale_after_ns = int(s.stale_after * 1e9)
        cfg_map[u32(0)] = cfg
        self._set_dns_services(s.dns_services)

    def _set_dns_services(self, addrs: Iterable[str]) -> None:
        d4, d6 = self._bpf[maps.DNS4], self._bpf[maps.DNS6]
        want4: set[int] = set()
        want6: set[tuple[int, ...]] = set()
        for a in addrs:
            if ipaddress.ip_address(a).version == 4:
                want4.add(addr_words(a)[0])
            else:
                want6.add(tuple(addr_words(a)))
        for k in list(d4.keys()):
            if k.value not in want4:
                del d4[k]
        for v4 in want4:
            d4[u32(v4)] = ct.c_uint8(1)
        for k in list(d6.keys()):
            if tuple(k.addr) not in want6:
                del d6[k]
        for words in want6:
            key = d6.Key()
            for i, w in enumerate(words):
                key.addr[i] = w
            d6[key] = ct.c_uint8(1)

    # ---- who steers: sockets, ownership, heartbeat ------------------------------------------------

    def take_over(self) -> None:
        """Become the agent that steers: our sockets into na_socks (replacing a predecessor's; from
        here the programs' socket check is about ours), the config, ownership in na_agent, a beat.
        A predecessor stops beating when it sees na_agent change."""
        self.took_over = True
        self.socket_check = self._register()
        self.configure()
        agent_map = self._bpf[maps.AGENT]
        leaf = agent_map.Leaf()
        leaf.pid, leaf.since_ns = self._pid, time.monotonic_ns()
        agent_map[u32(0)] = leaf
        self._write_beat()

    def _register(self) -> bool:
        """Our sockets into na_socks. A kind we do not serve keeps what a predecessor put there: its
        listener is no concern of ours, and the config we write steers no such queries. False (the
        heartbeat alone decides) where there is no map, the programs cannot look one up, or the
        kernel refuses a socket."""
        if self._socks is None or not self._sockets:
            return False
        if self.features is not None and not self.features.found.get("socket_lookup"):
            return False  # the programs were built without the lookup (features.py said why)
        mine: dict[int, int] = {}
        try:
            for sock in self._sockets:
                kind = sock_kind(sock)
                self._socks.set(kind, sock)
                mine[kind] = socket_cookie(sock)
        except OSError as e:
            log.warning("the kernel keeps no responder socket in na_socks (%s): pods fail open only "
                        "after the heartbeat bound when the agent dies", e)
            return False
        self._mine = mine
        return True

    def _write_beat(self) -> None:
        hb_map = self._bpf[maps.HEARTBEAT]
        hb = hb_map.Leaf()
        hb.mono_ns = time.monotonic_ns()
        hb.owner_pid = self._pid
        hb_map[u32(0)] = hb

    def owner(self) -> int:
        """The agent that steers (na_agent; 0 before any agent of this layout took over)."""
        return int(self._bpf[maps.AGENT][u32(0)].pid)

    def _sockets_state(self) -> tuple[bool, bool, bool]:
        """(all ours, all a successor's, any gone) over the kinds we registered."""
        assert self._socks is not None
        cookies = {kind: self._socks.cookie(kind) for kind in self._mine}
        ours = all(c == self._mine[k] for k, c in cookies.items())
        theirs = all(c is not None and c != self._mine[k] for k, c in cookies.items())
        return ours, theirs, any(c is None for c in cookies.values())

    def beat(self) -> bool:
        """One heartbeat, if we are the agent that steers; True when written. An agent a successor
        took over from writes nothing. If the successor's sockets have closed (it died) while we
        still run, we take over again: our sockets are still in the reuseport group. A successor
        that is alive but stuck keeps its sockets, and the group keeps giving it the new queries,
        so then we stay out (the programs fail open after the bound)."""
        if self.owner() == self._pid:
            if self.socket_check and self._sockets_state()[2]:
                self._put_back()
            self._write_beat()
            return True
        if self.socket_check and self._sockets_state()[2]:
            log.warning("agent pid %d has closed its sockets: taking steering back", self.owner())
            self.take_over()
            return True
        return False

    def _put_back(self) -> None:
        """Ours are gone from na_socks while we steer and our sockets are open: someone removed
        them (a dead predecessor's deathwatch racing our take-over, by its cookies). Without them
        the programs would fail pods open for as long as we run."""
        assert self._socks is not None
        for sock in self._sockets:
            kind = sock_kind(sock)
            if kind in self._mine and self._socks.cookie(kind) is None:
                try:
                    self._socks.set(kind, sock)
                    log.warning("our socket was missing from na_socks[%d]: put back", kind)
                except OSError as e:  # closed: we are stopping
                    log.debug("na_socks[%d]: %s", kind, e)

    def hand_over(self, wait: float = 1.0) -> int | None:
        """For a stopping agent, after its last beat: the pid of a successor that steers now (owns
        na_agent and, with the socket check, has its sockets in na_socks). None when there is none;
        then the heartbeat is zeroed so pods go straight to kube-dns instead of waiting out the
        bound. A successor caught between putting its sockets in and taking ownership is waited for
        (up to `wait` s; it is a few map writes)."""
        deadline = time.monotonic() + wait
        while True:
            owner = self.owner()
            _, theirs, gone = self._sockets_state() if self.socket_check else (False, True, False)
            if owner not in (0, self._pid) and theirs:
                return owner
            taking_over = self.socket_check and not gone and not self._sockets_state()[0]
            if not taking_over or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        hb_map = self._bpf[maps.HEARTBEAT]
        hb_map[u32(0)] = hb_map.Leaf()
        return None

    def stop(self, *, fail_open: bool = True) -> int | None:
        """Leave the programs attached (the next agent adopts them). With fail_open, hand over
        (`hand_over`: a successor's pid, or None after zeroing the heartbeat); an agent that never
        took over (its start failed) leaves the heartbeat to whoever steers. Our sockets stay in
        na_socks until they close: a draining agent still answers what reaches it."""
        if self._bpf is None:
            return None
        successor = self.hand_over() if fail_open and self.took_over else None
        self._stop_watch()
        if self._socks is not None:
            self._socks.close()
            self._socks = None
        for fd in self._links.values():
            os.close(fd)
        self._links.clear()
        self._bpf.cleanup()
        self._bpf = None
        return successor

    def open_existing(self) -> bool:
        """For `status`: adopt the pinned maps of a running (or dead) agent without loading programs
        or touching the config. False when nothing is installed (so nothing gets created)."""
        if not os.path.exists(os.path.join(pin_dir(self.settings), "na_config")):
            return False
        self._bpf = _compile(pin_dir(self.settings))
        self._socks = self._open_socks()
        return True

    def config(self) -> dict[str, Any]:
        cfg = self._bpf[maps.CONFIG][u32(0)]
        dns4 = [words_addr([k.value], socket.AF_INET) for k in self._bpf[maps.DNS4].keys()]
        dns6 = [words_addr(k.addr, socket.AF_INET6) for k in self._bpf[maps.DNS6].keys()]
        return {
            "responder4": words_addr([cfg.responder4], socket.AF_INET) if cfg.responder4 else "",
            "responder6": words_addr(cfg.responder6, socket.AF_INET6) if any(cfg.responder6) else "",
            "port": socket.ntohs(cfg.responder_port),
            "capture_all": bool(cfg.flags & CONST["NA_CAPTURE_ALL"]),
            "stale_after_s": cfg.stale_after_ns / 1e9,
            "dns_services": dns4 + dns6,
            "socket_check": bool(cfg.flags & CONST["NA_SOCKET_CHECK"]),
        }

    def liveness(self) -> dict[str, Any]:
        """For `status`: what the programs decide on. Which responder sockets are open (na_socks
        kinds), the agent that steers, and why steering last stopped."""
        kinds = {CONST[f"NA_SOCK_{k}"]: k.lower() for k in ("UDP4", "TCP4", "UDP6", "TCP6")}
        socks = [name for kind, name in kinds.items() if self._socks is not None and self._socks.cookie(kind)]
        st = self._bpf[maps.STATE][u32(0)]
        return {"sockets": socks, "owner_pid": self.owner(),
                "failed_open": bool(st.failed_open),
                "cause": CAUSE_NAMES.get(int(st.cause), "") if st.failed_open else ""}

    def heartbeat(self) -> tuple[float | None, int]:
        """(age in seconds or None when zeroed, owner pid)."""
        hb = self._bpf[maps.HEARTBEAT][u32(0)]
        if not hb.mono_ns:
            return None, int(hb.owner_pid)
        return (time.monotonic_ns() - hb.mono_ns) / 1e9, int(hb.owner_pid)

    def links(self) -> dict[str, bpflink.LinkInfo]:
        out = {}
        for name, _ in PROGRAMS:
            fd = bpflink.obj_get(os.path.join(pin_dir(self.settings), f"link_{name}"))
            if fd is not None:
                try:
                    out[name] = bpflink.link_info(fd)
                finally:
                    os.close(fd)
        return out

    def close(self) -> None:
        self._stop_watch()
        if self._socks is not None:
            self._socks.close()
            self._socks = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    # ---- pods ---------------------------------------------------------------------------------

    def enroll(self, cgroup_id: int, *, opt_out: bool = False) -> None:
        """Enroll (or update) a pod's cgroup; its counters survive an update."""
        maps.PodMap(self._bpf[maps.PODS]).enroll(cgroup_id, opt_out=opt_out)

    def unenroll(self, cgroup_id: int) -> None:
        maps.PodMap(self._bpf[maps.PODS]).unenroll(cgroup_id)

    def pods(self) -> dict[int, PodEntry]:
        return maps.PodMap(self._bpf[maps.PODS]).entries()

    def stats(self) -> dict[str, int]:
        """Kernel event counts (STAT_NAMES), and fail-open transitions by cause as
        `failopen_start_<cause>`."""
        per_cpu = self._bpf[maps.STATS]
        out = {name: sum(per_cpu[u32(i)]) for i, name in STAT_NAMES.items()}
        causes = self._bpf[maps.CAUSES]
        out.update({f"failopen_start_{name}": sum(causes[u32(i)]) for i, name in CAUSE_NAMES.items()})
        return out


def _pins(pin_root: str) -> Iterator[str]:
    for dirpath, _, files in os.walk(pin_root):
        for f in files:
            yield os.path.join(dirpath, f)


def uninstall(pin_root: str) -> list[str]:
    """Detach and unpin everything under pin_root (every layout version). Returns what was removed.

    Dropping a link's last reference detaches its program, so removing the pins is the whole job once
    no agent holds the links open; the agent must be stopped first."""
    removed: list[str] = []
    if not os.path.isdir(pin_root):
        return removed
    for path in sorted(_pins(pin_root), key=lambda p: not os.path.basename(p).startswith("link_")):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
    shutil.rmtree(pin_root, ignore_errors=True)
    return removed

