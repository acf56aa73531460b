"""The kernel answer path as the agent runs it: the program loaded with maps of its own, attached per
enrolled pod (kernel/tc.py), the pod map kept in step with the table's pods, hot cache entries
written to the answer map, flushed in the same step as the cache, and the program's per-entry hit
counters read back (metrics, and the cache's popularity, so prefetch refreshes names only the kernel
answers).

What the agent calls (app/agent.py's kernel-answers block):
- `load()` once, from a worker thread (compiling takes a second or more: done while a predecessor
  still serves);
- on the event loop: `pod_changed(old, new, attach=False)` for every pod the table reports (the pod
  map is written at once), `promote(items, now)` with the cache's hot entries (Cache.take_hot),
  `flush_names(names)` / `clear()` from the cache's flush hooks, `tick(now)` every few hundred ms
  (expired entries out, hit counters of entries in their prefetch window read), `fold()` before
  metrics are read;
- in one worker thread (pyroute2 runs an event loop of its own, and netlink calls block):
  `attach_queued()` after pod changes, `retry()` now and then, `readopt()` when steering came back
  to us after a successor died;
- `stop()` at the end.

Maps per process. Each agent loads its own program with its own maps: they are pinned under a
directory named for this process only long enough for bcc to create them, then unpinned (the
program and our descriptors keep them). A successor swaps its program in at each attach point
(tcx bpf_link_update on the shared pinned link, or clsact filter "replace"), so at every instant an
attach point runs exactly one agent's program, which reads only that agent's maps, numbered with
that agent's view ids and kept coherent by that agent. A process that stops disables its own
program (its config map): where no successor swapped in, the program passes everything. One that
dies leaves its program answering from entries bounded by their TTLs; steering fails open then, so
no query goes to the responder address, and the next agent swaps its program in before it steers.

View ids: `view_id` numbers the agent's View objects from 1 in order of first use (0 is the SHARED
key). An id is never reused for another view while this process runs.

Hit counters: the program counts answers per entry (in the entry's slot of an mmapable array, so
reading them costs no system call) and per pod. Each held key has a slot of its own; a slot's
counter only grows, and a key given a freed slot starts from the counter's value then. Deltas are
read before an entry is replaced or removed and before a pod leaves, so counts are lost only for
answers given between that read and the write (a few, at most, per refresh), and for entries the
map's LRU evicts itself (the agent keeps at most `entries` keys, so only the LRU's per-CPU
approximation can).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from node_agent.dns.names import encode_name
from node_agent.kernel import answers, loader, tc
from node_agent.mesh.model import Pod

log = logging.getLogger(__name__)

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_STALE_PIN_AGE = 600.0  # a per-process pin directory older than this is a crashed loader's leftover
_RETRY_MIN, _RETRY_MAX = 1.0, 30.0  # seconds between attach retries of one pod (doubling)
# Map work per tick (the agent ticks every 0.25 s, on its event loop): a counter read is an index
# into the memory-mapped hit array (~0.5 us with the bookkeeping), a write a system call (~17 us),
# so a tick spends at most ~5 ms, however many entries the map holds.
READS_PER_TICK = 512
# Counters of entries outside their prefetch window are read in turn, a round every this many ticks
# (2 s): each read that finds answers costs a callback into the resolver, so a read per entry per
# tick would cost about 1 us per query at 1,000 qps spread over a few hundred names. Metrics read
# every counter at the scrape anyway (`fold`), and entries in their window are read every tick.
RR_TICKS = 8
WRITES_PER_TICK = 256
# An entry goes in once hit this often within its TTL (the cache offers
# entries from its HOT_HITS on): a name asked once never costs a map slot.
MIN_HITS = 2

HitSink = Callable[[Hashable, bytes, int, int, float], None]  # (view, ck, rcode, answers, now)
PodSink = Callable[[str, int], None]  # (namespace, answers)
_Key = tuple[int, bytes]  # (view id, Query.ck)


@dataclass
class _Held:
    """What the agent wrote for one key of the answer map."""

    view: Hashable
    stored: float
    expires: float
    prefetch_at: float
    rcode: int
    slot: int  # its counter in the program's hit array: the key's alone while held
    seen: int  # that counter when last read (counters only grow; a slot is not reset when reused)


@dataclass(frozen=True)
class AttachInfo:
    pod_ip: str
    ifname: str
    mode: str


class KernelAnswers:
    def __init__(self, pin_root: str, address4: str, address6: str, port: int, *, entries: int,
                 max_udp: int, edns_payload: int, view_for: Callable[[str], Hashable | None],
                 shared: Hashable, mode: str = "auto") -> None:
        self.root = answers.pin_dir(pin_root)  # shared by every agent: the attach points' pins
        self.address4, self.address6, self.port = address4, address6, port
        self.entries, self.max_udp, self.edns_payload = entries, max_udp, edns_payload
        self.view_for = view_for
        self.shared = shared
        self.mode = mode
        self.bpf: Any = None
        self.maps: answers.AnswerMaps | None = None
        self.attacher: tc.TcAttacher | None = None
        self.error = ""  # why the path is off, for status
        self.on_hits: HitSink | None = None
        self.on_pod_answers: PodSink | None = None
        self.answered = 0  # kernel answers read back so far (entries' counters)
        self.skipped_full = 0  # hot entries not written: the map held `entries` keys
        self._ids: dict[Hashable, int] = {}
        self._held: dict[_Key, _Held] = {}
        self._free = list(range(entries - 1, -1, -1))  # hit-counter slots no held key uses
        self._by_name: dict[bytes, set[_Key]] = {}  # lower-cased wire qname -> keys held
        self._expiry: list[tuple[float, int, bytes]] = []  # heap, lazily pruned
        self._windows: list[tuple[float, int, bytes]] = []  # heap of prefetch windows' starts
        # Held keys whose counters are read on the tick, in turn: those in their prefetch window
        # first (prefetch needs their hits), then every key (metrics, popularity).
        self._watch: deque[_Key] = deque()
        self._watching: set[_Key] = set()
        self._rr: deque[_Key] = deque()
        self._in_rr: set[_Key] = set()
        self._pods: dict[str, str] = {}  # pod ip -> namespace
        self._siblings: dict[str, tuple[str, ...]] = {}  # pod ip -> every ip of its pod (one veth)
        self._pod_seen: dict[str, int] = {}  # pod ip -> its answers counter when last read
        self._ops: deque[tuple[str, str]] = deque()  # ("attach" | "detach", pod ip) for the worker
        self._retry_at: dict[str, tuple[float, float]] = {}  # pod ip -> (next try, interval)
        self._lock = threading.Lock()  # _ops and _pods between the loop and the worker
        self._tc_lock = threading.Lock()  # one netlink user of the attacher at a time
        self.points: tuple[AttachInfo, ...] = ()  # published by the worker after each change
        self.pending: tuple[tuple[str, str], ...] = ()  # (pod ip, why not attached), likewise

    # ---- loading (worker thread) -------------------------------------------------------------------

    def load(self) -> bool:
        pin = os.path.join(self.root, f"proc-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            _sweep_stale_pins(self.root)
            try:
                self.bpf = answers.compile_program(pin, self.entries)
            finally:
                _unpin_dir(pin)  # ours alone: the program and bcc's descriptors hold the maps
            prog = answers.load_program(self.bpf)
            self.maps = answers.AnswerMaps(self.bpf)
            self.maps.configure(self.address4, self.address6, self.port, max_udp=self.max_udp,
                                edns_payload=self.edns_payload, enabled=True)
            self.attacher = tc.TcAttacher(prog.fd, self.root, mode=self.mode)
            loader.trim_heap()  # the compile's garbage would lengthen a killed agent's teardown
        except Exception as e:  # a kernel or toolchain that cannot: answer in userspace
            self.error = f"cannot load: {e}"
            log.warning("kernel answers off: %s", self.error)
            self.maps = self.attacher = None
            if self.bpf is not None:  # a verifier's refusal: the maps (tens of MiB) go too
                with contextlib.suppress(Exception):
                    self.bpf.cleanup()
                self.bpf = None
            return False
        return True

    @property
    def active(self) -> bool:
        return self.attacher is not None

    def view_id(self, view: Hashable) -> int:
        if view == self.shared:
            return answers.SHARED_VIEW
        vid = self._ids.get(view)
        if vid is None:
            vid = self._ids[view] = len(self._ids) + 1
        return vid

    # ---- pods: the map on the loop, attaching in the worker ----------------------------------------

    def pod_changed(self, old: Pod | None, new: Pod | None, *, attach: bool = True) -> None:
        """Write the pod map for this change now; queue the attach/detach work, run here unless
        `attach` is False (then the agent's worker runs `attach_queued`)."""
        if self.maps is None or self.attacher is None:
            return
        keep = set(new.ips) if new is not None and not new.host_network else set()
        ops: list[tuple[str, str]] = []
        for ip in (old.ips if old is not None else ()):
            if ip not in keep:
                self._fold_pod(ip)
                self.maps.remove_pod(ip)
                with self._lock:
                    self._pods.pop(ip, None)
                    self._siblings.pop(ip, None)
                ops.append(("detach", ip))
        if new is not None and not new.host_network:
            for ip in new.ips:
                view = self.view_for(ip)
                self._fold_pod(ip)  # its answers so far count for the namespace it had
                if view is None:
                    self.maps.remove_pod(ip)
                    with self._lock:
                        self._pods.pop(ip, None)
                    ops.append(("detach", ip))
                    continue
                self.maps.set_pod(ip, self.view_id(view), opt_out=new.opt_out)
                with self._lock:
                    self._pods[ip] = new.namespace
                    self._siblings[ip] = tuple(new.ips)
                if new.opt_out:
                    ops.append(("detach", ip))
                elif ":" not in ip or self.address6:
                    ops.append(("attach", ip))
        with self._lock:
            self._ops.extend(ops)
        if attach:
            self.attach_queued()

    def attach_queued(self) -> int:
        """Run the queued attach/detach work in order (worker thread). Returns how many ran."""
        n = 0
        while True:
            with self._lock:
                if not self._ops:
                    break
                op, ip = self._ops.popleft()
            with self._tc_lock:
                if op == "attach":
                    self._attach(ip)
                else:
                    self._detach(ip)
            n += 1
        if n:
            self._publish()
        return n

    def _attach(self, ip: str) -> None:
        assert self.attacher is not None
        with self._lock:
            siblings = self._siblings.get(ip, ())
        twin = next((self.attacher.points[s] for s in siblings if s != ip and s in self.attacher.points), None)
        if twin is not None:
            # The pod's other address found its veth: the same one (a pod has one interface here),
            # where the program already runs for every address of the pod.
            self.attacher.points[ip] = tc.AttachPoint(ip, twin.ifindex, twin.ifname, twin.mode)
            self.attacher.failed.pop(ip, None)
            self._retry_at.pop(ip, None)
            return
        point = self.attacher.attach(ip)
        if point is None:
            _, interval = self._retry_at.get(ip, (0.0, _RETRY_MIN / 2))
            interval = min(interval * 2, _RETRY_MAX)
            self._retry_at[ip] = (time.monotonic() + interval, interval)
        else:
            self._retry_at.pop(ip, None)

    def _detach(self, ip: str) -> None:
        """A pod IP went or opted out. Its veth may carry the pod's other IP: then only forget it."""
        assert self.attacher is not None
        self._retry_at.pop(ip, None)
        point = self.attacher.points.get(ip)
        if point is not None and any(p.ifindex == point.ifindex for q, p in self.attacher.points.items() if q != ip):
            del self.attacher.points[ip]
            return
        try:
            self.attacher.detach(ip)
        except OSError as e:
            log.warning("kernel answers: detaching %s: %s", ip, e)

    def retry(self, now: float | None = None) -> int:
        """Attach where the veth was not found before (worker thread): a bridge learns a pod only once
        it sent a packet. Each pod is retried after 1, 2, 4 .. 30 s; a pod whose IP now has a
        neighbour entry on the node at once. Returns how many were attached."""
        if self.attacher is None or not self.attacher.failed:
            return 0
        now = time.monotonic() if now is None else now
        with self._lock:
            wanted = [ip for ip in self.attacher.failed if ip in self._pods]
        neighbours = _neighbours() if wanted else set()
        n = 0
        with self._tc_lock:
            for ip in wanted:
                at, _ = self._retry_at.get(ip, (0.0, 0.0))
                if now < at and ip not in neighbours:
                    continue
                self._attach(ip)
                n += ip in self.attacher.points
        self._publish()
        return n

    def readopt(self) -> None:
        """Swap our program back in at every attach point (worker thread): steering came back to us
        after a successor died, and its program, with maps nobody keeps coherent, runs there."""
        if self.attacher is None:
            return
        with self._tc_lock:
            ips = list(self.attacher.points)
            self.attacher.points.clear()
            for ip in ips:
                self._attach(ip)
        self._publish()

    def sweep(self) -> int:
        """Unpin tcx links this agent does not hold (a predecessor's, for pods that went or that we
        cannot find): nothing runs there but what this agent keeps coherent (worker thread)."""
        if self.attacher is None:
            return 0
        with self._tc_lock:
            n = self.attacher.sweep()
        self._publish()
        return n

    def _publish(self) -> None:
        if self.attacher is None:
            return
        points = list(self.attacher.points.values())
        self.points = tuple(sorted((AttachInfo(p.pod_ip, p.ifname, p.mode) for p in points), key=lambda p: p.pod_ip))
        self.pending = tuple(sorted(dict(self.attacher.failed).items()))

    # ---- entries (event loop) ----------------------------------------------------------------------

    def promote(self, items: Iterable[tuple[Hashable, bytes, answers.RawEntry, int]], now: float) -> int:
        """Offer (view, ck, raw entry, hits) of cache entries that became hot or were stored: a key
        the map holds gets the new entry at once (a refresh); a hot one goes in (hit twice within
        its TTL); a view-specific entry takes the SHARED kernel copy of its key out. Returns how
        many were written."""
        if self.maps is None:
            return 0
        n = 0
        for view, ck, raw, hits in items:
            vid = self.view_id(view)
            key = (vid, ck)
            held = self._held.get(key)
            if held is not None:
                if held.stored != raw.stored:
                    n += self._write(key, view, raw, now, replace=True)
                continue
            if vid != answers.SHARED_VIEW and (answers.SHARED_VIEW, ck) in self._held:
                # Userspace answers this view's pods from the view's own entry now; the program
                # would fall back to the SHARED copy while the view's is not in the kernel.
                self._remove((answers.SHARED_VIEW, ck), now)
            if hits < MIN_HITS or now >= raw.expires:
                continue
            if not self._free:
                self.skipped_full += 1
                continue
            n += self._write(key, view, raw, now, replace=False)
        return n

    def _write(self, key: _Key, view: Hashable, raw: answers.RawEntry, now: float, *, replace: bool) -> int:
        assert self.maps is not None
        old = self._held.get(key) if replace else None
        if old is not None:
            self._read(key, now)  # the old entry's answers: the new one counts on from here
            slot, seen = old.slot, old.seen
        else:
            slot = self._free[-1]
            seen = self.maps.hits(slot)
        try:
            written = self.maps.put(key[0], key[1], raw, slot=slot)
        except (ValueError, KeyError, OSError) as e:
            log.debug("kernel answers: cannot write %r: %s", key[1][:-5], e)
            written = False
        if not written:  # no longer one the kernel can answer (it rotates now): userspace only
            if old is not None:
                self._remove(key, now, read=False)
            return 0
        if old is None:
            self._free.pop()
        prefetch_at = getattr(raw, "prefetch_at", float("inf"))
        held = _Held(view, raw.stored, raw.expires, prefetch_at, raw.base[1] & 0x0F, slot, seen)
        self._held[key] = held
        self._by_name.setdefault(key[1][:-5], set()).add(key)
        self._watching.discard(key)  # a new entry: its own window
        if key not in self._in_rr:
            self._in_rr.add(key)
            self._rr.append(key)
        heapq.heappush(self._expiry, (raw.expires, key[0], key[1]))
        if prefetch_at < raw.expires:
            heapq.heappush(self._windows, (prefetch_at, key[0], key[1]))
        return 1

    def _remove(self, key: _Key, now: float, *, read: bool = True) -> None:
        if read:
            self._read(key, now)
        if self.maps is not None:
            self.maps.remove(key[0], key[1])
        held = self._held.pop(key, None)
        if held is not None:
            self._free.append(held.slot)
        self._watching.discard(key)
        self._in_rr.discard(key)
        keys = self._by_name.get(key[1][:-5])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_name[key[1][:-5]]

    def _read(self, key: _Key, now: float) -> int:
        """The kernel answers given from `key` since the last read, handed to on_hits."""
        held = self._held.get(key)
        if held is None or self.maps is None:
            return 0
        count = self.maps.hits(held.slot)
        delta = count - held.seen
        held.seen = count
        if delta <= 0:
            return 0
        self.answered += delta
        if self.on_hits is not None:
            self.on_hits(held.view, key[1], held.rcode, delta, now)
        return delta

    def tick(self, now: float, reads: int = READS_PER_TICK) -> None:
        """Every few hundred ms: entries past their expiry out of the map, then up to `reads` hit
        counters read: entries in their prefetch window first (a name only the kernel answers is
        refreshed), then the others in turn, 1/RR_TICKS of them a tick (popularity)."""
        exp = self._expiry
        while exp and exp[0][0] <= now:
            at, vid, ck = heapq.heappop(exp)
            held = self._held.get((vid, ck))
            if held is not None and held.expires == at:
                self._remove((vid, ck), now)
        win = self._windows
        while win and win[0][0] <= now:
            at, vid, ck = heapq.heappop(win)
            key = (vid, ck)
            held = self._held.get(key)
            if held is not None and held.prefetch_at == at and key not in self._watching:
                self._watching.add(key)
                self._watch.append(key)
        rr_share = -(-len(self._rr) // RR_TICKS)
        for queue, member, most in ((self._watch, self._watching, len(self._watch)),
                                    (self._rr, self._in_rr, rr_share)):
            for _ in range(min(reads, most)):
                key = queue.popleft()
                if key not in member:
                    continue  # removed since (or re-added behind us)
                queue.append(key)
                self._read(key, now)
                reads -= 1

    def fold(self, now: float | None = None, *, full: bool = False) -> None:
        """Before metrics are read: every pod's counter, and every entry's when the map holds few
        enough for one tick's reads (or `full`); with more, the ticks read them in turn (a few
        seconds behind at most)."""
        now = time.monotonic() if now is None else now
        if full or len(self._held) <= READS_PER_TICK:
            for key in list(self._held):
                self._read(key, now)
        with self._lock:
            ips = list(self._pods)
        for ip in ips:
            self._fold_pod(ip)

    def _fold_pod(self, ip: str) -> None:
        if self.bpf is None:
            return
        with self._lock:
            ns = self._pods.get(ip)
        table = self.bpf[answers.PODS]
        try:
            count = int(table[answers._as(table.Key, answers.ip_key(ip))].answers)
        except (KeyError, ValueError):
            self._pod_seen.pop(ip, None)
            return
        delta = count - self._pod_seen.get(ip, 0)
        self._pod_seen[ip] = count
        if delta > 0 and ns is not None and self.on_pod_answers is not None:
            self.on_pod_answers(ns, delta)

    def flush_names(self, names: Iterable[str]) -> int:
        """The cache dropped these names (text, any case, `*.suffix` for everything under suffix):
        their kernel entries go in the same step."""
        if not self._held:
            return 0
        exact: list[bytes] = []
        suffixes: list[bytes] = []
        for name in names:
            nm = name.translate(_ASCII_LOWER).rstrip(".")
            try:
                if nm.startswith("*."):
                    suffixes.append(encode_name(nm[2:]))
                else:
                    exact.append(encode_name(nm))
            except ValueError:
                continue
        if suffixes:
            # Over-matching (a suffix that is no label boundary) only drops an entry too many.
            exact += [q for q in self._by_name if any(q.endswith(s) and q != s for s in suffixes)]
        now = time.monotonic()
        n = 0
        for qname in exact:
            for key in list(self._by_name.get(qname, ())):
                self._remove(key, now)
                n += 1
        return n

    def clear(self) -> None:
        now = time.monotonic()
        for key in list(self._held):
            self._remove(key, now)

    @property
    def held(self) -> int:
        return len(self._held)

    def events(self) -> dict[str, int]:
        """The program's own counters (answered, miss, expired, ...), summed over CPUs."""
        if self.maps is None:
            return {}
        try:
            return self.maps.stats()
        except Exception as e:  # a scrape must not fail because a map read did
            log.debug("kernel answer stats: %s", e)
            return {}

    def stop(self, successor: bool) -> None:
        """Our program passes everything from now on, with or without a successor: where one swapped
        its program in, ours runs no more; where it did not (a veth it has not found yet), nobody
        would keep our maps coherent. Links and filters stay for the next agent to adopt."""
        if self.maps is None:
            return
        try:
            self.fold(full=True)
            self.maps.configure(self.address4, self.address6, self.port, max_udp=self.max_udp,
                                edns_payload=self.edns_payload, enabled=False)
        except Exception as e:
            log.warning("kernel answers: disabling the program: %s", e)
        log.info("kernel answers: %d answered by the kernel; program disabled (%s)", self.answered,
                 "successor's program at its attach points" if successor else "links left to adopt")


def _unpin_dir(pin: str) -> None:
    if not os.path.isdir(pin):
        return
    for name in os.listdir(pin):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pin, name))
    with contextlib.suppress(OSError):
        os.rmdir(pin)


def _sweep_stale_pins(root: str) -> None:
    """Per-process pin directories a loader left behind when it died between bcc's pin and our
    unpin (pins outlive processes): old ones only, never one another agent is loading right now."""
    if not os.path.isdir(root):
        return
    now = time.time()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith("proc-") and now - os.stat(path).st_mtime > _STALE_PIN_AGE:
            _unpin_dir(path)


def _neighbours() -> set[str]:
    """Every address the node's neighbour tables hold with a link-layer address."""
    from pyroute2 import IPRoute

    out: set[str] = set()
    try:
        with IPRoute() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for n in ipr.neigh("dump", family=family):
                    if n.get_attr("NDA_LLADDR"):
                        out.add(n.get_attr("NDA_DST"))
    except OSError as e:
        log.debug("neighbour dump: %s", e)
    return out

