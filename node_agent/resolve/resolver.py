"""What a query means: who asks (their pod's view), the cache, the mesh name table, then upstream.

`answer_fast` is the synchronous hit path the responder tries first for every datagram: raw bytes
in, raw bytes out, no message objects; its front is the exact-repeat memo (resolve/memo.py), then the cache.
`answer` handles the rest: misses, table answers (built in dns/build.py), forwarding, errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from node_agent.dns import build, wire
from node_agent.dns.build import Record
from node_agent.dns.consts import Rcode, Type
from node_agent.dns.names import encode_name
from node_agent.dns.wire import Query
from node_agent.mesh.table import Answer, AnswerKind, NameTable, View
from node_agent.resolve.cache import Cache
from node_agent.resolve.memo import CountKey, Memo, MemoKey
from node_agent.resolve.ratelimit import RateLimit
from node_agent.settings import ResolverSettings
from node_agent.upstream.client import Upstream, UpstreamError

log = logging.getLogger(__name__)

SHARED = "*"  # the cache's view key for forwarded answers that are the same for every view


@dataclass
class ResolverStats:
    """Plain counters; the metrics collector reads them at scrape time (nothing per query here)."""

    # (qtype, proto, rcode, namespace) -> answers; summed per label set by the metrics collector
    answers: dict[CountKey, int] = field(default_factory=dict)
    passthrough_by_namespace: Counter[str] = field(default_factory=Counter)  # unusual packets forwarded as-is
    # Answers the kernel gave from its copies of cache entries (kernel/answerpath.py reads them back):
    # by (qtype, rcode) from the entries' counters, by namespace from the pods'. Always UDP.
    kernel_answers: Counter[tuple[int, int]] = field(default_factory=Counter)
    kernel_by_namespace: Counter[str] = field(default_factory=Counter)

    def by_rcode(self) -> Counter[tuple[str, str, int]]:
        out: Counter[tuple[str, str, int]] = Counter()
        for (qtype, proto, rcode, _), n in list(self.answers.items()):
            out[(build.qtype_name(qtype), proto, rcode)] += n
        for (qtype, rcode), n in list(self.kernel_answers.items()):
            out[(build.qtype_name(qtype), "udp", rcode)] += n
        return out

    def by_namespace(self) -> Counter[str]:
        out: Counter[str] = Counter(self.passthrough_by_namespace)
        for (_, _, _, ns), n in list(self.answers.items()):
            out[ns] += n
        out.update(self.kernel_by_namespace)
        return out
    refused: int = 0
    formerr: int = 0
    dropped: int = 0
    table_answers: int = 0
    search_answers: int = 0  # server-side search-path answers (CNAME to the real name)
    forwarded: int = 0
    upstream_failures: int = 0
    stale_answers: int = 0
    truncated: int = 0
    rate_limited: int = 0  # upstream-bound queries refused by the per-pod rate limit


class Resolver:
    def __init__(
        self,
        table: NameTable,
        cache: Cache,
        upstream: Upstream,
        settings: ResolverSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.cache = cache
        self.upstream = upstream
        self.settings = s = settings or ResolverSettings()
        self._limit = RateLimit(s.upstream_qps_per_pod, s.upstream_burst_per_pod, clock)
        self._aliases: dict[str, set[str]] = {}  # search-path target -> names answered with it
        self.stats = ResolverStats()
        self.clock = clock
        self._prefetching: set[asyncio.Task[None]] = set()
        self.memo = Memo(cache, self.stats.answers, self._answer_cached, clock)
        # The hot path is the memo's own method: an exact repeat costs no call beyond this one.
        self.answer_fast: Callable[[bytes, str, str], bytes | None] = self.memo.answer

    # ---- hot path ---------------------------------------------------------------------------

    def _answer_cached(self, data: bytes, client: str, transport: str, memo_key: MemoKey) -> bytes | None:
        """answer_fast past the memo: the cache's answer for this client's view, or None."""
        q = wire.parse_query(data)
        if type(q) is not Query:
            return None
        view = self.table.view_for(client)
        if view is None:
            return None
        now = self.clock()
        # Forwarded answers that no view could answer differently live under one SHARED key, so an
        # external name costs kube-dns one query per node, not one per namespace.
        reply = self.cache.get(view, q, now, SHARED)
        if reply is None:
            return None
        if self.cache.prefetch_queue:
            self._start_prefetches()
        # _count, inline: this runs for every hit that is not an exact repeat.
        answers = self.stats.answers
        count_key = (q.qtype, transport, reply[3] & 0x0F, view.namespace)
        answers[count_key] = answers.get(count_key, 0) + 1
        e = self.cache.last
        if len(reply) <= 512 and e is not None:  # fits any client as it is: worth remembering
            self.memo.remember(memo_key, reply, now, e, count_key, q)
            return reply
        if transport == "udp":
            return self._fit(q, reply)
        return reply

    def fold(self) -> None:
        """Move the memo's hit counts into the stats (the metrics collector calls this per scrape)."""
        self.memo.fold()

    def kernel_answered(self, view: Hashable, ck: bytes, rcode: int, n: int, now: float) -> None:
        """The kernel answered `n` queries from its copy of the entry (view, ck): they count as the
        cache hits and answers they are, and towards the entry's popularity, so a name only the
        kernel answers is prefetched like one userspace answers."""
        self.stats.kernel_answers[(int.from_bytes(ck[-5:-3], "big"), rcode)] += n
        if self.cache.kernel_hits(view, ck, n, now):
            self._start_prefetches()

    def kernel_answered_namespace(self, namespace: str, n: int) -> None:
        self.stats.kernel_by_namespace[namespace] += n

    def forget_clients(self) -> None:
        """A pod came or went: answers remembered per client address may belong to another view now."""
        self.memo.forget()

    def _fit(self, q: Query, reply: bytes) -> bytes:
        """UDP answers larger than the client takes keep the records that fit, with TC (clients that
        retry over TCP get the rest; musl, which never does, gets what fits, as from kube-dns)."""
        limit = wire.udp_limit(q)
        if len(reply) <= limit:
            return reply
        out = wire.truncate(reply, limit)
        if out[2] & 0x02:
            self.stats.truncated += 1
        return out

    def _count(self, q: Query, view: View, client: str, transport: str, reply: bytes) -> CountKey:
        # One dict update per answer; names and namespaces are worked out at scrape time.
        answers = self.stats.answers
        k = (q.qtype, transport, reply[3] & 0x0F, view.namespace)
        answers[k] = answers.get(k, 0) + 1
        return k

    # ---- everything else ----------------------------------------------------------------------

    async def answer(self, data: bytes, client: str, transport: str) -> bytes | None:
        q = wire.parse_query(data)
        if q is wire.DROP:
            self.stats.dropped += 1
            return None
        view = self.table.view_for(client)
        if view is None:
            if not self.table.synced:
                # Until the first full sync we do not know this node's pods: pass everything through
                # rather than refuse a pod the sources have not told us about yet.
                return await self._passthrough(data)
            # Only this node's pods (and the node) get answers: no open resolver, no amplifier.
            self.stats.refused += 1
            return wire.refused(data, q if type(q) is Query else None)
        if q is wire.FORMERR:
            self.stats.formerr += 1
            return wire.formerr(data)
        if type(q) is not Query:
            return await self._unusual(data, view, client)
        reply = await self._resolve(q, data, view, client)
        self._count(q, view, client, transport, reply)
        if transport == "udp" and len(reply) > 512:
            return self._fit(q, reply)
        return reply

    async def _resolve(self, q: Query, data: bytes, view: View, client: str) -> bytes:
        """A miss: the responder tried `answer_fast` (the cache) before calling `answer`."""
        now = self.clock()
        qname = wire.name_to_text(q.qname)
        ans = self._table_answer(view, qname, q)
        if ans is None:
            return await self._forward(q, data, view, qname, client)
        self.stats.table_answers += 1
        if ans.kind is AnswerKind.SEARCH_CNAME:
            self.stats.search_answers += 1
        response = await self._build(q, data, view, qname, ans)
        if _upstream_half_failed(ans, response):
            # Serve the expired answer stale (RFC 8767), as _forward does, rather than SERVFAIL a
            # name the pod had resolved.
            stale = self.cache.get_stale(view, q, self.clock())
            if stale is not None:
                self.stats.stale_answers += 1
                return stale
        return self._store_and_format(q, view, response, now, rotate=not ans.ordered)

    def _table_answer(self, view: View, qname: str, q: Query) -> Answer | None:
        """The table's answer for q in this view, or None when it goes upstream."""
        ans = self.table.lookup(view, qname, q.qtype) if q.qclass == wire.CLASS_IN else None
        return None if ans is None or ans.kind is AnswerKind.FORWARD else ans

    async def _forward(self, q: Query, data: bytes, view: View, qname: str, client: str) -> bytes:
        # The cache key: SHARED when every view would forward this name too (see answer_fast).
        key: Hashable = SHARED if self.table.view_independent(qname) else view
        if not self._limit.admit(client):
            # Over its upstream budget: a stale answer if we have one, else REFUSED (as CoreDNS's
            # ratelimit does), never a queue that grows.
            self.stats.rate_limited += 1
            stale = self.cache.get_stale(key, q, self.clock())
            return stale if stale is not None else (wire.refused(data, q) or b"")
        self.stats.forwarded += 1
        task = asyncio.ensure_future(self.upstream.resolve(qname, q.qtype, q.qclass, do=q.do, cd=q.cd))
        wait = self.settings.stale_answer_timeout
        if wait > 0 and self.cache.has(key, q):
            # RFC 8767 stale-answer-client-timeout: a slow upstream must not hold up a name we have
            # an expired answer for. The query goes on and refreshes the cache when it lands.
            done, _ = await asyncio.wait({task}, timeout=wait)
            if not done:
                stale = self.cache.get_stale(key, q, self.clock())
                if stale is not None:
                    self.stats.stale_answers += 1
                    task.add_done_callback(lambda t: self._late(t, key, q))
                    return stale
        try:
            response = await task
        except (UpstreamError, ValueError) as e:
            self.stats.upstream_failures += 1
            stale = self.cache.get_stale(key, q, self.clock())
            if stale is not None:
                self.stats.stale_answers += 1
                return stale
            log.debug("upstream failed for %s: %s", qname, e)
            failed = getattr(e, "response", None)
            if failed:
                return self._store_and_format(q, key, failed, self.clock())
            return wire.servfail(data, q) or b""
        return self._store_and_format(q, key, response, self.clock())

    def _late(self, task: asyncio.Future[bytes], view: Hashable, q: Query) -> None:
        if not task.cancelled() and task.exception() is None:
            self.cache.put(view, q, task.result(), self.clock())

    def _store_and_format(self, q: Query, view: Hashable, response: bytes, now: float, rotate: bool = True) -> bytes:
        """Cache it, then let the cache format it for this client (ID, spelling, EDNS, TTLs): one
        formatting path for hits and misses."""
        if self.cache.put(view, q, response, now, rotate=rotate):
            formatted = self.cache.render(view, q)
            if formatted is not None:
                return formatted
        return _format_uncached(q, response)

    async def _build(self, q: Query, data: bytes, view: View, qname: str, ans: Answer) -> bytes:
        """A table answer as wire bytes (dns/build.py, the slow builder: only misses and refreshes get here)."""
        if ans.kind is AnswerKind.SEARCH_CNAME:
            self._alias(qname, ans, view)
        answers: list[Record] = list(ans.records)
        authority: list[Record] = []
        rcode: int = Rcode.NOERROR
        aa = ans.authoritative
        if ans.kind is AnswerKind.NXDOMAIN:
            rcode = Rcode.NXDOMAIN
        if ans.kind is AnswerKind.NXDOMAIN or (ans.kind is AnswerKind.RECORDS and not ans.records):
            # RFC 2308: an SOA in authority says how long the client may cache the negative answer.
            authority.append(self.table.soa(qname))
        if ans.kind is AnswerKind.SEARCH_CNAME and ans.target:
            # Server-side search path to an external name: the real name's records (from the shared
            # cache, else upstream, then cached for every view) after our CNAME, with its RCODE.
            response = await self._external(ans.target, q)
            if response is None:
                self.stats.upstream_failures += 1
                rcode = Rcode.SERVFAIL  # what _upstream_half_failed looks for
            else:
                external = build.parse_sections(response)
                rcode, aa = external.rcode, False
                answers += external.answer
                authority += external.authority
        return build.table_reply(data, answers, authority, ans.additional, rcode, aa)

    async def _external(self, target: str, q: Query) -> bytes | None:
        tq = wire.parse_query(_question(target, q.qtype, q.qclass, q.do))
        shared = type(tq) is Query and self.table.view_independent(target)
        if shared:
            hit = self.cache.get(SHARED, tq, self.clock())  # type: ignore[arg-type]
            if hit is not None:
                return hit
        try:
            response = await self.upstream.resolve(target, q.qtype, q.qclass, do=q.do)
        except (UpstreamError, ValueError):
            return None
        if shared:
            self.cache.put(SHARED, tq, response, self.clock())  # type: ignore[arg-type]
        return response

    async def _unusual(self, data: bytes, view: View, client: str) -> bytes | None:
        """Legal but odd packets (other opcodes, EDNS versions, TSIG ...): answer what we must,
        forward the rest unchanged."""
        bad = wire.badvers(data)
        if bad is not None:
            return bad
        shape = build.request_shape(data)
        if shape is None:
            self.stats.formerr += 1
            return wire.formerr(data)
        opcode, questions = shape
        if opcode != 0:
            return wire.notimp(data)
        if questions != 1:
            self.stats.formerr += 1
            return wire.formerr(data)
        self.stats.passthrough_by_namespace[view.namespace] += 1
        return await self._passthrough(data)

    async def _passthrough(self, data: bytes) -> bytes | None:
        self.stats.forwarded += 1
        try:
            return await self.upstream.forward_raw(data)
        except (UpstreamError, ValueError):
            self.stats.upstream_failures += 1
            return wire.servfail(data)

    # ---- prefetch -------------------------------------------------------------------------------

    def _start_prefetches(self) -> None:
        for view, q in self.cache.take_prefetches():
            task = asyncio.ensure_future(self._prefetch(view, q))
            self._prefetching.add(task)
            task.add_done_callback(self._prefetching.discard)

    async def _prefetch(self, key: Hashable, q: Query) -> None:
        """Refresh a popular entry before it expires with what a miss would produce now: a table
        answer from the table (never kube-dns's view of a mesh name), a forwarded one from upstream.
        `key` is the cache key the entry lives under: a View, or SHARED (forwarded for every view).
        A failed refresh stores nothing: the entry keeps serving until it expires."""
        qname = wire.name_to_text(q.qname)
        if isinstance(key, View):
            ans = self._table_answer(key, qname, q)
            if ans is not None:
                now = self.clock()
                response = await self._build(q, _packet(q), key, qname, ans)
                if not _upstream_half_failed(ans, response):
                    self.cache.put(key, q, response, now, rotate=not ans.ordered)
                return
        try:
            response = await self.upstream.resolve(qname, q.qtype, q.qclass, do=q.do, cd=q.cd)
        except (UpstreamError, ValueError):
            return
        self.cache.put(key, q, response, self.clock())

    def _alias(self, qname: str, ans: Answer, view: View) -> None:
        """A search-path answer for `qname` depends on its target and on every search candidate it
        skipped past (a Service created under one of those names must win from now on): file it under
        all of them, so a table change to any flushes it."""
        target = ans.target or next((build.target(rr) for rr in ans.records if rr.rtype == Type.CNAME), "")
        names = {target} if target else set()
        suffix = next((d for d in view.searches if qname.endswith("." + d)), None)
        if suffix is not None:
            base = qname[: -len(suffix) - 1]
            later = view.searches[view.searches.index(suffix) + 1:]
            names.update(f"{base}.{d}" for d in later)
        if len(self._aliases) > 100_000:  # bounded: only a flush's precision depends on it
            self._aliases.clear()
        for name in names:
            self._aliases.setdefault(name, set()).add(qname)

    def flush(self, names: set[str]) -> None:
        """The name table changed these names: cached answers for them are wrong now, and so are
        search-path answers that point at them."""
        if names:
            aliases = {a for n in names for a in self._aliases.pop(n, ())}
            self.cache.flush_names(names | aliases)


def _question(name: str, qtype: int, qclass: int, do: bool) -> bytes:
    """A query packet for `name`, to key the cache with (never sent)."""
    try:
        qname = encode_name(name)
    except ValueError:
        return b""
    opt = wire.opt_rr(wire.DEFAULT_PAYLOAD, do) if do else b""
    return (b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00" + (b"\x00\x01" if opt else b"\x00\x00") + qname
            + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big") + opt)


def _upstream_half_failed(ans: Answer, response: bytes) -> bool:
    """A search-path answer whose external half could not be fetched (_build sets SERVFAIL only
    then)."""
    return ans.kind is AnswerKind.SEARCH_CNAME and response[3] & 0x0F == wire.RCODE_SERVFAIL


def _packet(q: Query) -> bytes:
    """The query packet q was parsed from (ID, RD/CD, question in its spelling, OPT), for the code
    paths that build answers from a request: a prefetch has only the Query."""
    flags = bytes((q.rd, 0x10 if q.cd else 0))
    if q.edns is None:
        return q.idb + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + q.qname + q.ck[len(q.key):-1]
    return (q.idb + flags + b"\x00\x01\x00\x00\x00\x00\x00\x01" + q.qname + q.ck[len(q.key):-1]
            + wire.opt_rr(q.edns.payload, q.do))


def _format_uncached(q: Query, response: bytes) -> bytes:
    """An answer the cache would not keep, fitted to the client: its ID, its spelling, and an OPT RR
    only if it sent one."""
    if len(response) < 12:
        return response
    head = q.idb + response[2:12]
    body = response[12:]
    if response[12 : 12 + len(q.qname)].lower() == q.key:
        body = q.qname + response[12 + len(q.qname) :]
    out = head + body
    w = wire.walk(out)
    if w is None:
        return out
    if q.edns is None and w.opt is not None:
        start, end = w.opt
        ar = w.arcount - 1
        out = out[:10] + bytes((ar >> 8, ar & 0xFF)) + out[12:start] + out[end:]
    return out
