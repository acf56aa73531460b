"""The upstream client's counters: plain ints and floats, read by a collector at scrape time
(nothing here imports prometheus)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from node_agent.upstream.policy import FAILURE_KINDS

# Fixed latency bucket upper bounds in seconds (Prometheus "le" semantics), 100 us .. 5 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


@dataclass
class ServerStats:
    requests: int = 0  # attempts sent to this server (a TC->TCP retry is part of the same attempt)
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))
    # Non-cumulative counts per LATENCY_BUCKETS bound, plus a last +Inf slot; see cumulative_buckets().
    # Only attempts that got an answer (any rcode) are observed: timeouts would just pile up at timeout.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    inflight: int = 0  # gauge: attempts to this server currently waiting
    ignored_replies: int = 0  # datagrams dropped: wrong ID, wrong question, garbage
    case_mismatch: int = 0  # replies whose question matched only case-insensitively under 0x20
    tcp_connections: int = 0  # TCP connections opened to this server (kept open and reused)

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, the last bound being +Inf, as Prometheus wants."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.latency_counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass
class UpstreamStats:
    servers: dict[str, ServerStats] = field(default_factory=dict)  # keyed like Upstream.health()
    inflight: int = 0  # gauge: distinct upstream queries in flight (coalesced waiters not counted)
    coalesced: int = 0  # resolve() calls that joined an identical query already in flight
    overload: int = 0  # calls rejected by max_inflight
