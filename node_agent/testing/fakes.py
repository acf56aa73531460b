"""Stand-ins for the BPF maps' readers, for building the kernel-side metric collectors without a kernel
(they satisfy app.metrics.KernelCounters, VipCounters and KernelAnswerState)."""

from __future__ import annotations

from dataclasses import dataclass, field

from node_agent.kernel.answerpath import AttachInfo
from node_agent.kernel.vipmap import VipStats


@dataclass
class FakePod:
    """One entry of the BPF pod map (what the collector reads of it)."""

    steered: int = 0
    failopen: int = 0
    opt_out: bool = False


@dataclass
class FakeKernel:
    """The pod map (cgroup id -> entry) and the event counters, as Interceptor.pods() / stats() read them."""

    pod_map: dict[int, FakePod] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # event name -> count (kernel.loader.STAT_NAMES)
    error: Exception | None = None  # raised by every read, as a map read that fails

    def pod(self, cgroup_id: int, steered: int = 0, failopen: int = 0, opt_out: bool = False) -> FakeKernel:
        self.pod_map[cgroup_id] = FakePod(steered, failopen, opt_out)
        return self

    def pods(self) -> dict[int, FakePod]:
        if self.error is not None:
            raise self.error
        return dict(self.pod_map)

    def stats(self) -> dict[str, int]:
        if self.error is not None:
            raise self.error
        return dict(self.events)


@dataclass
class FakeVips:
    """VIP translation counters by host, as VipMap.counters() reads them, and VipMap's stats."""

    by_host: dict[str, tuple[int, int]] = field(default_factory=dict)  # host -> (connections, no backend)
    stats: VipStats = field(default_factory=VipStats)

    def counters(self) -> dict[str, tuple[int, int]]:
        return dict(self.by_host)


@dataclass
class FakeAnswerPath:
    """The kernel answer path (kernel.answerpath.KernelAnswers) as its metric collector reads it."""

    active: bool = True
    error: str = ""  # why it is off
    entries: int = 16384  # the answer map's capacity
    held: int = 0
    points: tuple[AttachInfo, ...] = ()
    pending: tuple[tuple[str, str], ...] = ()  # (pod ip, why not attached)
    counters: dict[str, int] = field(default_factory=dict)  # the program's verdicts

    def events(self) -> dict[str, int]:
        return dict(self.counters)
