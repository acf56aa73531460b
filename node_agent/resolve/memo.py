"""The exact-repeat memo in front of the cache: the same client sending the same query bytes (bar the
ID) within the same second gets the same answer, as long as the cache entry behind it lives.

A repeat costs a slice and a dict lookup instead of parse + view + cache, and is counted in bulk
(`fold`, at scrape time, and before the cache sees a query whose memo line went stale: popularity
decides prefetch). `answer` is the resolver's `answer_fast`: a repeat is answered there with no
further call; anything else goes to the `miss` function, which calls `remember` for answers worth
replaying.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from node_agent.dns.wire import Query
from node_agent.resolve.cache import Cache, _Entry, rotate_tail

MEMO_MAX = 65536  # remembered exact queries (per client); cleared whole when full

MemoKey: TypeAlias = tuple[str, str, bytes]  # (client, transport, query bytes after the ID)
CountKey: TypeAlias = tuple[int, str, int, str]  # what answers are counted by: qtype, transport, rcode, namespace
Miss: TypeAlias = Callable[[bytes, str, str, MemoKey], "bytes | None"]  # (data, client, transport, key)


class Memo:
    def __init__(self, cache: Cache, answers: dict[CountKey, int], miss: Miss, clock: Callable[[], float],
                 limit: int = MEMO_MAX) -> None:
        self._cache = cache
        self._answers = answers  # the resolver's answer counters, which fold adds the repeats to
        self._miss = miss
        self._clock = clock
        self.limit = limit
        # key -> [reply after the ID (for a rotating entry: up to the end of the question), the second
        # it was remembered in, the cache entry, count key, hits not yet counted, (rotating entry: the
        # reply after its records: the OPT)]. A list, not an object: index access is the cheapest read
        # on this path.
        self._lines: dict[MemoKey, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._lines)

    def answer(self, data: bytes, client: str, transport: str) -> bytes | None:
        if type(data) is not bytes:
            data = bytes(data)  # a bytearray (tests, dns/build.py) cannot be a dict key
        key = (client, transport, data[2:])
        m = self._lines.get(key)
        if m is not None:
            now = self._clock()
            e = m[2]
            if int(now) == m[1] and not e.dead and now < e.expires:
                m[4] += 1
                if e.rot:  # the next rotation of the entry's address records between head and OPT
                    return data[:2] + m[0] + rotate_tail(e) + m[5]
                return data[:2] + m[0]
            # Stale: its hits count before the cache sees this query (popularity decides prefetch).
            self._fold_one(m)
            del self._lines[key]
        return self._miss(data, client, transport, key)

    def remember(self, key: MemoKey, reply: bytes, now: float, e: _Entry, count_key: CountKey, q: Query) -> None:
        """Replay `reply` (the cache's answer from entry `e`, counted under `count_key`) for exact
        repeats of `key` within this second. Only for replies that fit any client as they are."""
        lines = self._lines
        if len(lines) >= self.limit:
            self.forget()
        if e.rot:
            # The records rotate per answer: keep the header + question and the OPT, not the records.
            head = 12 + len(q.qname)
            lines[key] = [reply[2:head], int(now), e, count_key, 0, reply[head + len(e.tail):]]
        else:
            lines[key] = [reply[2:], int(now), e, count_key, 0]

    def _fold_one(self, m: list[Any]) -> None:
        n = m[4]
        if n:
            m[4] = 0
            answers = self._answers
            answers[m[3]] = answers.get(m[3], 0) + n
            self._cache.add_hits(m[2], n)  # the cache's hits, the entry's popularity and CLOCK reference

    def fold(self) -> None:
        """Move the repeats' counts into the answer counters, the cache's hits and the entries'."""
        for m in list(self._lines.values()):
            self._fold_one(m)

    def forget(self) -> None:
        """Drop every line, its counts folded first."""
        self.fold()
        self._lines.clear()
