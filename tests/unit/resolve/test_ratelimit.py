"""The per-pod token bucket in front of upstream: a burst, then the rate, per client."""

from __future__ import annotations

from node_agent.resolve.ratelimit import RateLimit


def test_burst_then_refused_then_refilled_at_the_rate() -> None:
    now = [100.0]
    lim = RateLimit(rate=10.0, burst=5, clock=lambda: now[0])
    assert [lim.admit("a") for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.25  # 2.5 tokens back
    assert [lim.admit("a") for _ in range(3)] == [True, True, False]
    now[0] += 60.0  # never more than the burst
    assert sum(lim.admit("a") for _ in range(10)) == 5


def test_clients_have_their_own_buckets() -> None:
    lim = RateLimit(rate=1.0, burst=2, clock=lambda: 0.0)
    assert [lim.admit("a") for _ in range(3)] == [True, True, False]
    assert [lim.admit("b") for _ in range(3)] == [True, True, False]


def test_rate_zero_admits_everything() -> None:
    lim = RateLimit(rate=0.0, burst=0, clock=lambda: 0.0)
    assert all(lim.admit("a") for _ in range(1000))


def test_bucket_table_is_bounded() -> None:
    lim = RateLimit(rate=1.0, burst=1, clock=lambda: 0.0, max_clients=3)
    assert lim.admit("a") and not lim.admit("a")
    for c in "bcde":  # past the bound the table starts again: "a" is a new client
        lim.admit(c)
    assert lim.admit("a")
