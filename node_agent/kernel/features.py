"""What the running kernel lets the steering programs do, found by asking the kernel, never by its
version (distributions backport BPF features, and trim them).

Each feature is one question put to the kernel with the bpf() system call, before bcc compiles:

- a hook: BPF_PROG_LOAD of a two-instruction cgroup sock_addr program (`return 1`) with that
  expected attach type; a kernel without the hook refuses the attach type (EINVAL);
- a helper: the same program calling the helper the way bpf/dns_steer.c calls it, loaded for each
  hook that calls it; a kernel without it fails verification with "unknown func" / "invalid func";
- cgroup links: BPF_LINK_CREATE of a loaded connect4 program on fd -1 and BPF_LINK_UPDATE of link
  fd -1. Where the command exists for cgroup programs the kernel gets as far as looking the fd up
  (EBADF); where it does not, it refuses the command or the program type (EINVAL). Nothing is
  attached: the agent's cgroup may be read-only (the DaemonSet mounts it so) and a probe must not
  touch what pods run through.

A millisecond for all of them, so `status` asks too. bpftool's `feature probe` answers the helper
question per program type as well (tests/unit/kernel/test_features.py checks that both agree), but
it loads a program for every helper of every program type, cannot ask for an expected attach type
(the hooks) and is no dependency of the agent.

A required feature missing puts the kernel below the floor: the agent refuses to start, in one line
naming what is missing. An optional one missing compiles the programs with its macro left out
(`cflags`) and is reported as degraded: the agent's log, `node-agent status`, the metric
nodeagent_bpf_feature.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import logging
import os
import platform
import resource
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Kernel UAPI numbers (include/uapi/linux/bpf.h).
BPF_PROG_LOAD, BPF_LINK_CREATE, BPF_LINK_UPDATE = 5, 28, 29
PROG_TYPE_CGROUP_SOCK_ADDR = 18
CONNECT4, CONNECT6, SENDMSG4, SENDMSG6, RECVMSG4, RECVMSG6, GETPEERNAME4, GETPEERNAME6 = (
    10, 11, 14, 15, 19, 20, 29, 30)
HELPER_GET_SOCKET_COOKIE, HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID, HELPER_SET_RETVAL = 46, 123, 187
_SYS_BPF = {"x86_64": 321, "aarch64": 280}

# Instructions (struct bpf_insn: code, dst/src registers, offset, immediate).
_MOV64_IMM, _CALL, _EXIT = 0xB7, 0x85, 0x95


def _insn(code: int, dst: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst, 0, imm)


_RETURN_1 = _insn(_MOV64_IMM, 0, 1) + _insn(_EXIT)  # verdict 1: let the call go on, unchanged


@dataclass(frozen=True)
class Feature:
    name: str  # the metric's label and status key
    what: str  # for people: what the kernel must have
    since: str  # mainline version that added it: documentation only, never used to decide
    required: bool
    macro: str = ""  # -D<macro> when present (optional features: the C code's #ifdef)
    without: str = ""  # what an optional feature's absence costs


FEATURES: tuple[Feature, ...] = (
    Feature("hook_connect", "cgroup connect4/connect6 hooks", "4.17", True),
    Feature("hook_sendmsg", "cgroup sendmsg4/sendmsg6 hooks", "4.18", True),
    Feature("hook_recvmsg", "cgroup recvmsg4/recvmsg6 hooks", "5.2", True),
    Feature("hook_getpeername", "cgroup getpeername4/getpeername6 hooks", "5.8", True),
    Feature("ancestor_cgroup_id", "bpf_get_current_ancestor_cgroup_id in sock_addr programs", "5.6", True),
    Feature("socket_cookie", "bpf_get_socket_cookie in sock_addr programs", "4.19", True),
    Feature("link_create", "bpf_link_create for cgroup sock_addr programs", "5.7", True),
    Feature("link_update", "bpf_link_update (atomic program swap in a link)", "5.7", True),
    Feature("set_retval", "bpf_set_retval in sock_addr programs", "5.18", False, "NA_HAVE_SET_RETVAL",
            "a connect()/sendmsg() to a ServiceEntry VIP without backends fails with EPERM instead of "
            "ECONNREFUSED (still at once)"),
    Feature("socket_lookup", "sockmap lookup and bpf_sk_release in sock_addr programs", "5.9", False,
            "NA_HAVE_SOCKET_LOOKUP", "pods of a killed agent fail open only after the heartbeat bound "
            "(stale_after, 1 s), not the moment its sockets close"),
)
BY_NAME = {f.name: f for f in FEATURES}

# Which hooks each helper is called from in bpf/dns_steer.c: a helper counts as present only if every
# one of them accepts it.
_HOOKS = {
    "hook_connect": (CONNECT4, CONNECT6),
    "hook_sendmsg": (SENDMSG4, SENDMSG6),
    "hook_recvmsg": (RECVMSG4, RECVMSG6),
    "hook_getpeername": (GETPEERNAME4, GETPEERNAME6),
}
_HELPERS: dict[str, tuple[int, bytes, tuple[int, ...]]] = {  # name -> (helper, argument set-up, hooks)
    "ancestor_cgroup_id": (HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID, _insn(_MOV64_IMM, 1, 1),
                           (CONNECT4, SENDMSG4)),
    "socket_cookie": (HELPER_GET_SOCKET_COOKIE, b"", (CONNECT4, SENDMSG4, RECVMSG4, GETPEERNAME4)),  # r1 = ctx
    "set_retval": (HELPER_SET_RETVAL, _insn(_MOV64_IMM, 1, -errno.ECONNREFUSED), (CONNECT4, SENDMSG4)),
}


class FeatureError(RuntimeError):
    """The agent cannot steer on this kernel; the message names why, in one line."""


class ProbeError(FeatureError):
    """The kernel could not be asked at all (no bpf() here, or no privilege to load programs)."""


@dataclass(frozen=True)
class Answer:
    rc: int  # the syscall's result (an fd, or -1)
    err: int  # errno when rc < 0
    log: str = ""  # the verifier's log (program loads)


# One bpf() call: (command, attr bytes, log size) -> Answer. Tests pass a fake kernel.
Syscall = Callable[[int, bytes, int], Answer]


@dataclass(frozen=True)
class Features:
    kernel: str
    found: dict[str, bool]
    why: dict[str, str] = field(default_factory=dict)  # a missing feature -> what the kernel said

    @property
    def missing(self) -> list[Feature]:
        """Required features the kernel lacks: below the floor when not empty."""
        return [f for f in FEATURES if f.required and not self.found.get(f.name)]

    @property
    def degraded(self) -> list[Feature]:
        return [f for f in FEATURES if not f.required and not self.found.get(f.name)]

    def cflags(self) -> list[str]:
        return [f"-D{f.macro}=1" for f in FEATURES if f.macro and self.found.get(f.name)]

    def floor_error(self) -> str:
        """One line for a kernel below the floor."""
        lacks = "; ".join(f"{f.what} (Linux {f.since}): {self.why.get(f.name, 'missing')}" for f in self.missing)
        return (f"kernel {self.kernel} lacks what BPF steering needs: {lacks}. "
                "Run with --no-bpf to serve DNS without steering")

    def summary(self) -> str:
        have = [f.name for f in FEATURES if self.found.get(f.name)]
        lacks = [f.name for f in FEATURES if not self.found.get(f.name)]
        return f"kernel {self.kernel}: BPF features {' '.join(have) or '-'}" + (
            f"; missing {' '.join(lacks)}" if lacks else "")

    def degradations(self) -> list[str]:
        return [f"{f.name} missing ({f.what}, Linux {f.since}): {f.without}" for f in self.degraded]

    def as_dict(self) -> dict[str, object]:
        return {"kernel": self.kernel, "found": dict(self.found), "missing": [f.name for f in self.missing],
                "degraded": self.degradations(), "why": dict(self.why)}


def prog_load_attr(insns: ct.Array[ct.c_char], attach_type: int, log_buf: ct.Array[ct.c_char],
                   license_: ct.Array[ct.c_char]) -> bytes:
    """union bpf_attr as BPF_PROG_LOAD reads it, up to expected_attach_type (the kernel zero-fills
    what follows). The buffers must outlive the call: the attr holds their addresses."""
    return struct.pack(
        "<IIQQIIQII16sII",
        PROG_TYPE_CGROUP_SOCK_ADDR, len(insns) // 8, ct.addressof(insns), ct.addressof(license_),
        1, len(log_buf), ct.addressof(log_buf), 0, 0, b"na_probe", 0, attach_type,
    )


def _lift_memlock() -> None:
    """Kernels before 5.11 charge BPF programs and maps to RLIMIT_MEMLOCK, counted for all of a
    user's processes together: with a running agent's maps charged to root, a second agent's (or
    `status`'s) probe would be refused with EPERM. bcc lifts the limit the same way as it compiles."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE: as far as the hard limit goes
        hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def kernel_syscall() -> Syscall:
    """bpf(2) through libc (the raw call: no libbpf feature logic between us and the kernel)."""
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise ProbeError(f"no bpf() system call number known for {platform.machine()}")
    _lift_memlock()
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long

    def call(cmd: int, attr: bytes, log_size: int) -> Answer:
        buf = ct.create_string_buffer(attr, len(attr))
        rc = int(libc.syscall(ct.c_long(number), ct.c_int(cmd), buf, ct.c_uint(len(attr))))
        err = ct.get_errno() if rc < 0 else 0
        return Answer(rc, err)

    return call


class _Prober:
    def __init__(self, syscall: Syscall) -> None:
        self.syscall = syscall

    def load(self, insns: bytes, attach_type: int) -> tuple[int, str]:
        """(fd or -errno, verifier log)."""
        code = ct.create_string_buffer(insns, len(insns))
        log_buf = ct.create_string_buffer(8192)
        license_ = ct.create_string_buffer(b"GPL")
        a = self.syscall(BPF_PROG_LOAD, prog_load_attr(code, attach_type, log_buf, license_), len(log_buf))
        text = a.log or log_buf.value.decode(errors="replace")
        if a.rc < 0:
            if a.err == errno.EPERM:
                raise ProbeError("loading BPF programs is not permitted (needs CAP_BPF and CAP_NET_ADMIN, "
                                 "or root; before Linux 5.11 also room under RLIMIT_MEMLOCK: CAP_SYS_RESOURCE)")
            if a.err == errno.ENOSYS:
                raise ProbeError("this kernel has no bpf() system call")
            return -a.err, text
        return a.rc, text

    def hook(self, attach_types: Sequence[int]) -> str | None:
        """None when every attach type loads, else what the kernel said."""
        for at in attach_types:
            fd, text = self.load(_RETURN_1, at)
            if fd < 0:
                return f"attach type {at} refused ({os.strerror(-fd)})"
            os.close(fd)
        return None

    def helper(self, helper: int, setup: bytes, attach_types: Sequence[int]) -> str | None:
        insns = setup + _insn(_CALL, 0, helper) + _RETURN_1
        for at in attach_types:
            fd, text = self.load(insns, at)
            if fd < 0:
                lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("processed")]
                said = next((ln for ln in lines if "func" in ln or "helper" in ln), lines[-1] if lines else "")
                return f"refused in attach type {at}: {said or os.strerror(-fd)}"
            os.close(fd)
        return None

    def link_command(self, cmd: int) -> str | None:
        """BPF_LINK_CREATE (a connect4 program on fd -1) or BPF_LINK_UPDATE (link fd -1): EBADF
        means the kernel knows the command for cgroup programs and went on to look the fd up."""
        prog = -1
        try:
            if cmd == BPF_LINK_CREATE:
                prog, _ = self.load(_RETURN_1, CONNECT4)
                if prog < 0:
                    return "no connect4 program to link"
                attr = struct.pack("<IiII", prog, -1, CONNECT4, 0)
            else:
                attr = struct.pack("<IIII", 0xFFFFFFFF, 0xFFFFFFFF, 0, 0)
            a = self.syscall(cmd, attr, 0)
        finally:
            if prog >= 0:
                os.close(prog)
        if a.rc >= 0:  # cannot be (fd -1): a link we did not mean to make
            os.close(a.rc)
            return None
        return None if a.err == errno.EBADF else os.strerror(a.err)


BPF_MAP_CREATE, MAP_TYPE_SOCKMAP = 0, 15
HELPER_MAP_LOOKUP_ELEM, HELPER_SK_RELEASE = 1, 86


def _op(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def socket_lookup(p: _Prober) -> str | None:
    """What bpf/dns_steer.c's responder_open does, in every hook that calls it: look a key up in a
    sockmap and release the socket found. None when the verifier takes it, else what it said."""
    m = p.syscall(BPF_MAP_CREATE, struct.pack("<IIIII", MAP_TYPE_SOCKMAP, 4, 8, 1, 0), 0)
    if m.rc < 0:
        return f"no sockmap ({os.strerror(m.err)})"
    insns = (
        _op(0x62, dst=10, off=-4)  # *(u32 *)(r10 - 4) = 0: the key
        + _op(0x18, dst=1, src=1, imm=m.rc) + _op(0)  # r1 = the map (ld_imm64, BPF_PSEUDO_MAP_FD)
        + _op(0xBF, dst=2, src=10) + _op(0x07, dst=2, imm=-4)  # r2 = &key
        + _op(_CALL, imm=HELPER_MAP_LOOKUP_ELEM)
        + _op(0x15, dst=0, off=2)  # if r0 == NULL skip the release
        + _op(0xBF, dst=1, src=0) + _op(_CALL, imm=HELPER_SK_RELEASE)
        + _RETURN_1
    )
    try:
        for at in (CONNECT4, CONNECT6, SENDMSG4, SENDMSG6):
            fd, text = p.load(insns, at)
            if fd < 0:
                lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("processed")]
                return f"refused in attach type {at}: {lines[-1] if lines else os.strerror(-fd)}"
            os.close(fd)
    finally:
        os.close(m.rc)
    return None


def probe(syscall: Syscall | None = None, kernel: str | None = None) -> Features:
    """Ask the running kernel (or `syscall`, a fake one) for every feature in FEATURES."""
    p = _Prober(syscall or kernel_syscall())
    why: dict[str, str | None] = {}
    for name, hooks in _HOOKS.items():
        why[name] = p.hook(hooks)
    there = {at for name, hooks in _HOOKS.items() if why[name] is None for at in hooks}
    for name, (helper, setup, callers) in _HELPERS.items():
        # Asked only in hooks the kernel has: a missing hook is reported as itself, not as its helpers.
        present = [at for at in callers if at in there]
        why[name] = p.helper(helper, setup, present) if present else "no hook to ask in"
    why["link_create"] = p.link_command(BPF_LINK_CREATE)
    why["link_update"] = p.link_command(BPF_LINK_UPDATE)
    why["socket_lookup"] = socket_lookup(p)
    return Features(kernel or os.uname().release, {name: w is None for name, w in why.items()},
                    {name: w for name, w in why.items() if w is not None})


def check_kernel(syscall: Syscall | None = None) -> Features:
    """probe(), for the agent's start: FeatureError (one line) below the floor; otherwise log what
    was found and, one line each, what is degraded."""
    found = probe(syscall)
    if found.missing:
        raise FeatureError(found.floor_error())
    log.info("%s", found.summary())
    for line in found.degradations():
        log.warning("degraded: %s", line)
    return found
