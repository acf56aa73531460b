"""The answer cache: raw response bytes in, ready-to-send packets out, no message objects.

Entries are keyed by (view, lower-cased qname wire bytes, qtype, qclass, DO). A stored answer is
normalised: no OPT RR (ARCOUNT adjusted), RD/CD cleared, TTLs rewritten to their clamped base values.
It is kept split as a 10-octet header (flags + counts) and the bytes after the qname ("tail"), so a
hit is ``query ID + header variant + the asked qname (0x20 spelling) + aged tail [+ prebuilt OPT]``:
four concatenations of short bytes objects. The aged tail is rebuilt at most once per second per
entry; the header variant (RD, CD copied from the query; ARCOUNT+1 when the client sent EDNS) is
built on first use and kept.

Bounds: entries and (approximate) bytes, LRU-like eviction (CLOCK / second chance, see `_evict`).
Counters are plain ints in `Cache.stats`; nothing here talks to Prometheus.

Prefetch: when a hit finds a popular entry (>= prefetch_hits hits) in the last 10 % of its TTL, `get`
appends ``(view, query)`` to `Cache.prefetch_queue` (once per entry); the caller checks the list after
answering and refreshes upstream (`take_prefetches`). Hits answered elsewhere (the kernel answer
path) come in through `kernel_hits`, which makes the same decision.

The kernel answer path (kernel/answerpath.py) sees the cache through three things only: `take_hot`
(entries that became hot, or were stored, since the last call: O(those entries), nothing per hit
beyond one integer compare), `kernel_hits`, and the `on_flush` / `on_clear` hooks, which every flush
calls in the same step as it drops its own entries.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from node_agent.dns import wire
from node_agent.dns.wire import Query
from node_agent.settings import CacheSettings

__all__ = ["Cache", "CacheStats", "ENTRY_OVERHEAD", "HOT_HITS", "RawEntry", "rotate_tail"]

# Rough per-entry cost beyond the packet bytes (entry object, key tuple, dict slots, name index):
# counted into `bytes` so max_bytes means something for small answers.
ENTRY_OVERHEAD = 400
_CLOCK_SKIPS = 32
# Hits after which an entry is offered to the kernel answer path (kernel/answerpath.MIN_HITS:
# hit twice within its TTL). `get` compares against it once per hit.
HOT_HITS = 2


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0  # LRU evictions (entries or bytes bound)
    prefetches: int = 0  # prefetches requested by get()
    stale_served: int = 0
    entries: int = 0
    bytes: int = 0
    inserts: int = 0
    uncacheable: int = 0  # put() refused the response
    flushed: int = 0  # removed by flush_names / clear / past max_stale


_Key = tuple[Hashable, bytes]  # (view, Query.ck)


@dataclass(frozen=True, slots=True)
class RawEntry:
    """A read-only copy of what an entry answers with, for the kernel answer map (kernel/answers.py):
    the reply is ID + header from `base` (RD/CD from the query, ARCOUNT+1 with EDNS) + the asked
    qname + `tail0` aged + OPT, exactly as `get` builds it."""

    base: bytes  # header octets 2..12, RD=CD=0, ARCOUNT without OPT
    tail0: bytes  # after the qname, TTLs at their base values
    offs: tuple[int, ...]  # TTL offsets in tail0
    ttls: tuple[int, ...]  # base TTLs
    stored: float  # the cache clock when the TTLs had their base values
    expires: float
    rotates: bool  # answers rotate address RRsets per hit: a fixed copy would stop the rotation
    hits: int
    prefetch_at: float = float("inf")  # from when a popular entry's hits queue a prefetch


class _Entry:
    __slots__ = (
        "key",
        "name",
        "base",
        "hdrs",
        "qname",
        "tail0",
        "tail",
        "age",
        "next_age",
        "due",
        "offs",
        "ttls",
        "stored",
        "expires",
        "prefetch_at",
        "hits",
        "seen",
        "prefetched",
        "negative",
        "servfail",
        "had_opt",
        "size",
        "dead",
        "rot",
        "turn",
    )

    key: _Key
    name: str  # lower-case FQDN text without the trailing dot, for flush_names
    base: bytes  # header octets 2..12 with RD=CD=0 and ARCOUNT without OPT
    hdrs: list[bytes | None]  # header variants by Query.hv, built lazily
    qname: bytes  # stored spelling of the qname (lower-cased)
    tail0: bytes  # everything after the qname, TTLs at their base values
    tail: bytes  # tail aged by `age` seconds
    age: int
    next_age: float  # when `tail` must be re-aged
    due: float  # min(next_age, expires, prefetch_at while a prefetch may still be issued)
    offs: tuple[int, ...]  # TTL offsets in tail
    ttls: tuple[int, ...]  # base TTLs
    stored: float
    expires: float
    prefetch_at: float
    hits: int
    seen: int  # `hits` when the evictor last passed this entry
    prefetched: bool
    negative: bool
    servfail: bool
    had_opt: bool  # the upstream answer carried an OPT RR
    size: int
    dead: bool  # removed, replaced or evicted: whoever kept a reference must stop using it
    rot: tuple[tuple[int, int, int], ...]  # address RRsets to rotate per answer: (start, end, record size) in tail
    turn: int  # answers given: the rotation of each RRset


def _age_tail(tail0: bytes, offs: tuple[int, ...], ttls: tuple[int, ...], age: int) -> bytes:
    b = bytearray(tail0)
    for off, ttl in zip(offs, ttls, strict=True):
        t = ttl - age
        if t < 0:
            t = 0
        b[off : off + 4] = t.to_bytes(4, "big")
    return bytes(b)


def _address_runs(data: bytes, offs: list[int], qend: int, base: int) -> tuple[tuple[int, int, int], ...]:
    """Runs of two or more consecutive answer RRs of type A or AAAA whose octets up to the TTL (owner
    encoding, type, class) are identical and whose sizes are equal, as (start, end, record size)
    relative to `base`. Rotating whole records inside such a run cannot break a compression pointer:
    a pointer into a run lands on owner octets that every record of the run shares."""
    runs: list[tuple[int, int, int]] = []
    start = qend
    run_start = run_n = size = 0
    run_key = b""
    for o in offs:  # TTL offsets of the answer RRs, in order; the RR starts where the last ended
        end = o + 6 + ((data[o + 4] << 8) | data[o + 5])
        rtype = (data[o - 4] << 8) | data[o - 3]
        key = data[start:o]
        if run_n and key == run_key and end - start == size:
            run_n += 1
        else:
            if run_n > 1:
                runs.append((run_start - base, run_start - base + run_n * size, size))
            run_n = 0
            if rtype == 1 or rtype == 28:
                run_key, run_start, size, run_n = key, start, end - start, 1
        start = end
    if run_n > 1:
        runs.append((run_start - base, run_start - base + run_n * size, size))
    return tuple(runs)


def rotate_tail(e: _Entry) -> bytes:
    """The entry's aged tail with each address run rotated by one more record than last time."""
    e.turn = turn = e.turn + 1
    tail = e.tail
    for a, b, size in e.rot:
        k = (turn % ((b - a) // size)) * size
        if k:
            tail = tail[:a] + tail[a + k : b] + tail[a : a + k] + tail[b:]
    return tail


def _raw(e: _Entry) -> RawEntry:
    return RawEntry(e.base, e.tail0, e.offs, e.ttls, e.stored, e.expires, bool(e.rot), e.hits, e.prefetch_at)


def _query_for(qname: bytes, ck: bytes) -> Query | None:
    """A query for the entry keyed `ck` (qname as stored, qtype, qclass, DO), as a refresh asks it:
    RD set, EDNS with the DO bit when the key has it."""
    do = ck[-1] == 1
    packet = (b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00" + (b"\x00\x01" if do else b"\x00\x00") + qname
              + ck[len(qname):-1] + (wire.opt_rr(wire.DEFAULT_PAYLOAD, True) if do else b""))
    q = wire.parse_query(packet)
    return q if type(q) is Query else None


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Cache:
    """See the module docstring. Not thread-safe (one event loop owns it)."""

    def __init__(
        self,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        settings: CacheSettings | None = None,
    ) -> None:
        s = dataclasses.replace(settings) if settings is not None else CacheSettings()
        if max_entries is not None:
            s.max_entries = max_entries
        if max_bytes is not None:
            s.max_bytes = max_bytes
        self.settings = s
        self.stats = CacheStats()
        self.prefetch_queue: list[tuple[Hashable, Query]] = []
        self.last: _Entry | None = None  # the entry of the last hit (see Entry.dead)
        self._d: OrderedDict[_Key, _Entry] = OrderedDict()
        self._names: dict[str, set[_Key]] = {}
        self._opt = wire.opt_rr(s.edns_payload, False)
        self._opt_do = wire.opt_rr(s.edns_payload, True)
        # The kernel answer path: set track_hot and drain `take_hot` (untracked, nothing is kept).
        self.track_hot = False
        self._hot: list[_Entry] = []
        self.on_flush: Callable[[list[str]], object] | None = None  # the names flush_names got
        self.on_clear: Callable[[], object] | None = None

    def __len__(self) -> int:
        return len(self._d)

    # ---------------------------------------------------------------------------------------------
    # hot path

    def get(self, view: Hashable, q: Query, now: float, shared: Hashable = None) -> bytes | None:
        """A ready-to-send answer for `q` (parsed by `wire.parse_query`) or None on a miss/expiry.

        `shared`: a second view key to try when `view` has no entry (answers every view shares).

        `now` is a monotonic clock in seconds. The answer has the query's ID, its qname spelling, RD
        and CD, aged TTLs, and an OPT RR (our payload size, DO echoed) iff the client sent EDNS. It is
        not truncated: UDP callers do ``if len(r) > wire.udp_limit(q): r = wire.truncate(r, limit)``.
        """
        e = self._d.get((view, q.ck))
        if e is None and shared is not None:
            e = self._d.get((shared, q.ck))
            view = shared
        if e is None or (now >= e.due and not self._due(e, view, q, now)):
            self.stats.misses += 1
            return None
        hits = e.hits = e.hits + 1  # also the CLOCK reference bit (see _evict): no reordering on a hit
        if hits == HOT_HITS and self.track_hot:
            self._hot.append(e)
        self.stats.hits += 1
        self.last = e
        hv = q.hv
        h = e.hdrs[hv]
        if h is None:
            h = self._header(e, hv)
        tail = rotate_tail(e) if e.rot else e.tail
        if hv < 4:
            return q.idb + h + q.qname + tail
        return q.idb + h + q.qname + tail + (self._opt_do if q.do else self._opt)

    def raw(self, view: Hashable, ck: bytes) -> RawEntry | None:
        """The entry under (view, ck) as a RawEntry (fresh or expired), without counting a hit."""
        e = self._d.get((view, ck))
        if e is None:
            return None
        return _raw(e)

    def has(self, view: Hashable, q: Query) -> bool:
        """An entry (fresh or expired) exists for q; no stats, no side effects."""
        return (view, q.ck) in self._d

    def render(self, view: Hashable, q: Query) -> bytes | None:
        """The entry `put` just stored, formatted for `q` like a hit, without counting one: the query
        that filled the cache is a miss, and the same formatting path serves it."""
        e = self._d.get((view, q.ck))
        if e is None:
            return None
        h = e.hdrs[q.hv] or self._header(e, q.hv)
        out = q.idb + h + q.qname + e.tail
        return out if q.hv < 4 else out + (self._opt_do if q.do else self._opt)

    # ---------------------------------------------------------------------------------------------

    def _header(self, e: _Entry, hv: int) -> bytes:
        b = e.base
        ar = ((b[8] << 8) | b[9]) + (1 if hv & 4 else 0)
        h = bytes((b[0] | (hv & 1), b[1] | ((hv & 2) << 3))) + b[2:8] + bytes((ar >> 8, ar & 0xFF))
        e.hdrs[hv] = h
        return h

    def _due(self, e: _Entry, view: Hashable, q: Query, now: float) -> bool:
        """Slow part of a hit: expiry, re-aging, prefetch. False if the entry has expired."""
        if now >= e.expires:
            return False
        if now >= e.next_age:
            age = int(now - e.stored)
            e.tail = _age_tail(e.tail0, e.offs, e.ttls, age)
            e.age = age
            e.next_age = e.stored + age + 1
        due = e.next_age if e.next_age < e.expires else e.expires
        if not e.prefetched:
            if now >= e.prefetch_at:
                # counting this hit, which get() adds after we return
                if e.hits + 1 >= self.settings.prefetch_hits and not e.servfail:
                    e.prefetched = True
                    self.stats.prefetches += 1
                    self.prefetch_queue.append((view, q))
                else:
                    due = now  # in the window but not popular yet: look again on every hit
            elif e.prefetch_at < due:
                due = e.prefetch_at
        e.due = due
        return True

    def take_prefetches(self) -> list[tuple[Hashable, Query]]:
        """The (view, query) pairs `get` asked to refresh since the last call."""
        p = self.prefetch_queue
        self.prefetch_queue = []
        return p

    def add_hits(self, e: _Entry, n: int) -> None:
        """`n` answers from entry `e` given elsewhere (the exact-repeat memo): counted as hits, and
        towards the entry's popularity (prefetch, CLOCK, the kernel answer path)."""
        before = e.hits
        e.hits = before + n
        self.stats.hits += n
        if before < HOT_HITS <= before + n and self.track_hot and not e.dead:
            self._hot.append(e)

    def take_hot(self, limit: int | None = None) -> list[tuple[Hashable, bytes, RawEntry]]:
        """(view, ck, entry) of live entries that reached HOT_HITS hits or were stored since they were
        last taken (oldest first, newest state; `limit` at most, the rest stay for the next call).
        Only while `track_hot` is set. The liveness check is made here, at the moment of the take:
        an entry flushed before is never returned."""
        if limit is None or limit >= len(self._hot):
            hot, self._hot = self._hot, []
        else:
            hot, self._hot = self._hot[:limit], self._hot[limit:]
        out: list[tuple[Hashable, bytes, RawEntry]] = []
        seen: set[int] = set()
        for e in hot:
            if e.dead or id(e) in seen:
                continue
            seen.add(id(e))
            out.append((e.key[0], e.key[1], _raw(e)))
        return out

    def kernel_hits(self, view: Hashable, ck: bytes, n: int, now: float) -> bool:
        """`n` answers the kernel gave from its copy of (view, ck): counted as cache hits, added to
        the entry's popularity, and - as a hit in `get` would - a prefetch is queued when the entry
        is popular and in its prefetch window (so a name only the kernel answers is still refreshed
        before it expires). True if a prefetch was queued (the caller starts it)."""
        self.stats.hits += n
        e = self._d.get((view, ck))
        if e is None or n <= 0:
            return False
        e.hits += n
        if e.prefetched or now < e.prefetch_at or now >= e.expires or e.hits < self.settings.prefetch_hits:
            return False
        q = _query_for(e.qname, ck)
        if q is None:
            return False
        e.prefetched = True
        self.stats.prefetches += 1
        self.prefetch_queue.append((view, q))
        return True

    def get_stale(self, view: Hashable, q: Query, now: float) -> bytes | None:
        """For when upstreams fail (RFC 8767): an expired entry, at most `max_stale` s past expiry,
        with every TTL set to `stale_ttl`. A still-fresh entry is returned as by `get`. SERVFAIL
        entries are never served stale."""
        k = (view, q.ck)
        e = self._d.get(k)
        if e is None or e.servfail:
            return None
        if now < e.expires:
            return self.get(view, q, now)
        if now - e.expires > self.settings.max_stale:
            self._remove(k)
            self.stats.flushed += 1
            return None
        st = self.settings.stale_ttl
        tail = _age_tail(e.tail0, e.offs, tuple(st for _ in e.offs), 0)
        e.hits += 1
        self.stats.stale_served += 1
        hv = q.hv
        h = e.hdrs[hv] or self._header(e, hv)
        out = q.idb + h + q.qname + tail
        if hv >= 4:
            out += self._opt_do if q.do else self._opt
        return out

    def put(self, view: Hashable, q: Query, response: bytes, now: float, rotate: bool = True) -> bool:
        """Store `response` (an upstream answer to `q`, any ID) if cacheable; True if stored.

        `rotate`: every A/AAAA RRset of more than one record in the answer section is rotated by one
        record per answer given (round robin, as CoreDNS's loadbalance: clients that take the first
        address spread over all of them). False when the order carries meaning.

        Not cached: malformed, TC set, not a standard-query response, question mismatch, TSIG, an
        extended RCODE, RCODEs other than NOERROR/NXDOMAIN/SERVFAIL, answers to CD=1 queries (they
        may hold data a validating upstream would reject for CD=0 clients), and TTL 0 after clamping.

        TTL: positive answers use the minimum TTL of all RRs (OPT excluded) clamped to
        [min_ttl, max_ttl]; NXDOMAIN / NODATA use min(SOA TTL, SOA MINIMUM) from the authority section
        capped at neg_ttl (neg_ttl_nosoa without SOA); SERVFAIL servfail_ttl. Each RR's TTL is clamped
        the same way (and to the entry TTL for negative / SERVFAIL answers) and ages from there.
        """
        s = self.settings
        st = self.stats
        ql = len(q.qname)
        qend = 12 + ql + 4
        if (
            q.cd
            or len(response) < qend
            or response[2] & 0xFA != 0x80  # QR=1, opcode 0, TC=0
            or response[4:6] != b"\x00\x01"
            or response[12 : 12 + ql].lower() != q.key
            or response[12 + ql : qend]
            != bytes((q.qtype >> 8, q.qtype & 0xFF, q.qclass >> 8, q.qclass & 0xFF))
        ):
            st.uncacheable += 1
            return False
        if len(response) > 512:
            # Relays may come uncompressed (64 A records: 2,263 octets, 1,069 compressed): store them
            # compressed, so they are sized, truncated and rotated as what goes on the wire.
            response = wire.compress(response) or response
        w = wire.walk(response)
        if w is None or w.tsig or w.qend != qend or w.ext_rcode != w.rcode:
            st.uncacheable += 1
            return False
        rcode = w.rcode
        servfail = False
        if rcode == wire.RCODE_SERVFAIL:
            ttl = s.servfail_ttl
            negative = servfail = True
        elif rcode == wire.RCODE_NXDOMAIN or (rcode == wire.RCODE_NOERROR and w.ancount == 0):
            negative = True
            ttl = s.neg_ttl_nosoa if w.neg_ttl is None else min(w.neg_ttl, s.neg_ttl)
            if ttl:
                ttl = min(max(ttl, s.min_ttl), s.max_ttl)
        elif rcode == wire.RCODE_NOERROR:
            negative = False
            ttl = min(max(w.min_ttl or 0, s.min_ttl), s.max_ttl)
        else:
            st.uncacheable += 1
            return False
        if ttl <= 0:
            st.uncacheable += 1
            return False

        # normalise: drop the OPT RR, clear RD/CD, TTLs -> base values
        data = response
        offs = w.ttl_offsets
        if w.opt is not None:
            a, b = w.opt
            cut = b - a
            data = data[:a] + data[b:]
            offs = [o - cut if o > a else o for o in offs]
            ar = w.arcount - 1
            data = data[:10] + bytes((ar >> 8, ar & 0xFF)) + data[12:]
        lo, hi = s.min_ttl, s.max_ttl
        bases = []
        for t in w.ttls:
            t = lo if t < lo else hi if t > hi else t
            if negative and t > ttl:
                t = ttl
            bases.append(t)
        start = 12 + ql
        toffs = tuple(o - start for o in offs)
        tail0 = _age_tail(data[start:], toffs, tuple(bases), 0)

        k = (view, q.ck)
        if k in self._d:
            self._remove(k)
        e = _Entry()
        e.key = k
        e.name = wire.name_to_text(q.key)
        e.base = bytes((data[2] & 0xFE, data[3] & 0xEF)) + data[4:12]
        e.hdrs = [None] * 8
        e.qname = q.key
        e.tail0 = e.tail = tail0
        e.age = 0
        e.next_age = now + 1
        e.offs = toffs
        e.ttls = tuple(bases)
        e.stored = now
        e.expires = now + ttl
        e.prefetch_at = now + ttl * (1.0 - s.prefetch_fraction)
        e.due = min(e.next_age, e.expires, e.prefetch_at)
        e.hits = 0
        e.seen = 0
        e.prefetched = servfail  # never prefetch a SERVFAIL
        e.negative = negative
        e.servfail = servfail
        e.had_opt = w.opt is not None
        e.size = len(tail0) + ql + ENTRY_OVERHEAD
        e.dead = False
        e.rot = _address_runs(data, offs[: w.ancount], qend, start) if rotate and w.ancount > 1 else ()
        e.turn = 0
        self._d[k] = e
        idx = self._names.get(e.name)
        if idx is None:
            self._names[e.name] = {k}
        else:
            idx.add(k)
        st.inserts += 1
        st.entries = len(self._d)
        st.bytes += e.size
        if self.track_hot:
            # A new answer for a key the kernel may hold (a prefetch, a refresh after expiry): the
            # kernel copy is replaced from here (take_hot); a key it does not hold waits to be hot.
            hot = self._hot
            hot.append(e)
            if len(hot) > s.max_entries:  # nobody takes them (standing by): the oldest go untaken
                del hot[: len(hot) // 2]
        self._evict()
        return True

    # ---------------------------------------------------------------------------------------------
    # bounds and removal

    def _evict(self) -> None:
        """Second-chance (CLOCK) approximation of LRU over the insertion-ordered dict.

        A hit only bumps `e.hits`; here an entry hit since it was last looked at gets moved to the
        young end instead of evicted (at most `_CLOCK_SKIPS` per eviction, so one eviction stays
        O(1)). Saves the OrderedDict.move_to_end on every hit (~0.1 us of a ~1.2 us parse+hit)."""
        s = self.settings
        st = self.stats
        d = self._d
        while d and (len(d) > s.max_entries or st.bytes > s.max_bytes):
            for _ in range(_CLOCK_SKIPS):
                k = next(iter(d))
                e = d[k]
                if e.hits == e.seen:
                    break
                e.seen = e.hits
                d.move_to_end(k)
            else:
                k = next(iter(d))
            self._remove(k)
            st.evictions += 1

    def _remove(self, k: _Key) -> None:
        e = self._d.pop(k)
        e.dead = True
        st = self.stats
        st.bytes -= e.size
        st.entries = len(self._d)
        idx = self._names.get(e.name)
        if idx is not None:
            idx.discard(k)
            if not idx:
                del self._names[e.name]

    def flush_names(self, names: Iterable[str]) -> int:
        """Drop every entry (any view, type, class, DO) whose qname is one of `names`.

        Names are FQDN text without the trailing dot, compared case-insensitively (a trailing dot is
        tolerated); ``*.suffix`` stands for every name under suffix (the table reports wildcard
        ServiceEntries that way). O(entries affected), a scan of the cached names for a wildcard.
        Returns how many entries were dropped."""
        names = list(names)
        if self.on_flush is not None:
            self.on_flush(names)
        n = 0
        for name in names:
            nm = name.translate(_ASCII_LOWER)  # DNS case folding is ASCII-only; str.lower() is not
            if nm.endswith("."):
                nm = nm[:-1]
            if nm.startswith("*."):
                tail = nm[1:]
                hit = [k for cached, keys in self._names.items() if cached.endswith(tail) for k in keys]
            else:
                hit = list(self._names.get(nm, ()))
            for k in hit:
                self._remove(k)
                n += 1
        self.stats.flushed += n
        return n

    def clear(self) -> None:
        if self.on_clear is not None:
            self.on_clear()
        for e in self._d.values():
            e.dead = True
        self.stats.flushed += len(self._d)
        self._d.clear()
        self._names.clear()
        self.stats.entries = 0
        self.stats.bytes = 0

    def sweep(self, now: float) -> int:
        """Drop entries more than max_stale past expiry (LRU order is not expiry order, so this scans
        everything: call it rarely, e.g. once a minute). Returns how many were dropped."""
        limit = now - self.settings.max_stale
        dead = [k for k, e in self._d.items() if e.expires < limit or (e.servfail and e.expires <= now)]
        for k in dead:
            self._remove(k)
        self.stats.flushed += len(dead)
        return len(dead)
