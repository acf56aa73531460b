"""A watcher process that takes a killed agent's sockets out of na_socks before the kernel does.

Why. The steering programs fail pods open once no responder socket is left in na_socks, and the
kernel drops a socket from it as the socket closes. A killed process's files close only after the
kernel has torn its memory down (do_exit: exit_mm, then exit_files), which takes about 0.1 ms per MB
of the agent's memory: 8-10 ms for a freshly started agent, more for one with a full cache. Queries
pods send meanwhile still go to the dead agent's sockets and are lost.

How. Something the kernel does for a dying thread before it tears the memory down is wake the waiters
of the robust futexes that thread held (exit_mm_release, at the start of exit_mm; on every kernel
the agent supports). So a thread of the agent holds a robust, process-shared mutex in a memfd shared
with a small watcher process (`python -m node_agent.kernel.deathwatch`), which waits for it:
- the lock comes back EOWNERDEAD: the agent is dying. The watcher removes from na_socks the entries
  that still hold the agent's own sockets (by cookie: a successor's are not touched), and exits;
- the lock is granted: the agent stopped cleanly (`DeathWatch.stop`); the watcher exits, touching
  nothing (a stopping agent hands over or fails open itself, and drains what reaches its sockets);
- every second meanwhile it checks the agent is still its parent, so it never outlives one whose
  exit it missed.
The watcher only ever removes entries whose sockets are closing anyway: without it (or if it is
killed) pods fail open as before, when the kernel closes the sockets.
"""

from __future__ import annotations

import ctypes as ct
import errno
import mmap
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import node_agent
from node_agent.kernel.maps import SockMap, SockTable

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(node_agent.__file__)))

SHM_SIZE = 4096
MUTEX_SIZE = 128  # >= sizeof(pthread_mutex_t) on every libc and architecture (40 or 48 bytes)
ATTR_SIZE = 16  # >= sizeof(pthread_mutexattr_t) (4 or 8)
PTHREAD_PROCESS_SHARED = 1
PTHREAD_MUTEX_ROBUST = 1
POLL_S = 1.0  # how often the watcher checks that its agent is still there


def _libc() -> ct.CDLL:
    libc = ct.CDLL(None, use_errno=True)
    for name in ("pthread_mutexattr_init", "pthread_mutexattr_setpshared", "pthread_mutexattr_setrobust",
                 "pthread_mutex_init", "pthread_mutex_lock", "pthread_mutex_timedlock", "pthread_mutex_unlock"):
        getattr(libc, name).restype = ct.c_int  # AttributeError where the libc has no robust mutexes
    return libc


class _Timespec(ct.Structure):
    _fields_ = [("tv_sec", ct.c_long), ("tv_nsec", ct.c_long)]


class _Mutex:
    """The robust, process-shared mutex at the start of a shared mapping of a memfd."""

    def __init__(self, fd: int) -> None:
        self.libc = _libc()
        self.shm = mmap.mmap(fd, SHM_SIZE)  # MAP_SHARED: the same memory in the agent and the watcher
        self.cell = (ct.c_char * MUTEX_SIZE).from_buffer(self.shm)

    def init(self) -> None:
        attr = ct.create_string_buffer(ATTR_SIZE)
        for call, *args in ((self.libc.pthread_mutexattr_init, attr),
                            (self.libc.pthread_mutexattr_setpshared, attr, PTHREAD_PROCESS_SHARED),
                            (self.libc.pthread_mutexattr_setrobust, attr, PTHREAD_MUTEX_ROBUST),
                            (self.libc.pthread_mutex_init, self.cell, attr)):
            rc = call(*args)
            if rc:
                raise OSError(rc, f"{call.__name__}: {os.strerror(rc)}")

    def lock(self) -> int:
        return int(self.libc.pthread_mutex_lock(self.cell))

    def timedlock(self, seconds: float) -> int:
        """0, EOWNERDEAD (we hold it now; its owner died) or ETIMEDOUT."""
        deadline = time.time() + seconds  # the timeout is absolute, on CLOCK_REALTIME
        ts = _Timespec(int(deadline), int((deadline % 1) * 1e9))
        return int(self.libc.pthread_mutex_timedlock(self.cell, ct.byref(ts)))

    def unlock(self) -> int:
        return int(self.libc.pthread_mutex_unlock(self.cell))

    def close(self) -> None:
        del self.cell  # the mapping cannot close while a ctypes view of it lives
        self.shm.close()


@dataclass
class DeathWatch:
    """The agent's side: a thread holding the mutex for as long as the agent runs, and the watcher."""

    proc: subprocess.Popen[bytes]
    _mutex: _Mutex
    _release: threading.Event
    _holder: threading.Thread

    @classmethod
    def start(cls, socks_pin: str, mine: dict[int, int], poll: float = POLL_S) -> DeathWatch:
        """Watch this process for the responder sockets `mine` (na_socks kind -> cookie) in the
        na_socks pinned at `socks_pin`; `poll`: how often the watcher checks we are still its parent.
        Raises OSError where it cannot (no robust mutexes, no memfd, no python to run the watcher)."""
        fd = os.memfd_create("node-agent-deathwatch", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, SHM_SIZE)
            try:
                mutex = _Mutex(fd)
                mutex.init()
            except AttributeError as e:
                raise OSError(errno.ENOSYS, f"this libc has no robust mutexes ({e})") from e
            locked, release = threading.Event(), threading.Event()
            # A thread of its own holds the lock: it lives exactly as long as the process (a caller's
            # thread may end sooner, and its end would read as the agent's death).
            holder = threading.Thread(target=_hold, args=(mutex, locked, release), name="deathwatch", daemon=True)
            holder.start()
            locked.wait()
            if release.is_set():
                raise OSError(errno.EINVAL, "could not take the deathwatch lock")
            args = [str(fd), str(os.getpid()), socks_pin, str(poll), *(f"{k}:{c}" for k, c in sorted(mine.items()))]
            env = dict(os.environ)  # the watcher imports this package from where the agent has it
            env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])])
            try:
                proc = subprocess.Popen([sys.executable, "-m", __name__, *args], pass_fds=[fd], env=env,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError:
                release.set()
                holder.join()
                raise
            return cls(proc, mutex, release, holder)
        finally:
            os.close(fd)  # the mapping and the watcher keep the memory

    def stop(self, timeout: float = 1.0) -> int | None:
        """A clean stop: the watcher is let go without touching na_socks. Its exit code (non-zero:
        it had failed), None if it had not exited within `timeout` (it is killed then)."""
        self._release.set()
        self._holder.join()
        try:
            rc: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self._mutex.close()
        return rc


def _hold(mutex: _Mutex, locked: threading.Event, release: threading.Event) -> None:
    # Real-time, like the watcher: the robust-futex wake happens in this thread's own exit, which a
    # busy machine would otherwise schedule late (47 ms after a kill -9 at load 5 on 2 cores). It
    # only ever sleeps, so the priority costs nothing while the agent lives.
    _realtime(True)
    if mutex.lock() != 0:
        release.set()
        locked.set()
        return
    locked.set()
    release.wait()
    mutex.unlock()


# ---- the watcher --------------------------------------------------------------------------------


def evict(socks: SockTable, mine: dict[int, int]) -> list[int]:
    """Remove from na_socks the kinds that still hold the dead agent's sockets; the kinds removed."""
    gone = []
    for kind, cookie in mine.items():
        if socks.cookie(kind) == cookie:
            socks.delete(kind)
            gone.append(kind)
    return gone


def _realtime(on: bool = True) -> None:
    """Run the moment we are woken: the agent's death is also a burst of work for the kernel (its
    teardown) on a machine that may be busy: on 2 busy cores a plain process was woken 8-12 ms late
    in 3 runs of 8 (as late as the kernel's own close), a real-time one 0.2-1.0 ms after the kill
    in 16 of 16. Waiting, it runs well under a millisecond a second, so priority 1 takes nothing
    from anyone; after the eviction it drops back (its message and exit take milliseconds that must
    not come before the pods'). Without CAP_SYS_NICE it stays a plain process."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO if on else os.SCHED_OTHER, os.sched_param(1 if on else 0))
    except OSError:
        pass


def watch(fd: int, agent: int, socks_pin: str, poll: float, mine: dict[int, int]) -> int:
    """The watcher: everything it needs is imported and opened before the wait."""
    mutex = _Mutex(fd)
    os.close(fd)
    socks = SockMap.open(socks_pin)
    if socks is None:
        print(f"node-agent deathwatch: no na_socks at {socks_pin}", file=sys.stderr)
        return 1
    _realtime(True)
    for kind in mine:  # loads libbpf and checks the map answers, before it counts
        socks.cookie(kind)
    while True:
        rc = mutex.timedlock(poll)
        if rc == 0:  # let go: a clean stop
            mutex.unlock()
            return 0
        if rc == errno.EOWNERDEAD or (rc == errno.ETIMEDOUT and os.getppid() != agent):
            gone = evict(socks, mine)
            _realtime(False)
            print(f"node-agent deathwatch: agent pid {agent} died; {len(gone)} of its sockets taken out of "
                  "na_socks (pods go to kube-dns)", file=sys.stderr, flush=True)
            return 0
        if rc != errno.ETIMEDOUT:
            print(f"node-agent deathwatch: lock: {os.strerror(rc)}", file=sys.stderr)
            return 1


def main(argv: Sequence[str]) -> int:
    fd, agent, pin, poll, *pairs = argv
    mine = {int(k): int(c) for k, c in (p.split(":") for p in pairs)}
    return watch(int(fd), int(agent), pin, float(poll), mine)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
