"""Loads of DNS queries from pods, for the end-to-end tests that count who answered each query across
an event (a hand-over, a kill): whoload.py in each pod, until the test stops it. The mesh's names,
so each answer names its server: the agent answers them with its VIPs (240.240.0.0/16), kube-dns with
the public addresses of its zone."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_agent.testing.pace import slowdown
from node_agent.testing.simnode import DEFAULT_ZONE, KUBE_DNS, SimNode
from tests.e2e import whoload

WHOLOAD = str(Path(__file__).with_name("whoload.py"))
# ServiceEntry hosts of the demo mesh.
NAMES = ("istio.io", "api.example.com")
KUBE_DNS_ANSWER = {name: dict(DEFAULT_ZONE)[name] for name in NAMES}
PODS = ("client", "other")
# Seconds a load runs at most when the test does not stop it first, on the reference machine; it grows
# as an agent start does here (the events a load spans are mostly agent starts: three in the rolling
# replacement, 60-100 s in all on a VM under software emulation).
LOAD_BOUND = 120.0


@dataclass(frozen=True)
class Query:
    proto: str
    name: str
    sent: float  # time.monotonic() at the connect
    done: float | None
    outcome: str
    answer: str
    pod: str

    @property
    def who(self) -> str:
        """agent, kube-dns, lost (no answer), or the unexpected answer itself."""
        if self.outcome != "ok":
            return "lost"
        if self.answer == KUBE_DNS_ANSWER[self.name]:
            return "kube-dns"
        return "agent" if self.answer.startswith("240.240.") else f"unexpected {self.answer}"


class Load:
    """whoload.py in each pod at once, udp + tcp queries per second per pod, until stop() (at most
    LOAD_BOUND s, grown with an agent start here): the test's events set how long it runs, and stop()
    fails if the load ran out before them. On a machine `pace` times slower than the reference the
    rates are divided by it (the same load in slow motion): kube-dns is a dnsmasq that forks for
    every TCP query, and under emulation the forks starve its UDP loop at full rate."""

    def __init__(self, node: SimNode, pace: float, udp: int = 150, tcp: int = 50, timeout: float = 1.0,
                 pods: Sequence[str] = PODS) -> None:
        self.timeout, self.pace = timeout, pace
        udp, tcp = max(1, round(udp / pace)), max(1, round(tcp / pace))
        self.bound = LOAD_BOUND * slowdown()
        self.planned = {"udp": int(udp * self.bound), "tcp": int(tcp * self.bound)}  # as whoload counts
        self.procs = {pod: node.pod(pod).popen("python3", WHOLOAD, KUBE_DNS, str(udp), str(tcp), str(self.bound),
                                               ",".join(NAMES), str(timeout),
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                      for pod in pods}
        for proc in self.procs.values():
            whoload.started(proc)

    def stop(self) -> list[Query]:
        """No new queries; the ones in flight end (answer or timeout); every query, by send time."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)  # `ip netns exec` execs: this is whoload itself
        out: list[Query] = []
        for pod, proc in self.procs.items():
            stdout, stderr = proc.communicate(timeout=self.timeout + 30)
            assert proc.returncode == 0, stderr
            records: Any = whoload.result(stdout)["queries"]
            queries = [Query(proto, name, sent, done, outcome, answer, pod)
                       for proto, name, sent, done, outcome, answer in records]
            sent = Counter(q.proto for q in queries)
            # A load that sent all it planned stopped before the test's events ended: what came after
            # them went unloaded.
            assert all(sent[p] < n for p, n in self.planned.items()), \
                f"{pod}'s load ran out ({dict(sent)} of {self.planned} in {self.bound:.0f} s) before stop()"
            out += queries
        return sorted(out, key=lambda q: q.sent)


def tally(queries: Sequence[Query]) -> dict[str, int]:
    return dict(Counter(f"{q.proto} {q.who}" for q in queries))
