"""Failover policy for the upstream servers: which server an attempt goes to, when a server counts as
unhealthy and is probed, when 0x20 is given up for a server, which answers are failures and which
error a failed query ends with. Pure decisions on plain state: no sockets, no clock, no event loop.

* Servers are tried in configured order, healthy ones first; unhealthy ones follow, least recently
  failing first. Sequential attempts cycle through that order (``attempts`` tries in all);
  parallel rounds ask every healthy server in round 1 (all of them when none is) and every server
  in later rounds.
* A server whose last ``unhealthy_after`` attempts all timed out or hit a network error (such as
  ICMP unreachable) is unhealthy until it answers again; those are the servers the prober asks.
* SERVFAIL and REFUSED are failures (the next server may do better); every other rcode is an answer.
* When every attempt failed, the error is the last one that carried an answer (SERVFAIL/REFUSED:
  more informative than a timeout, and relayable by a caller with nothing stale), else the last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from node_agent.dns.consts import Rcode
from node_agent.settings import UpstreamSettings

# Stats keys of ServerStats.failures. A TC answer retried over TCP is counted as truncated_retry
# without being a failure of the attempt.
FAILURE_KINDS = ("timeout", "refused", "servfail", "truncated_retry", "network", "bad_reply")
# UpstreamError.reason values.
REASONS = ("timeout", "refused", "servfail", "overload", "network", "bad-reply")

# Attempt failures that say the server is not reachable (rather than that it answered badly).
_UNREACHABLE = frozenset(("timeout", "network"))
_ANSWER_FAILURES: dict[int, str] = {Rcode.SERVFAIL: "servfail", Rcode.REFUSED: "refused"}


class UpstreamError(Exception):
    """Resolution failed. ``reason`` is one of REASONS; ``response`` holds the last SERVFAIL/REFUSED
    answer when a server gave one (its own ID, like resolve()'s bytes), else None."""

    def __init__(self, reason: str, detail: str = "", response: bytes | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.response = response


class AttemptFailed(Exception):
    """One attempt at one server failed; ``reason`` is one of REASONS. ``response``: the answer, when
    the server gave one (SERVFAIL/REFUSED). ``case_only``: a timeout during which replies came that
    matched the query except for the 0x20 letter case."""

    def __init__(
        self, reason: str, detail: str = "", response: bytes | None = None, *, case_only: bool = False
    ) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.response = response
        self.case_only = case_only


def failure_kind(reason: str) -> str:
    """The FAILURE_KINDS key an attempt failure with this reason is counted under."""
    return reason.replace("-", "_")


def answer_failure(rcode: int) -> str | None:
    """The failure reason for an answer with this (header) rcode, or None when it is an answer."""
    return _ANSWER_FAILURES.get(rcode)


def final_error(errors: Sequence[AttemptFailed]) -> UpstreamError:
    """The error a query ends with after these attempt failures (in the order they happened)."""
    for e in reversed(errors):
        if e.response is not None:
            return UpstreamError(e.reason, str(e), response=e.response)
    last = errors[-1]
    return UpstreamError(last.reason, str(last))


class ServerState:
    """What the policy knows of one server."""

    __slots__ = ("name", "down_streak", "caps_ok")

    def __init__(self, name: str) -> None:
        self.name = name
        self.down_streak = 0  # consecutive timeouts / network errors
        self.caps_ok = True  # False once the server proved not to echo 0x20 case


S = TypeVar("S", bound=ServerState)


class Policy(Generic[S]):
    """Decisions over `servers` (configured order) under `settings`. The transitions return True
    when the server's health or 0x20 standing changed, for the caller to log."""

    def __init__(self, servers: Sequence[S], settings: UpstreamSettings) -> None:
        if not servers:
            raise ValueError("upstream: at least one server is required")
        self.servers = list(servers)
        self._s = settings

    # ---------------------------------------------------------------- health

    def healthy(self, srv: S) -> bool:
        return srv.down_streak < self._s.unhealthy_after

    def health(self) -> dict[str, bool]:
        return {s.name: s.down_streak < self._s.unhealthy_after for s in self.servers}

    def needs_probe(self, srv: S) -> bool:
        """The prober asks this server (it is unhealthy: real queries reach it last)."""
        return srv.down_streak >= self._s.unhealthy_after

    def failed(self, srv: S, reason: str) -> bool:
        """An attempt at `srv` failed with `reason`; True when that made it unhealthy."""
        if reason not in _UNREACHABLE:
            return False
        srv.down_streak += 1
        return srv.down_streak == self._s.unhealthy_after

    def answered(self, srv: S) -> bool:
        """`srv` answered (any rcode); True when it was unhealthy until now."""
        was_down = srv.down_streak >= self._s.unhealthy_after
        srv.down_streak = 0
        return was_down

    # ---------------------------------------------------------------- where attempts go

    def ordered(self) -> list[S]:
        """Healthy servers in configured order, then unhealthy ones, least recently failing first."""
        limit = self._s.unhealthy_after
        healthy = [s for s in self.servers if s.down_streak < limit]
        if len(healthy) == len(self.servers):
            return healthy
        sick = sorted((s for s in self.servers if s.down_streak >= limit), key=lambda s: s.down_streak)
        return healthy + sick

    @property
    def parallel(self) -> bool:
        """Attempts go out in parallel rounds (`round_targets`) rather than one by one (`sequence`)."""
        return self._s.parallel and len(self.servers) > 1

    def sequence(self) -> list[S]:
        """The servers of the ``attempts`` sequential attempts, in order (the order as it is now)."""
        order = self.ordered()
        return [order[i % len(order)] for i in range(self._s.attempts)]

    @property
    def rounds(self) -> int:
        return self._s.attempts

    def round_targets(self, rnd: int) -> list[S]:
        """The servers parallel round `rnd` (0-based) asks: the healthy ones first (all when none is),
        every server after."""
        if rnd == 0:
            limit = self._s.unhealthy_after
            healthy = [s for s in self.servers if s.down_streak < limit]
            if healthy:
                return healthy
        return list(self.servers)

    # ---------------------------------------------------------------- 0x20

    def randomize(self, srv: S) -> bool:
        """Queries to `srv` get 0x20 random letter case (and must see it echoed exactly)."""
        return self._s.randomize_case and srv.caps_ok

    def case_not_echoed(self, srv: S) -> bool:
        """An attempt timed out with only case-mismatched replies: `srv` does not preserve 0x20, so
        it is queried without it from now on. True the first time."""
        if not srv.caps_ok:
            return False
        srv.caps_ok = False
        return True
