"""The kernel answer path as the agent runs it: the program loaded with its maps pinned, attached per
enrolled pod (kernel/tc.py), the pod map kept in step with the table's pods, hot cache entries
promoted (answers.Promoter), and flushed in the same step as the cache.

What the agent calls (app/agent.py's kernel-answers block):
- `load()` once (compile while a predecessor still serves), then `pod_changed(old, new)` for every
  pod the table reports, from a worker thread (pyroute2: see kernel/tc.py);
- `promote(items, now)` with the cache's hot entries, `flush_names(names)` / `clear()` with exactly
  the names the cache flushes (any view), `stop(successor)` at the end.

View ids: the program keys answers by a u32 per view; `view_id` numbers the agent's View objects
from 1 in order of first use (0 is the SHARED key). An id is never reused for another view while
this process runs, and each process starts with an empty answer map of its own numbering: the map
pinned by a predecessor is cleared on load, so no entry can be read under another process's ids.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from node_agent.dns.names import encode_name
from node_agent.kernel import answers, tc
from node_agent.mesh.model import Pod

log = logging.getLogger(__name__)

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class KernelAnswers:
    def __init__(self, pin_root: str, address4: str, address6: str, port: int, *, entries: int,
                 max_udp: int, edns_payload: int, view_for: Callable[[str], Hashable | None],
                 shared: Hashable, mode: str = "auto") -> None:
        self.pin = answers.pin_dir(pin_root)
        self.address4, self.address6, self.port = address4, address6, port
        self.entries, self.max_udp, self.edns_payload = entries, max_udp, edns_payload
        self.view_for = view_for
        self.shared = shared
        self.mode = mode
        self.bpf: Any = None
        self.maps: answers.AnswerMaps | None = None
        self.promoter: answers.Promoter | None = None
        self.attacher: tc.TcAttacher | None = None
        self.error = ""  # why the path is off, for status
        self._ids: dict[Hashable, int] = {}
        self._pods: dict[str, str] = {}  # pod ip -> namespace (metrics per namespace)
        self._lock = threading.Lock()  # pod changes come from worker threads, promotion from the loop

    def load(self) -> bool:
        try:
            self.bpf = answers.compile_program(self.pin, self.entries)
            prog = answers.load_program(self.bpf)
            self.maps = answers.AnswerMaps(self.bpf)
            self.bpf[answers.ANSWERS].clear()  # a predecessor's entries are under its view ids
            self.bpf[answers.PODS].clear()
            self.maps.configure(self.address4, self.address6, self.port, max_udp=self.max_udp,
                                edns_payload=self.edns_payload, enabled=True)
            self.promoter = answers.Promoter(self.maps)
            self.attacher = tc.TcAttacher(prog.fd, self.pin, mode=self.mode)
        except Exception as e:  # a kernel or toolchain that cannot: answer in userspace
            self.error = f"kernel answers off: {e}"
            log.warning("%s", self.error)
            self.maps = self.promoter = self.attacher = None
            return False
        return True

    @property
    def active(self) -> bool:
        return self.attacher is not None

    def view_id(self, view: Hashable) -> int:
        if view == self.shared:
            return answers.SHARED_VIEW
        with self._lock:
            vid = self._ids.get(view)
            if vid is None:
                vid = self._ids[view] = len(self._ids) + 1
            return vid

    # ---- pods (worker thread) ----------------------------------------------------------------------

    def pod_changed(self, old: Pod | None, new: Pod | None) -> None:
        if self.maps is None or self.attacher is None:
            return
        keep = set(new.ips) if new is not None and not new.host_network else set()
        for ip in (old.ips if old is not None else ()):
            if ip not in keep:
                self.maps.remove_pod(ip)
                self.attacher.detach(ip)
                self._pods.pop(ip, None)
        if new is None or new.host_network:
            return
        for ip in new.ips:
            view = self.view_for(ip)
            if view is None:
                self.maps.remove_pod(ip)
                continue
            self.maps.set_pod(ip, self.view_id(view), opt_out=new.opt_out)
            self._pods[ip] = new.namespace
            if new.opt_out:
                self.attacher.detach(ip)
            elif ":" not in ip or self.address6:
                self.attacher.attach(ip)

    def retry(self) -> None:
        """Attach where the veth was not found yet (a bridge learns a pod only once it sent)."""
        if self.attacher is None:
            return
        for ip in list(self.attacher.failed):
            if ip in self._pods:
                self.attacher.attach(ip)

    # ---- entries (event loop) ----------------------------------------------------------------------

    def promote(self, items: Iterable[tuple[Hashable, bytes, answers.RawEntry, int]], now: float) -> int:
        """Offer (view, ck, raw entry, hits) of every cache entry: hot ones go in (Promoter.offer),
        and a view-specific entry takes the SHARED kernel copy of its key out."""
        if self.promoter is None:
            return 0
        n = 0
        held = self.promoter._names
        for view, ck, raw, hits in items:
            vid = self.view_id(view)
            if vid != answers.SHARED_VIEW and (answers.SHARED_VIEW, ck) in held.get(ck[:-5], ()):
                # Userspace answers this view's pods from the view's own entry now; the program
                # would fall back to the SHARED copy while the view's is not in the kernel.
                self.promoter._drop(answers.SHARED_VIEW, ck)
            n += self.promoter.offer(vid, ck, raw, hits, now)
        return n

    def flush_names(self, names: Iterable[str]) -> int:
        """The cache dropped these names (text, any case, `*.suffix` for everything under suffix)."""
        if self.promoter is None:
            return 0
        exact: list[bytes] = []
        suffixes: list[bytes] = []
        for name in names:
            nm = name.translate(_ASCII_LOWER).rstrip(".")
            try:
                if nm.startswith("*."):
                    suffixes.append(encode_name(nm[2:]))
                else:
                    exact.append(encode_name(nm))
            except ValueError:
                continue
        if suffixes:
            held = list(self.promoter._names)
            # Over-matching (a suffix that is no label boundary) only drops an entry too many.
            exact += [q for q in held if any(q.endswith(s) and q != s for s in suffixes)]
        return self.promoter.flush_names(exact)

    def clear(self) -> None:
        if self.promoter is not None:
            self.promoter.clear()

    def answers_by_namespace(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.bpf is None:
            return out
        table = self.bpf[answers.PODS]
        for ip, ns in list(self._pods.items()):
            try:
                n = int(table[answers._as(table.Key, answers.ip_key(ip))].answers)
            except KeyError:
                continue
            out[ns] = out.get(ns, 0) + n
        return out

    def status_lines(self) -> list[str]:
        if self.attacher is None:
            return [self.error or "kernel answers: not loaded"]
        lines = [f"kernel answers: {len(self.attacher.points)} attached, "
                 f"{len(self.promoter._names) if self.promoter else 0} names in the map (max {self.entries})"]
        for p in sorted(self.attacher.points.values(), key=lambda p: p.pod_ip):
            lines.append(f"  {p.pod_ip} on {p.ifname} ({p.mode})")
        for ip, why in sorted(self.attacher.failed.items()):
            lines.append(f"  {ip}: not attached: {why}")
        return lines

    def stop(self, successor: bool) -> None:
        """Without a successor nobody keeps the map coherent any more: the program passes everything
        (its links stay for the next agent to adopt). A successor already configured its own."""
        if self.maps is not None and not successor:
            self.maps.configure(self.address4, self.address6, self.port, max_udp=self.max_udp,
                                edns_payload=self.edns_payload, enabled=False)
