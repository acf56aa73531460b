"""Thin ctypes bindings to the libbpf calls bcc does not expose: BPF links, pins and object info.

Links (not legacy bpf_prog_attach) are what make restarts hitless: a pinned link outlives the agent,
coexists with other programs on the same cgroup hook, and `bpf_link_update` swaps the program inside
it atomically, so a new agent replaces the old programs without a moment where no program runs.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno
import os
from dataclasses import dataclass
from functools import cache

BPF_LINK_TYPE_CGROUP = 3


class BpfError(OSError):
    pass


@cache
def _lib() -> ct.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    lib = ct.CDLL(name, use_errno=True)
    lib.bpf_link_create.argtypes = [ct.c_int, ct.c_int, ct.c_int, ct.c_void_p]
    lib.bpf_link_update.argtypes = [ct.c_int, ct.c_int, ct.c_void_p]
    lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
    lib.bpf_obj_get.argtypes = [ct.c_char_p]
    lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
    return lib


def _check(res: int, what: str) -> int:
    if res < 0:
        err = -res if res < -1 else ct.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return res


def link_create(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    return _check(_lib().bpf_link_create(prog_fd, cgroup_fd, attach_type, None), "bpf_link_create")


def link_update(link_fd: int, prog_fd: int) -> None:
    _check(_lib().bpf_link_update(link_fd, prog_fd, None), "bpf_link_update")


def obj_pin(fd: int, path: str) -> None:
    _check(_lib().bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin {path}")


def obj_get(path: str) -> int | None:
    """fd of a pinned object, or None when nothing is pinned there."""
    res = _lib().bpf_obj_get(path.encode())
    if res < 0:
        err = -res if res < -1 else ct.get_errno()
        if err == errno.ENOENT:
            return None
        raise BpfError(err, f"bpf_obj_get {path}: {os.strerror(err)}")
    return int(res)


class _CgroupLinkInfo(ct.Structure):
    # struct bpf_link_info: type, id, prog_id, then a union (8-aligned) whose cgroup arm we read.
    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("prog_id", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("cgroup_id", ct.c_uint64),
        ("attach_type", ct.c_uint32),
        ("_rest", ct.c_uint8 * 64),
    ]


@dataclass(frozen=True)
class LinkInfo:
    link_id: int
    prog_id: int
    cgroup_id: int
    attach_type: int


def link_info(fd: int) -> LinkInfo:
    info = _CgroupLinkInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "bpf_obj_get_info_by_fd")
    if info.type != BPF_LINK_TYPE_CGROUP:
        raise BpfError(errno.EINVAL, f"link {info.id} is not a cgroup link (type {info.type})")
    return LinkInfo(info.id, info.prog_id, info.cgroup_id, info.attach_type)
