"""The per-pod budget for upstream-bound queries: a token bucket per client address, so one pod's
random-name flood cannot take kube-dns down for everyone (cache hits and table answers are free)."""

from __future__ import annotations

from collections.abc import Callable

MAX_CLIENTS = 65536  # buckets kept; only this node's pods get here, but the bound holds regardless


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at


class RateLimit:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float], max_clients: int = MAX_CLIENTS) -> None:
        self.rate = rate  # tokens per second; 0 or less: no limit
        self.burst = float(burst)  # a new client's tokens, and the most a bucket holds
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, client: str) -> bool:
        """Take a token from the client's bucket: False when it has none left."""
        rate = self.rate
        if rate <= 0:
            return True
        now = self._clock()
        b = self._buckets.get(client)
        if b is None:
            if len(self._buckets) > self._max_clients:
                self._buckets.clear()
            b = self._buckets[client] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True
