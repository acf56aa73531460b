"""Kernel answers: bpf/dns_answer.c (a TC program on the host end of each enrolled pod's veth) and
its maps, as the agent fills them.

bpf/dns_answer.h is the one definition of the layouts; this module reads its NA_ANS_* constants
and structs with kernel/maps.py's header reader. The program answers a query only from an entry
this module wrote (`AnswerMaps.put`), so everything it can say is decided here:

- `encode` turns a cache entry (resolve.cache.RawEntry) into a map entry: the same header, tail and
  TTL offsets the userspace cache answers with, its base time in the CLOCK_MONOTONIC nanoseconds
  bpf_ktime_get_ns reads (the cache's clock is time.monotonic, the same clock), and an expiry no
  later than the moment the smallest TTL would reach 0 (the program passes from then on).
- Entries that rotate address RRsets per answer (Part 8's round robin) are never encoded: a fixed
  copy in the kernel would answer every query in one order.
- The tail's checksum is summed here once, with the TTL octets zeroed; the program adds the aged
  TTLs (see its comment).
- Every value the program reads carries a check (`seal`, `pod_check`: dns_answer.h says what it
  covers): a keyed hash of the map key and the value, under the seed kept in na_ans_config. The
  program answers only from a copy of an entry that matches its check, so a value reused under it
  (the kernel reuses preallocated and LRU elements at once) is passed to userspace, never sent.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import logging
import mmap
import os
import secrets
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from node_agent.kernel import maps


class RawEntry(Protocol):
    """What a cache entry answers with (resolve.cache.RawEntry has this shape; kernel never imports
    resolve: the two are siblings of one layer)."""

    @property
    def base(self) -> bytes: ...  # header octets 2..12, RD=CD=0, ARCOUNT without OPT
    @property
    def tail0(self) -> bytes: ...  # after the qname, TTLs at their base values
    @property
    def offs(self) -> tuple[int, ...]: ...  # TTL offsets in tail0
    @property
    def ttls(self) -> tuple[int, ...]: ...
    @property
    def stored(self) -> float: ...  # time.monotonic() when the TTLs had their base values
    @property
    def expires(self) -> float: ...
    @property
    def rotates(self) -> bool: ...

log = logging.getLogger(__name__)

SOURCE = maps.bpf_source("dns_answer.c")
HEADER = maps.bpf_source("dns_answer.h")
_HEADER_TEXT = HEADER.read_text()
CONST = maps.header_constants(_HEADER_TEXT)
STRUCTS = maps.header_structs(_HEADER_TEXT)

PROGRAM = b"na_answer"
CONFIG = b"na_ans_config"
PODS = b"na_ans_pods"
ANSWERS = b"na_answers"
STATS = b"na_ans_stats"
HITS = b"na_ans_hits"

STAT_NAMES = {
    CONST["NA_ANS_STAT_ANSWERED"]: "answered",
    CONST["NA_ANS_STAT_NOT_POD"]: "not_pod",
    CONST["NA_ANS_STAT_SHAPE"]: "shape",
    CONST["NA_ANS_STAT_MISS"]: "miss",
    CONST["NA_ANS_STAT_EXPIRED"]: "expired",
    CONST["NA_ANS_STAT_TOO_BIG"]: "too_big",
    CONST["NA_ANS_STAT_ERROR"]: "error",
    CONST["NA_ANS_STAT_TORN"]: "torn",
}

SHARED_VIEW = 0  # the key's view for answers every view shares (the cache's SHARED key)

Key = STRUCTS["na_ans_key"]
Entry = STRUCTS["na_ans_entry"]
Pod = STRUCTS["na_ans_pod"]
Ip = STRUCTS["na_ans_ip"]
Config = STRUCTS["na_ans_config"]


_MASK = (1 << 64) - 1
_P1, _P2, _P3 = (CONST[f"NA_ANS_HASH_P{i}"] for i in (1, 2, 3))
_WORD = 8
# The entry's words the check covers before its ttl array: stored_ns .. slot|pad.
_HEAD = slice(Entry.stored_ns.offset, Entry.ttl.offset)


def check_hash(seed: int, data: bytes) -> int:
    """dns_answer.h's check over `data` (whole 8-octet words, loaded in host order as the program
    loads them)."""
    if len(data) % _WORD:
        raise ValueError("the check covers whole words")
    h = seed & _MASK
    for i in range(0, len(data), _WORD):
        h = (h + int.from_bytes(data[i : i + _WORD], sys.byteorder) * _P2) & _MASK
        h = (((h << 31) | (h >> 33)) & _MASK) * _P1 & _MASK
    h ^= h >> 33
    h = h * _P2 & _MASK
    h ^= h >> 29
    h = h * _P3 & _MASK
    return h ^ (h >> 32)


def _words(data: bytes, n: int) -> bytes:
    """The first `n` octets of `data` rounded up to whole words (the rest of the last word as
    stored: zero in every value this module writes)."""
    return data[: -(-n // _WORD) * _WORD]


def _name_len(qname: bytes) -> int:
    """The wire length of the name at the start of `qname`, walked by its label lengths as the
    program walks it (a label may hold a zero octet)."""
    i = 0
    while i < len(qname) and qname[i]:
        i += qname[i] + 1
    if i >= len(qname):
        raise ValueError("qname without its final zero octet")
    return i + 1


def seal(k: Any, e: Any, seed: int) -> Any:
    """Set `e.check` for entry `e` under key `k` (dns_answer.h: the key's words up to its qname's
    end, stored_ns .. slot|pad, ttl[:nttl], the tail's words); returns `e`."""
    kb, eb = bytes(k), bytes(e)
    qlen = _name_len(bytes(k.qname))
    tail = eb[Entry.tail.offset :]
    covered = (_words(kb, Key.qname.offset + qlen) + eb[_HEAD]
               + eb[Entry.ttl.offset : Entry.ttl.offset + e.nttl * _WORD] + _words(tail, e.tail_len))
    e.check = check_hash(seed, covered)
    return e


def pod_check(ip: Any, view: int, flags: int, seed: int) -> int:
    """na_ans_pod.check of a pod at `ip` (an Ip key) with this view and flags."""
    vf = bytes(Pod(view=view, flags=flags))[: Pod.check.offset]
    return check_hash(seed, bytes(ip) + vf)


def pin_dir(pin_root: str) -> str:
    """Where this layout version's maps and the program's link are pinned."""
    return os.path.join(pin_root, f"answers-v{CONST['NA_ANS_LAYOUT_VERSION']}")


def ones_sum(data: bytes) -> int:
    """The unfolded sum of `data` as big-endian 16-bit words (an odd last octet padded with 0)."""
    if len(data) & 1:
        data += b"\x00"
    return sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))


def key(view: int, ck: bytes) -> Any:
    """The map key of a cache key part `ck` (Query.ck: qname + qtype + qclass + DO) in `view`."""
    qname, qtc, do = ck[:-5], ck[-5:-1], ck[-1]
    if len(qname) > CONST["NA_ANS_MAX_NAME"] - 1:
        raise ValueError("qname longer than 255 octets")
    k = Key()
    k.view = view
    k.qtype = int.from_bytes(qtc[0:2], "little")  # the wire octets, as the program copies them
    k.qclass = int.from_bytes(qtc[2:4], "little")
    k.dnssec_ok = do
    ct.memmove(k.qname, qname, len(qname))
    return k


def eligible(raw: RawEntry) -> bool:
    """Whether the kernel can answer from this entry exactly as the cache would."""
    return (
        not raw.rotates
        and len(raw.tail0) <= CONST["NA_ANS_MAX_TAIL"]
        and len(raw.offs) <= CONST["NA_ANS_MAX_TTLS"]
        and len(raw.tail0) >= 4
    )


def encode(raw: RawEntry, slot: int = 0) -> Any:
    """The na_answers value for a cache entry (see `eligible`: raises ValueError otherwise) whose
    answers count in na_ans_hits[slot], its check not yet set: the program answers from it once
    `seal`ed for its key."""
    if not eligible(raw):
        raise ValueError("entry cannot be answered by the kernel")
    e = Entry()
    e.slot = slot
    e.stored_ns = int(raw.stored * 1e9)
    # Past the smallest TTL the cache would say 0; the program must have passed by then.
    last = min(raw.expires, raw.stored + min(raw.ttls)) if raw.ttls else raw.expires
    e.expires_ns = int(last * 1e9)
    zeroed = bytearray(raw.tail0)
    for off in raw.offs:
        zeroed[off : off + 4] = b"\x00\x00\x00\x00"
    e.tail_sum = ones_sum(bytes(zeroed))  # (e.check: `seal`, once the key is known)
    e.tail_len = len(raw.tail0)
    e.nttl = len(raw.offs)
    e.flags[0], e.flags[1] = raw.base[0], raw.base[1]
    for i in range(6):
        e.counts[i] = raw.base[4 + i]
    for i, (off, ttl) in enumerate(zip(raw.offs, raw.ttls, strict=True)):
        e.ttl[i] = ttl << 32 | off
    ct.memmove(e.tail, raw.tail0, len(raw.tail0))
    return e


def ip_key(address: str) -> Any:
    k = Ip()
    packed = ipaddress.ip_address(address).packed
    ct.memmove(k.addr, packed, len(packed))
    k.family = 4 if len(packed) == 4 else 6
    return k


@dataclass
class AnswerMaps:
    """The program's maps (a bcc BPF object, or maps.FakeMaps-like tables), written by the agent.

    One AnswerMaps per map set in a process: it keeps the seed it read or chose (`seed`)."""

    bpf: Any
    _seed: int = field(default=0, init=False, repr=False)
    _hits: Any = field(default=None, init=False, repr=False)  # na_ans_hits, memory-mapped

    def seed(self) -> int:
        """The checks' key: the one in the config map, chosen here (random, never 0) when it has
        none. A map set adopted from a predecessor keeps its seed, so its entries stay valid, and
        the config is only ever rewritten with the same seed (the program reads it unlocked)."""
        if not self._seed:
            table = self.bpf[CONFIG]
            k = ct.c_uint32(0)
            try:
                cfg = table[k]
            except KeyError:
                cfg = table.Leaf()
            if not cfg.seed:
                cfg.seed = secrets.randbits(64) | 1
                table[k] = cfg
            self._seed = int(cfg.seed)
        return self._seed

    def configure(self, address4: str, address6: str, port: int, *, max_udp: int, edns_payload: int,
                  enabled: bool) -> None:
        """Write the program's config. The program reads it in place, so once it runs this is
        called again only to flip `enabled` (dns_answer.h): the seed is kept, and addresses and
        sizes must be the same."""
        cfg = Config()
        cfg.seed = self.seed()
        if address4:
            cfg.responder4 = int.from_bytes(socket.inet_aton(address4), "little")
        if address6:
            ct.memmove(cfg.responder6, ipaddress.IPv6Address(address6).packed, 16)
        cfg.port = socket.htons(port)
        cfg.max_udp = max_udp
        cfg.edns_payload = edns_payload
        cfg.enabled = 1 if enabled else 0
        table = self.bpf[CONFIG]
        table[ct.c_uint32(0)] = _as(table.Leaf, cfg)

    def set_pod(self, address: str, view: int, *, opt_out: bool = False) -> None:
        """The pod at `address` asks in `view` (an id > 0 the agent gives each View)."""
        if view <= 0:
            raise ValueError("view ids start at 1 (0 is the shared key)")
        table = self.bpf[PODS]
        k = _as(table.Key, ip_key(address))
        try:
            pod = table[k]
        except KeyError:
            pod = table.Leaf()
        pod.view = view
        pod.flags = CONST["NA_ANS_POD_OFF"] if opt_out else 0
        pod.check = pod_check(k, pod.view, pod.flags, self.seed())
        table[k] = pod

    def remove_pod(self, address: str) -> None:
        table = self.bpf[PODS]
        try:
            del table[_as(table.Key, ip_key(address))]
        except KeyError:
            pass

    def put(self, view: int, ck: bytes, raw: RawEntry, *, slot: int) -> bool:
        """Write the entry, its answers counted in `slot` (see `hits`), if the kernel can answer
        it; False (and nothing written) otherwise."""
        if not eligible(raw):
            return False
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} outside the answer map's {self.slots}")
        table = self.bpf[ANSWERS]
        k = key(view, ck)
        table[_as(table.Key, k)] = _as(table.Leaf, seal(k, encode(raw, slot), self.seed()))
        return True

    def remove(self, view: int, ck: bytes) -> None:
        table = self.bpf[ANSWERS]
        try:
            del table[_as(table.Key, key(view, ck))]
        except KeyError:
            pass

    @property
    def slots(self) -> int:
        """How many counters na_ans_hits has: one per entry the answer map can hold."""
        return len(self.counters())

    def counters(self) -> Any:
        """na_ans_hits as a sequence of ints (a memoryview of the program's own array, read with no
        system call): counters()[slot] is every answer given from entries written with that slot."""
        if self._hits is None:
            table = self.bpf[HITS]
            size = -(-table.max_entries * 8 // mmap.PAGESIZE) * mmap.PAGESIZE
            mm = mmap.mmap(table.map_fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            self._hits = memoryview(mm).cast("Q")[: table.max_entries]
        return self._hits

    def hits(self, slot: int) -> int:
        return int(self.counters()[slot])

    def stats(self) -> dict[str, int]:
        """The program's per-CPU counters, summed."""
        table = self.bpf[STATS]
        out = {}
        for idx, name in STAT_NAMES.items():
            v = table[ct.c_uint32(idx)]
            out[name] = sum(int(x) for x in v) if hasattr(v, "__len__") else int(v.value)
        return out


def _as(ctype: Any, value: Any) -> Any:
    """`value` (a Structure of the header's layout) as bcc's own ctype for the map (same bytes)."""
    if type(value) is ctype:
        return value
    if ct.sizeof(ctype) != ct.sizeof(value):
        raise TypeError(f"{type(value).__name__}: {ct.sizeof(value)} bytes, the map wants {ct.sizeof(ctype)}")
    return ctype.from_buffer_copy(bytes(value))


def compile_program(pin: str, max_entries: int) -> Any:
    """Compile and load bpf/dns_answer.c with its maps pinned under `pin`; returns the bcc object."""
    from bcc import BPF  # imported late: unit tests of the encoder run without bcc

    os.makedirs(pin, exist_ok=True)
    cflags = [f'-DPIN_DIR="{pin}"', f"-DANS_ENTRIES={int(max_entries)}", f"-I{SOURCE.parent}",
              "-Wno-macro-redefined"]
    return BPF(src_file=str(SOURCE).encode(), cflags=cflags)


def load_program(bpf: Any) -> Any:
    """The program as a loaded sched_cls function (its .fd attaches with tcx or clsact)."""
    from bcc import BPF

    return bpf.load_func(PROGRAM, BPF.SCHED_CLS)

