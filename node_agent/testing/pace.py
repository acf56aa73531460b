"""How much slower this machine is than the one the tests' wall-clock bounds were set on, measured
here, now: a bound written as `seconds * pace()` holds on a fast machine as written (the pace is
never below 1) and grows with a slow one (a VM under software emulation, a busy CI day), so it
still catches a defect that makes the same work slower on the same machine, without failing a
healthy run elsewhere.

Two kinds of work slow down differently under emulation (measured under QEMU TCG: bcc's clang
compile 20-40x, Python 3-6x), so there are two paces:

- `compile_pace()`: bcc compiling a trivial program (clang's start-up and bcc's headers, most of
  what compiling bpf/dns_steer.c costs), for bounds that include an agent's start;
- `python_pace()`: a fixed pure-Python workload (dict, string, sort), for bounds on the agent's
  Python work.

Each is the best of a few runs divided by the same figure on the reference machine (the project's
2-core CI machine, Debian 12 on kernel 6.18), and at least 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache

REFERENCE_COMPILE_S = 0.15  # bcc, trivial program: 0.12-0.14 s on the reference machine, both cores busy
REFERENCE_PYTHON_S = 0.05  # _python_work: 0.045-0.06 s there, as busy


def _best(work: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t0)
    return best


def _python_work() -> int:
    d = {f"name{i}.ns{i % 7}.svc.cluster.local": i for i in range(200_000)}
    return len(sorted(d, key=d.__getitem__, reverse=True))


def python_pace(rounds: int = 3) -> float:
    """Measured at each call: call it right after the work a bound is about, so the pace includes
    what else the machine was doing meanwhile."""
    return max(1.0, _best(_python_work, rounds) / REFERENCE_PYTHON_S)


def _compile_work() -> None:
    from bcc import BPF  # late: needs bcc (and root), as the agent's own compile does

    BPF(text=b"int f(void *ctx) { return 0; }").cleanup()


@cache
def compile_pace() -> float:
    """Once per process (a compile costs what it measures); 1 where bcc cannot compile here (then
    the agent cannot either, and fails fast instead of waiting out a bound)."""
    try:
        return max(1.0, _best(_compile_work, 2) / REFERENCE_COMPILE_S)
    except Exception:
        return 1.0


# From start to ready on the reference machine, in two parts that slow down
# differently: bcc's compile and the verifier's loads, and the Python around them (imports, the
# table, binding, attaching). There: 1-2 s in all; in QEMU TCG guests 15-35 s on one host, and
# 180-275 s in a 5.10 guest on a host at python_pace 2.9.
READY_COMPILE_S, READY_PYTHON_S = 5.0, 15.0


def ready_bound() -> float:
    """How long an agent may take to become ready here: 20 s on the reference machine."""
    return READY_COMPILE_S * compile_pace() + READY_PYTHON_S * python_pace()


def slowdown() -> float:
    """How many times an agent's start takes longer here than on the reference machine (at least
    1): for test bounds made mostly of agent starts (a VM under software emulation: 10x or more)."""
    return ready_bound() / (READY_COMPILE_S + READY_PYTHON_S)
