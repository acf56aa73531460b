"""kernel/deathwatch.py: a killed agent's sockets leave na_socks as soon as it dies, not once the kernel
has torn it down; a clean stop and a successor's sockets are left alone. Against a real sockmap (root):
the test keeps every socket open itself, so an entry that goes was taken out by the watcher, never
dropped by the kernel as the socket closed."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.kernel import bpflink, deathwatch, features, maps
from node_agent.kernel.features import Features
from node_agent.kernel.loader import Interceptor
from node_agent.kernel.maps import CONST, FakeMaps
from node_agent.settings import InterceptSettings

root = pytest.mark.skipif(os.geteuid() != 0, reason="a sockmap needs root")
UDP4, TCP4 = CONST["NA_SOCK_UDP4"], CONST["NA_SOCK_TCP4"]
BOUND = 10.0  # seconds anything here may take on the slowest machine; the wait ends at the event

# The agent in its own process: registers the socket it was given (its fd) in the pinned sockmap,
# starts the watch, says the watcher's pid and waits to be killed. The watcher checks for its parent
# only every minute: within the tests' bound, only the kernel's wake can have told it.
AGENT = """
import socket, sys, time
from node_agent.kernel import deathwatch, maps
pin = sys.argv[1]
sock = socket.socket(fileno=int(sys.argv[2]))
socks = maps.SockMap.open(pin)
socks.set(maps.sock_kind(sock), sock)
watch = deathwatch.DeathWatch.start(pin, {maps.sock_kind(sock): maps.socket_cookie(sock)}, poll=60)
print(watch.proc.pid, flush=True)
time.sleep(60)
"""


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


@pytest.fixture
def sockmap() -> Iterator[str]:
    """A sockmap of na_socks' shape, pinned on bpffs; its pin path."""
    p = features._Prober(features.kernel_syscall())
    m = p.syscall(features.BPF_MAP_CREATE, struct.pack("<IIIII", features.MAP_TYPE_SOCKMAP, 4, 8,
                                                      CONST["NA_SOCK_MAX"], 0), 0)
    assert m.rc >= 0, os.strerror(m.err)
    pin = f"/sys/fs/bpf/na-deathwatch-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        bpflink.obj_pin(m.rc, pin)
    finally:
        os.close(m.rc)
    try:
        yield pin
    finally:
        os.unlink(pin)


def gone(pid: int) -> bool:
    """Exited (reaped, or a zombie waiting for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_for(what: object, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not what():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {bound} s: {what}"
        time.sleep(0.001)


def start_agent(pin: str, sock: socket.socket) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", AGENT, pin, str(sock.fileno())], pass_fds=[sock.fileno()],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    watcher = int(proc.stdout.readline())
    return proc, watcher


@root
def test_a_killed_agent_s_socket_leaves_na_socks_though_the_socket_stays_open(sockmap: str) -> None:
    sock = udp()
    agent, watcher = start_agent(sockmap, sock)
    socks = maps.SockMap.open(sockmap)
    assert socks is not None
    try:
        time.sleep(0.3)  # the watcher is waiting (were it not yet, it would find the lock dead on arrival)
        assert socks.cookie(UDP4) == maps.socket_cookie(sock) and not gone(watcher)
        agent.kill()
        agent.wait(BOUND)
        wait_for(lambda: socks.cookie(UDP4) is None)
        wait_for(lambda: gone(watcher))
        assert sock.fileno() >= 0  # still open here: only the watcher can have taken it out
    finally:
        socks.close()
        sock.close()


@root
def test_the_watcher_leaves_a_successor_s_socket_alone(sockmap: str) -> None:
    old, new = udp(), udp()
    agent, watcher = start_agent(sockmap, old)
    socks = maps.SockMap.open(sockmap)
    assert socks is not None
    try:
        socks.set(UDP4, new)  # a successor took over
        time.sleep(0.3)
        agent.kill()
        agent.wait(BOUND)
        wait_for(lambda: gone(watcher))
        assert socks.cookie(UDP4) == maps.socket_cookie(new)
    finally:
        socks.close()
        old.close()
        new.close()


@root
def test_a_clean_stop_lets_the_watcher_go_and_touches_nothing(sockmap: str) -> None:
    sock = udp()
    socks = maps.SockMap.open(sockmap)
    assert socks is not None
    try:
        socks.set(UDP4, sock)
        watch = deathwatch.DeathWatch.start(sockmap, {UDP4: maps.socket_cookie(sock)})
        time.sleep(0.3)
        assert watch.proc.poll() is None
        assert watch.stop() == 0
        assert socks.cookie(UDP4) == maps.socket_cookie(sock)
    finally:
        socks.close()
        sock.close()


def test_evict_takes_out_only_the_dead_agent_s_sockets() -> None:
    fake = FakeMaps().socks
    dead, successor = udp(), udp()
    try:
        fake.set(UDP4, dead)
        fake.set(TCP4, successor)
        mine = {UDP4: maps.socket_cookie(dead), TCP4: 12345}
        assert deathwatch.evict(fake, mine) == [UDP4]
        assert fake.cookie(UDP4) is None and fake.cookie(TCP4) == maps.socket_cookie(successor)
    finally:
        dead.close()
        successor.close()


def test_an_agent_that_steers_puts_back_a_socket_someone_took_out() -> None:
    """A dead predecessor's watcher may take out, by its old cookie, the entry our take-over has
    just replaced; the next beat puts ours back (else pods would fail open while we run)."""
    fake = FakeMaps()
    ic = Interceptor(InterceptSettings(), _bpf=fake, _pid=100,
                     features=Features("test", {f.name: True for f in features.FEATURES}))
    ic._socks = fake.socks
    mine = [udp()]
    try:
        ic._sockets = mine
        ic.take_over()
        assert ic.socket_check
        fake.socks.delete(UDP4)
        assert ic.beat()
        assert fake.socks.cookie(UDP4) == maps.socket_cookie(mine[0])
        mine[0].close()  # closed (we are stopping): nothing to put back, and no error
        assert ic.beat()
    finally:
        for s in mine:
            s.close()


def test_no_watch_without_a_kernel_sockmap() -> None:
    """The fake has no pin for a watcher to open: attach starts none (and none is left to stop)."""
    fake = FakeMaps()
    ic = Interceptor(InterceptSettings(), _bpf=fake, _pid=100,
                     features=Features("test", {f.name: True for f in features.FEATURES}))
    ic._socks = fake.socks
    s = udp()
    try:
        ic._sockets = [s]
        ic.take_over()
        ic._start_watch()
        assert ic.socket_check and ic._watch is None
    finally:
        s.close()

