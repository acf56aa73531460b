"""The BPF maps as Python sees them: names, layouts, key/leaf codecs, and an in-memory fake.

bpf/dns_steer.h is the one definition of the layouts. bcc compiles it with the programs and hands the
agent a ctypes type for every map's key and leaf (table.Key / table.Leaf); the codecs below fill
those. This module also reads the header itself: the NA_* constants, and the structs as ctypes
(`STRUCTS`), from which `FakeMaps` builds tables with the same layouts, declared as in
bpf/dns_steer.c (`DECLS`). The fake lets VipMap and Enrollment run without a kernel, and records
every write in order so tests can check what a BPF program could observe between two writes.

na_socks, the sockmap of the responder's sockets, is the one map bcc gives Python no table for:
`SockMap` reaches it through its pin with libbpf, `FakeSockMap` stands for it in the fake.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from node_agent.kernel import bpflink

BPF_PACKAGE = "node_agent.kernel.bpf"  # the top-level bpf/ directory, installed as package data


def bpf_source(name: str) -> Path:
    """A file of bpf/ where the installed package holds it (site-packages, or the source tree under
    an editable install). bcc compiles from a path, so it must be a real file."""
    path = resources.files(BPF_PACKAGE) / name
    if not isinstance(path, Path) or not path.is_file():
        raise FileNotFoundError(f"{name} is not installed as a file of {BPF_PACKAGE} ({path})")
    return path


SOURCE = bpf_source("dns_steer.c")
HEADER = bpf_source("dns_steer.h")

# Map names as bcc knows them (the BPF_TABLE_PINNED declarations of bpf/dns_steer.c).
CONFIG = b"na_config"
HEARTBEAT = b"na_heartbeat"
DNS4 = b"na_dns4"
DNS6 = b"na_dns6"
PODS = b"na_pods"
ORIG = b"na_orig"
STATS = b"na_stats"
STATE = b"na_state"
VIPS = b"na_vips"
BACKENDS = b"na_backends"
VIP_STATS = b"na_vip_stats"
SOCKS = b"na_socks"
CAUSES = b"na_causes"
AGENT = b"na_agent"
NAMES = (CONFIG, HEARTBEAT, DNS4, DNS6, PODS, ORIG, STATS, STATE, VIPS, BACKENDS, VIP_STATS, SOCKS, CAUSES, AGENT)


def header_constants(text: str | None = None) -> dict[str, int]:
    """The NA_* constants of bpf/dns_steer.h, so Python never restates them."""
    consts = re.findall(r"^#define\s+(NA_\w+)\s+(\d+)", text or HEADER.read_text(), re.M)
    return {name: int(value) for name, value in consts}


CONST = header_constants()

_SCALARS: dict[str, Any] = {"u8": ct.c_uint8, "u16": ct.c_uint16, "u32": ct.c_uint32, "u64": ct.c_uint64}


def _uncomment(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def header_structs(text: str | None = None) -> dict[str, type[ct.Structure]]:
    """`struct na_*` of the header as ctypes Structures (fields of __u8..__u64 and arrays of them,
    the only kinds the header uses; natural alignment, as clang lays them out for BPF)."""
    text = text or HEADER.read_text()
    consts = header_constants(text)
    out: dict[str, type[ct.Structure]] = {}
    for name, body in re.findall(r"struct\s+(na_\w+)\s*\{(.*?)\};", _uncomment(text), re.S):
        fields: list[tuple[str, Any]] = []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            m = re.fullmatch(r"__(u8|u16|u32|u64)\s+(\w+)(?:\s*\[(\w+)\])?", decl)
            if m is None:
                raise ValueError(f"struct {name}: cannot read field {decl!r}")
            ctype = _SCALARS[m[1]]
            if m[3]:
                ctype = ctype * (int(m[3]) if m[3].isdigit() else consts[m[3]])
            fields.append((m[2], ctype))
        out[name] = type(name, (ct.Structure,), {"_fields_": fields})
    return out


STRUCTS = header_structs()


@dataclass(frozen=True)
class MapDecl:
    name: bytes
    kind: str  # bcc's table type: array, hash, lru_hash, percpu_array
    key: Any  # ctypes type
    leaf: Any
    max_entries: int


def source_maps(text: str | None = None) -> dict[bytes, MapDecl]:
    """The maps bpf/dns_steer.c declares, with their key and leaf types from the header."""
    def ctype(c: str) -> Any:
        c = c.strip()
        return STRUCTS[c.removeprefix("struct").strip()] if c.startswith("struct") else _SCALARS[c]

    decls = re.findall(r'BPF_TABLE_PINNED\(\s*"(\w+)"\s*,\s*([\w ]+?)\s*,\s*([\w ]+?)\s*,\s*(\w+)\s*,\s*(\w+)\s*,',
                       _uncomment(text or SOURCE.read_text()))
    return {
        name.encode(): MapDecl(name.encode(), kind, ctype(key), ctype(leaf), int(n) if n.isdigit() else CONST[n])
        for kind, key, leaf, name, n in decls
    }


DECLS = source_maps()

# ---- codecs -------------------------------------------------------------------------------------


def family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def addr_words(addr: str) -> list[int]:
    """An address as the __u32 addr[4] the maps hold (network order, read as host integers);
    IPv4 in word 0."""
    packed = ipaddress.ip_address(addr).packed
    if len(packed) == 4:
        return [int.from_bytes(packed, "little"), 0, 0, 0]
    return [int.from_bytes(packed[i : i + 4], "little") for i in range(0, 16, 4)]


def words_addr(words: Sequence[int], fam: int) -> str:
    """The inverse of addr_words."""
    if fam == socket.AF_INET:
        return socket.inet_ntoa(int(words[0]).to_bytes(4, "little"))
    return str(ipaddress.IPv6Address(b"".join(int(w).to_bytes(4, "little") for w in words[:4])))


def set_words(field: Any, addr: str) -> None:
    """Fill a __u32 [4] field (an address in a key or leaf)."""
    for i, w in enumerate(addr_words(addr)):
        field[i] = w


def u32(v: int) -> ct.c_uint32:
    """A __u32 key: an array map's index, na_dns4's address word, na_vip_stats' service id."""
    return ct.c_uint32(v)


def vip_key(vips: Any, vip: str, port: int, proto: int) -> Any:
    k = vips.Key()
    set_words(k.addr, vip)
    k.port = socket.htons(port)
    k.proto = proto
    k.family = family(vip)
    return k


def read_vip_key(k: Any) -> tuple[str, int, int]:
    """(vip, port, proto) of a na_vips key."""
    return words_addr(k.addr, k.family), socket.ntohs(k.port), int(k.proto)


def vip_leaf(vips: Any, sid: int, count: int) -> Any:
    leaf = vips.Leaf()
    leaf.id, leaf.count = sid, count
    return leaf


def backend_key(backends: Any, sid: int, slot: int) -> Any:
    return backends.Key(sid, slot)


def backend_leaf(backends: Any, address: str, port: int) -> Any:
    v = backends.Leaf()
    set_words(v.addr, address)
    v.port = socket.htons(port)
    v.family = family(address)
    return v


def read_backend(v: Any) -> tuple[str, int]:
    """(address, port) of a na_backends leaf."""
    return words_addr(v.addr, v.family), socket.ntohs(v.port)


@dataclass
class PodEntry:
    cgroup_id: int
    opt_out: bool
    steered: int
    failopen: int


class PodMap:
    """na_pods: enrolled pods by cgroup id; the programs count into the leaves."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def enroll(self, cgroup_id: int, *, opt_out: bool = False) -> None:
        """Enroll (or update) a pod's cgroup; its counters survive an update."""
        key = ct.c_uint64(cgroup_id)
        try:
            entry = self.table[key]
        except KeyError:
            entry = self.table.Leaf()
        entry.flags = CONST["NA_POD_OPT_OUT"] if opt_out else 0
        self.table[key] = entry

    def unenroll(self, cgroup_id: int) -> None:
        try:
            del self.table[ct.c_uint64(cgroup_id)]
        except KeyError:
            pass

    def entries(self) -> dict[int, PodEntry]:
        return {
            k.value: PodEntry(k.value, bool(v.flags & CONST["NA_POD_OPT_OUT"]), v.steered, v.failopen)
            for k, v in self.table.items()
        }


# ---- na_socks: the responder's sockets ----------------------------------------------------------

SO_COOKIE = 57  # socket(7): the id the kernel gives a socket, the value a sockmap hands back
CAUSE_NAMES = {CONST["NA_CAUSE_NO_SOCKET"]: "no_socket", CONST["NA_CAUSE_STALE"]: "stale_heartbeat",
               CONST["NA_CAUSE_STOPPED"]: "stopped"}


def socket_cookie(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


def sock_kind(sock: socket.socket) -> int:
    """The na_socks key (NA_SOCK_*) of a responder socket: what the programs look up for a query of
    that protocol and family."""
    proto = "TCP" if sock.type == socket.SOCK_STREAM else "UDP"
    return CONST[f"NA_SOCK_{proto}{6 if sock.family == socket.AF_INET6 else 4}"]


class SockTable(Protocol):
    """na_socks as user space sees it: a socket goes in, its cookie comes back; the kernel removes
    an entry when its socket closes."""

    def set(self, kind: int, sock: socket.socket) -> None: ...

    def cookie(self, kind: int) -> int | None: ...

    def delete(self, kind: int) -> None: ...

    def close(self) -> None: ...


@cache
def _libbpf() -> ct.CDLL:
    lib = ct.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    lib.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
    lib.bpf_map_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    lib.bpf_map_delete_elem.argtypes = [ct.c_int, ct.c_void_p]
    return lib


def _errno(res: int) -> int:
    return -res if res < -1 else ct.get_errno()


class SockMap:
    """na_socks in the kernel, opened through its pin (bcc has no table type for a sockmap)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, path: str) -> SockMap | None:
        """None when nothing is pinned there (a programs build without the map)."""
        fd = bpflink.obj_get(path)
        return None if fd is None else cls(fd)

    def set(self, kind: int, sock: socket.socket) -> None:
        """Raises OSError where the kernel cannot hold such a socket in a sockmap (EOPNOTSUPP)."""
        key, value = ct.c_uint32(kind), ct.c_uint64(sock.fileno())
        res = _libbpf().bpf_map_update_elem(self.fd, ct.byref(key), ct.byref(value), 0)
        if res < 0:
            err = _errno(res)
            raise OSError(err, f"na_socks[{kind}] = socket: {os.strerror(err)}")

    def cookie(self, kind: int) -> int | None:
        key, value = ct.c_uint32(kind), ct.c_uint64(0)
        res = _libbpf().bpf_map_lookup_elem(self.fd, ct.byref(key), ct.byref(value))
        if res < 0:
            err = _errno(res)
            if err == errno.ENOENT:
                return None
            raise OSError(err, f"na_socks[{kind}]: {os.strerror(err)}")
        return int(value.value)

    def delete(self, kind: int) -> None:
        key = ct.c_uint32(kind)
        res = _libbpf().bpf_map_delete_elem(self.fd, ct.byref(key))
        if res < 0 and _errno(res) not in (errno.ENOENT, errno.EINVAL):  # EINVAL: an empty sockmap slot
            raise OSError(_errno(res), f"delete na_socks[{kind}]: {os.strerror(_errno(res))}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---- the fake -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    op: str  # "set" or "del"
    map: bytes
    key: bytes  # the key's bytes, as the kernel sees them


class FakeTable:
    """One map, with the part of bcc's table interface the agent uses: t[k], t[k] = v, del t[k],
    keys/values/items, len, clear, and the Key/Leaf types. Like bcc, a read returns a copy (change
    it and write it back); arrays have every index and a delete zeroes the entry; a full hash
    refuses new keys. Keys and leaves must have the map's size, so a codec that builds the wrong
    struct fails here rather than in the kernel."""

    def __init__(self, maps: FakeMaps, decl: MapDecl, ncpus: int) -> None:
        self.maps, self.name, self.kind, self.max_entries = maps, decl.name, decl.kind, decl.max_entries
        self.Key = decl.key
        self.Leaf = decl.leaf * ncpus if decl.kind.startswith("percpu") else decl.leaf
        self._data: dict[bytes, bytes] = {}
        if self._is_array:
            self._data = {bytes(self.Key(i)): bytes(self.Leaf()) for i in range(self.max_entries)}

    @property
    def _is_array(self) -> bool:
        return self.kind.endswith("array")

    def _key(self, key: Any) -> bytes:
        if isinstance(key, int) and self._is_array:
            key = self.Key(key)
        if issubclass(self.Key, ct.Structure) and not isinstance(key, self.Key):
            raise TypeError(f"{self.name.decode()}: key {type(key).__name__} is not {self.Key.__name__}")
        if ct.sizeof(key) != ct.sizeof(self.Key):
            raise TypeError(f"{self.name.decode()}: key of {ct.sizeof(key)} bytes, not {ct.sizeof(self.Key)}")
        raw = bytes(key)
        if self._is_array and raw not in self._data:
            raise IndexError("Array index out of range")
        return raw

    def _write(self, op: str, raw: bytes) -> None:
        self.maps.writes.append(Write(op, self.name, raw))
        if self.maps.observe is not None:
            self.maps.observe(self.maps, self.maps.writes[-1])

    def __getitem__(self, key: Any) -> Any:
        return self.Leaf.from_buffer_copy(self._data[self._key(key)])

    def __setitem__(self, key: Any, leaf: Any) -> None:
        raw = self._key(key)
        if ct.sizeof(leaf) != ct.sizeof(self.Leaf):
            raise TypeError(f"{self.name.decode()}: leaf of {ct.sizeof(leaf)} bytes, not {ct.sizeof(self.Leaf)}")
        if raw not in self._data and len(self._data) >= self.max_entries:
            raise Exception("Could not update table: Argument list too long")  # bcc's words for E2BIG
        self._data[raw] = bytes(leaf)
        self._write("set", raw)

    def __delitem__(self, key: Any) -> None:
        raw = self._key(key)
        if self._is_array:
            self._data[raw] = bytes(self.Leaf())
        else:
            del self._data[raw]  # KeyError, as bcc
        self._write("del", raw)

    def __contains__(self, key: Any) -> bool:
        return self._key(key) in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def keys(self) -> list[Any]:
        return [self.Key.from_buffer_copy(k) for k in self._data]

    def values(self) -> list[Any]:
        return [self.Leaf.from_buffer_copy(v) for v in self._data.values()]

    def items(self) -> list[tuple[Any, Any]]:
        return [(self.Key.from_buffer_copy(k), self.Leaf.from_buffer_copy(v)) for k, v in self._data.items()]

    def clear(self) -> None:
        for k in self.keys():
            del self[k]


class FakeSockMap:
    """na_socks in memory, with the kernel's rule that a closed socket leaves the map: an entry holds
    the socket's fd and cookie, and reads as gone once that fd no longer is that socket. Tests pass
    real (unbound or loopback) sockets."""

    def __init__(self, maps: FakeMaps, decl: MapDecl) -> None:
        self.maps, self.name, self.max_entries = maps, decl.name, decl.max_entries
        self._socks: dict[int, tuple[int, int]] = {}  # kind -> (fd, cookie)

    def _write(self, op: str, kind: int) -> None:
        self.maps.writes.append(Write(op, self.name, bytes(ct.c_uint32(kind))))
        if self.maps.observe is not None:
            self.maps.observe(self.maps, self.maps.writes[-1])

    def set(self, kind: int, sock: socket.socket) -> None:
        if not 0 <= kind < self.max_entries:
            raise OSError(errno.E2BIG, f"na_socks has no slot {kind}")
        self._socks[kind] = (sock.fileno(), socket_cookie(sock))
        self._write("set", kind)

    def cookie(self, kind: int) -> int | None:
        fd, cookie = self._socks.get(kind, (-1, 0))
        if fd < 0:
            return None
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                alive = socket_cookie(sock) == cookie
        except OSError:
            alive = False
        if not alive:  # closed (or the fd reused since): the kernel would have dropped it
            del self._socks[kind]
            return None
        return cookie

    def delete(self, kind: int) -> None:
        if self._socks.pop(kind, None) is not None:
            self._write("del", kind)

    def close(self) -> None:
        pass


class FakeMaps:
    """Stands for the bcc BPF object (`bpf[b"na_vips"]`): every map of bpf/dns_steer.c, in memory.

    `writes` lists every set/delete in order; `observe`, when given, is called after each one, so a
    test can check an invariant at every moment a BPF program could look. na_socks is `socks` (a
    FakeSockMap), as bcc has no table for it either."""

    def __init__(self, *, ncpus: int = 2, observe: Callable[[FakeMaps, Write], None] | None = None) -> None:
        self.writes: list[Write] = []
        self.observe = observe
        self.tables = {name: FakeTable(self, decl, ncpus) for name, decl in DECLS.items() if decl.kind != "sockmap"}
        self.socks = FakeSockMap(self, DECLS[SOCKS])

    def __getitem__(self, name: bytes | str) -> FakeTable:
        name = name.encode() if isinstance(name, str) else name
        if name not in self.tables:
            raise KeyError(f"Cannot find table {name!r}")
        return self.tables[name]

    def cleanup(self) -> None:
        pass
