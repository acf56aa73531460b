"""The agent: wires sources -> name table -> resolver -> responder, and the interceptor beside them.

Start: compile BPF and sync the table while kube-dns (or a predecessor) still serves, then bind,
then take steering over (see Agent.start). Stop: a stopping agent fails the pods open at once unless
a successor has taken over (its sockets registered, ownership taken: kernel/loader.py), and
answers what was already sent its way (see Agent.stop).

Kernel answers (cache.kernel_answers, kernel/answerpath.py): loaded with the steering programs, the
pod map written with every pod change, the program attached per pod by one worker thread (netlink),
hot cache entries promoted and hit counters read back on a 0.25 s tick, and the kernel map flushed
by the cache's own flush hooks, so no flush can miss it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

from node_agent.app.health import Readiness
from node_agent.app.metrics import (
    AnswerCollector,
    FeatureCollector,
    KernelAnswerCollector,
    KernelCollector,
    MetricsServer,
    ReadyCollector,
    TableCollector,
    UpstreamCollector,
    VipCollector,
)
from node_agent.kernel import cgroups, listenaddr, tc
from node_agent.kernel.answerpath import WRITES_PER_TICK, KernelAnswers
from node_agent.kernel.enrollment import Enrollment
from node_agent.kernel.loader import InterceptError, Interceptor, Target
from node_agent.kernel.loader import uninstall as bpf_uninstall
from node_agent.kernel.vipmap import VipMap
from node_agent.mesh.model import Pod, Snapshot
from node_agent.mesh.table import NameTable
from node_agent.resolve.cache import Cache
from node_agent.resolve.resolver import SHARED, Resolver
from node_agent.serve.responder import Responder
from node_agent.settings import EDNS_PAYLOAD, Settings
from node_agent.sources import static
from node_agent.upstream.client import Upstream

log = logging.getLogger(__name__)

STATIC_POLL = 1.0  # seconds between looks at each static file (mtime, size, inode)


class Agent:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.table = NameTable(settings.table)
        self.cache = Cache(settings=settings.cache)
        self.upstream = Upstream(settings.upstream)
        self.resolver = Resolver(self.table, self.cache, self.upstream, settings.resolver)
        self.responder = Responder(settings.listen, self.resolver)
        self.interceptor: Interceptor | None = None
        self.enrollment: Enrollment | None = None
        self.vipmap: VipMap | None = None
        self.kernel: KernelAnswers | None = None
        self.kernel_off = ""  # why there are no kernel answers (status, metrics)
        self._tc: ThreadPoolExecutor | None = None  # the one thread that attaches (pyroute2)
        self._tc_busy = False  # a retry or re-adoption is queued or running there
        self._steering = False  # we own steering: only then are entries promoted (see _kernel_tick)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.source_state: dict[str, tuple[bool, float]] = {}  # "static:<file>" -> (synced, when)
        self.source_rejected: Counter[tuple[str, str]] = Counter()  # (source, kind) -> objects not read
        self._tasks: list[asyncio.Task[None]] = []
        self._loop_tick = 0.0
        self._beating = threading.Event()  # set = stop beating
        self._beater: threading.Thread | None = None
        self.metrics: MetricsServer | None = None
        self.readiness = Readiness()
        self.readiness.add("bpf", self._bpf_ready)
        self.readiness.add("listener", lambda: None if self.responder.listening else "down")
        self.readiness.add("table", self._table_ready)

    def _bpf_ready(self) -> str | None:
        if self.settings.no_bpf:
            return None
        if self.interceptor is None:
            return "not loaded"
        return None if self.interceptor.attached else "not attached"

    def _table_ready(self) -> str | None:
        if self.table.synced:
            return None
        waiting = sorted(name for name, (synced, _) in self.source_state.items() if not synced)
        if not waiting:
            return "not synced"
        more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
        return f"not synced (waiting for {', '.join(waiting[:3])}{more})"

    async def start(self) -> None:
        """Order matters for a hitless hand-over and a gap-free fresh install: everything slow
        (compiling, syncing the table) happens while a predecessor, or kube-dns, still serves; then we
        bind (the kernel sends this reuseport group's new traffic to us) and only then take steering
        over: our sockets into the kernel's map, then ownership, then the first beat."""
        s = self.settings
        r = self.registry
        self._loop = asyncio.get_running_loop()
        AnswerCollector(self.resolver.stats, self.cache.stats, self.responder.stats, fold=self._fold, registry=r)
        UpstreamCollector(self.upstream.stats, self.upstream.health, registry=r)
        TableCollector(self.table.sizes, self.source_state, self.source_rejected, registry=r)
        ReadyCollector(self.readiness, registry=r)
        self.metrics = MetricsServer(s.metrics, r, self.readiness)
        await self.metrics.start()  # /healthz from the start; /readyz says what is missing
        for address in self.responder.addresses:
            if not _is_local(address):
                # pyroute2 runs its own event loop: keep it off ours.
                await asyncio.to_thread(listenaddr.ensure, address)
        await self.upstream.start()
        if not s.no_bpf:
            target = Target.of(self.responder.addresses, s.listen.port)
            interceptor = Interceptor(s.intercept, target)
            await asyncio.to_thread(interceptor.prepare)  # a failure leaves nothing to stop
            self.interceptor = interceptor
            assert interceptor.features is not None
            FeatureCollector(interceptor.features.found, registry=self.registry)
            self.enrollment = Enrollment(self.interceptor, cgroups.resolve(s.intercept.cgroup))
            KernelCollector(self.interceptor, self.enrollment.namespace_of, registry=self.registry)
            if s.cache.kernel_answers:
                await self._load_kernel_answers()
            else:
                self.kernel_off = "off by the setting cache.kernel_answers"
        else:
            self.kernel_off = "off: no BPF (--no-bpf)"
        KernelAnswerCollector(self.kernel, self.resolver.stats.kernel_by_namespace, reason=self.kernel_off,
                              registry=r)
        self.table.on_pod_change = self._pod_changed
        await self._load_static()
        for path in s.sources.static_files:
            # A changed file replaces its records (a refused one keeps them: sources/static.py).
            self._tasks.append(asyncio.ensure_future(static.watch_file(
                path, functools.partial(self._static_reloaded, path), interval=STATIC_POLL,
                rejected=self.source_rejected)))
        if s.sources.kubernetes:
            from node_agent.sources.kubernetes import KubernetesSources

            kube = KubernetesSources(
                s.sources, self.table, self._table_changed, self.source_state, rejected=self.source_rejected
            )
            self._tasks.append(asyncio.ensure_future(kube.run()))
            await self._wait_synced(s.sources.sync_timeout)
        else:
            self.table.synced = True
        if self.interceptor is not None:
            self.vipmap = VipMap(self.interceptor.maps, self.table, self.upstream.resolve)
            VipCollector(self.vipmap, registry=self.registry)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.vipmap.sync(), 5.0)  # VIPs work from the first connect
            self._tasks.append(asyncio.ensure_future(self.vipmap.run()))
        # The table and settings live as long as the process: keep the cyclic GC from walking them on
        # every full collection (a pause that would show in answer latency with a large table).
        gc.collect()
        gc.freeze()
        if s.cache.sweep_interval > 0:
            self._tasks.append(asyncio.ensure_future(self._sweep(s.cache.sweep_interval)))
        if self.kernel is not None and self.kernel.active:
            # Before we steer: once we do, no attach point may still run a dead predecessor's program
            # (its maps answer what nobody keeps coherent). Ours holds no entry until we promote one,
            # so a live predecessor's pods only lose kernel answers, never get a wrong one.
            await self._in_tc(self._attach_all)
            self._tasks.append(asyncio.ensure_future(self._kernel_tick()))
        await self.responder.start()
        if self.interceptor is not None:
            self.interceptor.attach(self.responder.sockets)
            self._steering = True
            if self.kernel is not None and self.kernel.active:
                self._submit(self.kernel.attach_queued)  # pod changes since _attach_all
            self._loop_tick = time.monotonic()
            self._tasks.append(asyncio.ensure_future(self._heartbeat()))
            self._beater = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._beater.start()
        log.info("agent up: listening on %s:%d, bpf %s, table %s", s.listen.address, s.listen.port,
                 "off" if s.no_bpf else f"on cgroup {s.intercept.cgroup}",
                 "synced" if self.table.synced else "not synced yet (forwarding everything)")

    async def _wait_synced(self, timeout: float) -> None:
        """Give the sources a chance to sync before we take traffic; past the bound, serve anyway
        (forwarding what we do not know) and keep reporting not ready."""
        deadline = time.monotonic() + timeout
        while not self.table.synced and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _load_kernel_answers(self) -> None:
        s = self.settings
        ka = KernelAnswers(s.intercept.pin_root, s.listen.address if ":" not in s.listen.address else "",
                           s.listen.address6 or (s.listen.address if ":" in s.listen.address else ""),
                           s.listen.port, entries=s.cache.kernel_answer_entries, max_udp=EDNS_PAYLOAD,
                           edns_payload=s.cache.edns_payload, view_for=self.table.view_for, shared=SHARED,
                           mode=s.cache.kernel_answer_attach)
        began = time.monotonic()
        if not await asyncio.to_thread(ka.load):
            self.kernel_off = ka.error
            self.kernel = ka  # for status: why it is off
            return
        ka.on_hits = self.resolver.kernel_answered
        ka.on_pod_answers = self.resolver.kernel_answered_namespace
        self.kernel = ka
        self._tc = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tc-attach")
        self.cache.track_hot = True
        self.cache.on_flush = ka.flush_names
        self.cache.on_clear = ka.clear
        log.info("kernel answers: dns_answer.c loaded in %.2fs (answer map of %d entries)", time.monotonic() - began,
                 s.cache.kernel_answer_entries)

    async def _in_tc(self, fn: Callable[[], object]) -> None:
        assert self._tc is not None
        try:
            await asyncio.get_running_loop().run_in_executor(self._tc, fn)
        except Exception as e:  # netlink trouble: userspace keeps answering
            log.warning("kernel answers: %s", e)

    def _attach_all(self) -> None:
        assert self.kernel is not None
        self.kernel.attach_queued()
        swept = self.kernel.sweep()
        log.info("kernel answers: %d attach points, %d pods waiting for their veth, %d stale links removed",
                 len(self.kernel.points), len(self.kernel.pending), swept)

    def _submit(self, fn: Callable[[], object], *, retry: bool = False) -> None:
        """Queue attach work without waiting for it. Retries run one at a time (one more is
        pointless while one runs); everything else always gets its turn, in order."""
        if self._tc is None or (retry and self._tc_busy):
            return
        if retry:
            self._tc_busy = True

        def run() -> None:
            try:
                fn()
            except Exception as e:
                log.warning("kernel answers: %s", e)
            finally:
                if retry:
                    self._tc_busy = False

        with contextlib.suppress(RuntimeError):  # shut down: we are stopping
            self._tc.submit(run)

    async def _kernel_tick(self) -> None:
        """Every 0.25 s: entries that became hot (or were refreshed) into the kernel while we steer,
        expired ones out, hit counters read (a bounded amount of map work: answerpath's
        READS_PER_TICK, WRITES_PER_TICK); every second, pods whose veth was not found are retried."""
        ka = self.kernel
        assert ka is not None
        retry_at = 0.0
        while True:
            await asyncio.sleep(0.25)
            now = self.resolver.clock()
            if self._steering:  # standing by, they wait: the entries are checked when taken
                hot = self.cache.take_hot(WRITES_PER_TICK)
                ka.promote(((view, ck, raw, raw.hits) for view, ck, raw in hot), now)
            ka.tick(now)
            if ka.pending and now >= retry_at:
                retry_at = now + 1.0
                self._submit(ka.retry, retry=True)

    def _fold(self) -> None:
        self.resolver.fold()
        if self.kernel is not None and self.kernel.active:
            self.kernel.fold(self.resolver.clock())

    def _steering_changed(self, ours: bool) -> None:
        """From the heartbeat thread: a successor took steering over, or it came back to us (the
        successor died: its program, with maps nobody keeps now, may run at our pods' veths)."""
        self._steering = ours
        if ours and self.kernel is not None and self.kernel.active and self._loop is not None:
            kernel = self.kernel

            def readopt() -> None:
                kernel.attach_queued()  # pod changes while we stood by
                kernel.readopt()

            self._loop.call_soon_threadsafe(self._submit, readopt)

    def _table_changed(self, names: set[str]) -> None:
        self.resolver.flush(names)
        if self.vipmap is not None and names:
            self.vipmap.dirty.set()

    def _pod_changed(self, old: Pod | None, new: Pod | None) -> None:
        self.resolver.forget_clients()
        if self.enrollment is not None:
            self.enrollment.change(old, new)
        if self.kernel is not None and self.kernel.active:
            self.kernel.pod_changed(old, new, attach=False)  # the pod map now; attaching in the worker
            if self._steering:  # during start, _attach_all runs them
                self._submit(self.kernel.attach_queued)

    async def _load_static(self) -> None:
        for path in self.settings.sources.static_files:
            snap = static.load(path)
            self._table_changed(self.table.replace(snap))
            self.source_state[f"static:{path}"] = (True, time.time())
            log.info("static source %s: %d records", path, len(snap.records))

    def _static_reloaded(self, path: str, snap: Snapshot) -> None:
        changed = self.table.replace(snap)
        self._table_changed(changed)
        self.source_state[f"static:{path}"] = (True, time.time())
        if changed:
            log.info("static source %s reloaded: %d records, %d names changed", path, len(snap.records), len(changed))

    async def _sweep(self, interval: float) -> None:
        """Entries past max_stale go when looked up or when the bounds need room; names nobody asks
        for again would otherwise hold their memory until then."""
        while True:
            await asyncio.sleep(interval)
            dropped = self.cache.sweep(self.resolver.clock())
            if dropped:
                log.debug("cache sweep dropped %d entries past max_stale", dropped)

    async def _heartbeat(self) -> None:
        """Loop-side half of the heartbeat: prove the event loop runs, and retry enrollments."""
        assert self.interceptor is not None and self.enrollment is not None
        interval = self.settings.intercept.heartbeat_interval
        retry_at = 0.0
        while True:
            self._loop_tick = time.monotonic()
            # Pods whose cgroup appeared after the pod did (the kubelet is racing us): retry.
            if self.enrollment.missing and self._loop_tick >= retry_at:
                retry_at = self._loop_tick + 1.0
                for pod in [p for p in self.table.pods() if p.uid in self.enrollment.missing]:
                    self.enrollment.change(None, pod)
            await asyncio.sleep(interval)

    def _beat(self) -> None:
        """Thread-side half: beat while the loop has ticked recently. A dead process stops beating
        at once; a loop busy for a moment (a large re-list) does not flap pods to kube-dns; a loop
        stuck for longer than loop_stall_bound does fail them open. Once a successor has taken over,
        beat() writes nothing (and takes over again only if the successor's sockets close)."""
        assert self.interceptor is not None
        s = self.settings.intercept
        steering = True
        while not self._beating.wait(s.heartbeat_interval):
            if time.monotonic() - self._loop_tick <= s.loop_stall_bound:
                if self.interceptor.beat() != steering:
                    steering = not steering
                    log.info("steering taken back" if steering else
                             f"pid {self.interceptor.owner()} has taken steering over; standing by")
                    self._steering_changed(steering)

    async def stop(self) -> None:
        """Hand over without losing a query: stop beating; fail pods open unless a successor has
        taken over (its sockets are in the kernel's map and it owns the heartbeat; its sockets
        already get all new traffic); keep answering for drain_grace what is already on its way
        here; then close."""
        self._beating.set()
        if self._beater is not None:
            self._beater.join()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.interceptor is not None:
            steered = self.interceptor.took_over
            successor = self.interceptor.stop(fail_open=True)
            log.info("%s; draining for %.1f s",
                     "never steered" if not steered else
                     f"successor has taken over (pid {successor})" if successor else "failed open",
                     self.settings.listen.drain_grace)
            self._steering = False
            if self.kernel is not None and self.kernel.active:
                self.kernel.stop(successor=bool(successor))
            await asyncio.sleep(self.settings.listen.drain_grace)
        if self._tc is not None:
            tc_pool, self._tc = self._tc, None
            tc_pool.shutdown(wait=True, cancel_futures=True)
        await self.responder.close()
        await self.upstream.close()
        if self.metrics:
            await self.metrics.close()


def _is_local(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "0.0.0.0", "::")


def run_agent(settings: Settings) -> int:
    # uvloop for our loop only (not installed as the policy): pyroute2 runs a stock asyncio loop of
    # its own in a worker thread, and uvloop cannot open netlink sockets.
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_main(settings))


async def _main(settings: Settings) -> int:
    agent = Agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
    except (InterceptError, cgroups.CgroupError, OSError, ValueError) as e:
        log.error("cannot start: %s", e)
        await agent.stop()
        return 1
    await stop.wait()
    log.info("stopping (pid %d)", os.getpid())
    await agent.stop()
    return 0


def uninstall(settings: Settings) -> int:
    removed = bpf_uninstall(settings.intercept.pin_root)
    for path in removed:
        print(f"removed {path}")
    # Kernel answers' clsact filters are pinned nowhere (tcx links went with the pins above).
    try:
        filtered = tc.remove_filters()
    except Exception as e:  # netlink trouble: say so, the pins are gone already
        print(f"node-agent: kernel answer filters not removed: {e}")
        filtered = []
    for ifname in filtered:
        print(f"removed the kernel answer filter on {ifname}")
    removed += filtered
    for address in (settings.listen.address, settings.listen.address6):
        if address and not _is_local(address):
            try:
                listenaddr.remove(address)
            except Exception as e:  # the address may be gone already
                log.debug("listen address %s: %s", address, e)
    print("node-agent: uninstalled" if removed else "node-agent: nothing was installed")
    return 0
