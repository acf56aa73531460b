"""A list/watch double of the Kubernetes API server, faithful where clients can tell the difference.

What it speaks (HTTP/1.1 on 127.0.0.1, a random port, no auth):

* ``GET /api/v1/{pods,services,namespaces}`` (namespaces are cluster-scoped: no metadata.namespace),
  ``/apis/discovery.k8s.io/v1/endpointslices``,
  ``/apis/networking.istio.io/<v>/{serviceentries,workloadentries}`` (for the versions in
  `istio_versions`; an empty set = the CRDs are not installed: 404 with a Status body);
* LIST: a ``<Kind>List`` with ``metadata.resourceVersion``, paginated with ``limit``/``continue``
  (continue tokens are opaque and pin a consistent snapshot; they expire with `compact()`:
  410 Expired), ``remainingItemCount``; items of built-in kinds carry no kind/apiVersion, custom
  resources do (as the real server);
* WATCH (``watch=1``): chunked newline-delimited JSON events from ``resourceVersion`` (history
  replay, then live), ``resourceVersion`` unset or "0" starts with synthetic ADDED events of the
  current state; BOOKMARKs when ``allowWatchBookmarks=true`` (on `bookmark()` or every
  `bookmark_interval`); the stream ends cleanly after ``timeoutSeconds``; a too-old
  resourceVersion (older than the last `compact()`) gets HTTP 410 or, with `expire_as_event`, a
  200 stream holding one ERROR event with a 410 Status;
* ``fieldSelector`` on pods: ``spec.nodeName``, ``metadata.name``, ``metadata.namespace``; an
  object moving out of / into the selection is seen as DELETED / ADDED, as the real watch cache;
* one global, monotonically increasing resourceVersion over all resources.

Test controls: `add`/`modify`/`delete`, `compact()`, `drop_watches()` (closes open streams without
the terminating chunk), `hold_watches()`/`release_watches()` (new watch requests wait), `fail_next`,
`istio_versions`, `token`, `bookmark()`, and `requests`, the log of every request received.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

Obj = dict[str, Any]

ISTIO = "networking.istio.io"


@dataclass(frozen=True)
class ResourceType:
    plural: str
    kind: str
    group: str  # "" = core
    builtin: bool  # list items without kind/apiVersion
    namespaced: bool = True  # False: cluster-scoped, objects carry no metadata.namespace


TYPES: dict[str, ResourceType] = {
    t.plural: t
    for t in (
        ResourceType("pods", "Pod", "", True),
        ResourceType("services", "Service", "", True),
        ResourceType("namespaces", "Namespace", "", True, namespaced=False),
        ResourceType("endpointslices", "EndpointSlice", "discovery.k8s.io", True),
        ResourceType("serviceentries", "ServiceEntry", ISTIO, False),
        ResourceType("workloadentries", "WorkloadEntry", ISTIO, False),
    )
}
BY_KIND = {t.kind: t for t in TYPES.values()}
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def status(code: int, message: str, reason: str | None = None) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, "Unknown"),
        "code": code,
    }


@dataclass
class Request:
    t: float  # time.monotonic() when received
    path: str
    query: dict[str, str]
    status: int = 0  # of the response (200 for watch streams once started)

    @property
    def watch(self) -> bool:
        return _bool(self.query.get("watch"))

    @property
    def resource(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(eq=False)
class _Watcher:
    plural: str
    version: str
    selector: list[tuple[str, str]]
    bookmarks: bool
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


@dataclass
class _Event:
    rv: int
    plural: str
    old: Obj | None
    new: Obj | None  # None: deleted (then `old` holds the final state)


_DROP = object()
_END = object()


class FakeAPI:
    def __init__(self, istio_versions: tuple[str, ...] = ("v1",), bookmark_interval: float = 0.0) -> None:
        self.istio_versions: set[str] = set(istio_versions)
        self.bookmark_interval = bookmark_interval
        self.expire_as_event = False  # too-old watch: 200 + ERROR event instead of HTTP 410
        self.token: str | None = None  # set: requests need "Authorization: Bearer <token>", else 401
        self.requests: list[Request] = []
        self.rv = 100
        self.compacted = 0  # resourceVersions below this are gone
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {p: {} for p in TYPES}
        self._history: list[_Event] = []
        self._watchers: set[_Watcher] = set()
        self._failures: list[tuple[int, str | None]] = []
        self._snapshots: dict[str, tuple[int, list[Obj]]] = {}
        self._open = asyncio.Event()
        self._open.set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---------------------------------------------------------------------------------- serving --
    async def start(self) -> FakeAPI:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        for w in list(self._watchers):
            w.queue.put_nowait(_END)
        self._open.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeAPI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path | str, name: str = "fake", token: str = "fake-token") -> str:
        """Write a kubeconfig pointing at this server; returns its path."""
        text = (
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: {name}\n  cluster:\n    server: {self.url}\n"
            f"contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n"
            f"current-context: {name}\n"
            f"users:\n- name: {name}\n  user:\n    token: {token}\n"
        )
        Path(path).write_text(text)
        return str(path)

    # -------------------------------------------------------------------------------- test data --
    def add(self, obj: Obj) -> Obj:
        return self._write(obj, must_exist=False)

    def modify(self, obj: Obj) -> Obj:
        return self._write(obj, must_exist=True)

    def upsert(self, obj: Obj) -> Obj:
        return self._write(obj, must_exist=None)

    def delete(self, obj: Obj) -> None:
        plural, key = self._locate(obj)
        old = self._objects[plural].pop(key)
        self.rv += 1
        final = copy.deepcopy(old)
        final["metadata"]["resourceVersion"] = str(self.rv)
        self._publish(_Event(self.rv, plural, final, None))

    def objects(self, plural: str) -> list[Obj]:
        return [copy.deepcopy(o) for o in self._objects[plural].values()]

    def _write(self, obj: Obj, must_exist: bool | None) -> Obj:
        plural, key = self._locate(obj)
        old = self._objects[plural].get(key)
        if must_exist is True and old is None:
            raise KeyError(f"{plural} {key} does not exist")
        if must_exist is False and old is not None:
            raise KeyError(f"{plural} {key} exists")
        self.rv += 1
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        if TYPES[plural].namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        meta["resourceVersion"] = str(self.rv)
        if old is not None:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._objects[plural][key] = new
        self._publish(_Event(self.rv, plural, old, new))
        return copy.deepcopy(new)

    @staticmethod
    def _locate(obj: Obj) -> tuple[str, tuple[str, str]]:
        t = BY_KIND[obj["kind"]]
        meta = obj.get("metadata") or {}
        return t.plural, ((meta.get("namespace") or "default") if t.namespaced else "", meta["name"])

    # ------------------------------------------------------------------------------ test controls --
    def compact(self) -> None:
        """Forget history: watches from an older resourceVersion (and older continue tokens) get 410."""
        self.compacted = self.rv
        self._history = [e for e in self._history if e.rv > self.rv]

    def drop_watches(self) -> None:
        """Close every open watch stream abruptly (no terminating chunk), as a dying LB would."""
        for w in list(self._watchers):
            w.queue.put_nowait(_DROP)

    def end_watches(self) -> None:
        """End every open watch stream cleanly, as a server-side timeout does."""
        for w in list(self._watchers):
            w.queue.put_nowait(_END)

    def hold_watches(self) -> None:
        """New watch requests wait (unanswered) until `release_watches()`."""
        self._open.clear()

    def release_watches(self) -> None:
        self._open.set()

    def fail_next(self, n: int = 1, status: int = 500, path: str | None = None) -> None:
        """The next n requests (whose path contains `path`, if given) fail with `status`."""
        self._failures.extend([(status, path)] * n)

    def clear_failures(self) -> None:
        self._failures.clear()

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion to every watch that asked for them."""
        for w in list(self._watchers):
            if w.bookmarks:
                w.queue.put_nowait(self._bookmark(w))

    def watches(self, plural: str | None = None) -> int:
        """Open watch streams (of one resource)."""
        return sum(1 for w in self._watchers if plural is None or w.plural == plural)

    def log(self, plural: str | None = None, watch: bool | None = None) -> list[Request]:
        return [
            r for r in self.requests if (plural is None or r.resource == plural) and (watch is None or r.watch == watch)
        ]

    # ----------------------------------------------------------------------------------- handler --
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        entry = Request(time.monotonic(), request.path, query)
        self.requests.append(entry)
        response = await self._serve(request, entry)
        if not entry.status:
            entry.status = response.status
        return response

    async def _serve(self, request: web.Request, entry: Request) -> web.StreamResponse:
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _json(status(401, "Unauthorized"), 401)
        for i, (code, path) in enumerate(self._failures):
            if path is None or path in request.path:
                del self._failures[i]
                return _json(status(code, "injected failure"), code)
        parsed = self._route(request.path)
        if parsed is None:
            return _json(status(404, "the server could not find the requested resource"), 404)
        rtype, version = parsed
        try:
            selector = _parse_selector(entry.query.get("fieldSelector", ""), rtype)
        except ValueError as e:
            return _json(status(400, str(e)), 400)
        if entry.watch:
            return await self._watch(request, entry, rtype, version, selector)
        return self._list(entry, rtype, version, selector)

    def _route(self, path: str) -> tuple[ResourceType, str] | None:
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["api", "v1"]:
            t = TYPES.get(parts[2])
            return (t, "v1") if t is not None and t.group == "" else None
        if len(parts) == 4 and parts[0] == "apis":
            t = TYPES.get(parts[3])
            if t is None or t.group != parts[1]:
                return None
            if t.group == ISTIO:
                return (t, parts[2]) if parts[2] in self.istio_versions else None
            return (t, parts[2]) if parts[2] == "v1" else None
        return None

    def _present(self, obj: Obj, rtype: ResourceType, version: str, in_list: bool) -> Obj:
        out = copy.deepcopy(obj)
        if in_list and rtype.builtin:
            out.pop("kind", None)
            out.pop("apiVersion", None)
        else:
            out["kind"] = rtype.kind
            out["apiVersion"] = f"{rtype.group}/{version}" if rtype.group else version
        return out

    def _list(self, entry: Request, rtype: ResourceType, version: str, selector: list[tuple[str, str]]) -> web.Response:
        limit = int(entry.query.get("limit") or 0)
        token = entry.query.get("continue") or ""
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token))
                snap_id, start = str(decoded["id"]), int(decoded["start"])
                rv, items = self._snapshots[snap_id]
            except (ValueError, KeyError):
                return _json(status(400, "continue key is not valid"), 400)
            if rv < self.compacted:
                msg = "The provided continue parameter is too old to display a consistent list result."
                return _json(status(410, msg), 410)
        else:
            rv = self.rv
            items = [
                self._present(o, rtype, version, True)
                for _, o in sorted(self._objects[rtype.plural].items())
                if _matches(o, selector)
            ]
            snap_id, start = uuid.uuid4().hex, 0
            self._snapshots[snap_id] = (rv, items)
        end = len(items) if limit <= 0 else min(len(items), start + limit)
        meta: Obj = {"resourceVersion": str(rv)}
        if end < len(items):
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"id": snap_id, "start": end}).encode()).decode()
            meta["remainingItemCount"] = len(items) - end
        else:
            self._snapshots.pop(snap_id, None)
        body = {
            "kind": f"{rtype.kind}List",
            "apiVersion": f"{rtype.group}/{version}" if rtype.group else version,
            "metadata": meta,
            "items": items[start:end],
        }
        return _json(body, 200)

    async def _watch(
        self,
        request: web.Request,
        entry: Request,
        rtype: ResourceType,
        version: str,
        selector: list[tuple[str, str]],
    ) -> web.StreamResponse:
        await self._open.wait()
        rv_text = entry.query.get("resourceVersion") or ""
        try:
            since = int(rv_text) if rv_text not in ("", "0") else None
        except ValueError:
            return _json(status(400, f"invalid resourceVersion {rv_text!r}"), 400)
        too_old = since is not None and since < self.compacted
        if too_old and not self.expire_as_event:
            return _json(status(410, f"too old resource version: {since} ({self.compacted})", "Expired"), 410)
        w = _Watcher(rtype.plural, version, selector, _bool(entry.query.get("allowWatchBookmarks")))
        # Replay and subscribe with no await in between: no event is missed or seen twice.
        if too_old:
            w.queue.put_nowait(("ERROR", status(410, f"too old resource version: {since} ({self.compacted})")))
            w.queue.put_nowait(_END)
        elif since is None:
            for _, o in sorted(self._objects[rtype.plural].items()):
                if _matches(o, selector):
                    w.queue.put_nowait(("ADDED", o))
        else:
            for ev in self._history:
                if ev.rv > since and ev.plural == rtype.plural:
                    self._offer(w, ev)
        self._watchers.add(w)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        entry.status = 200
        timeout = float(entry.query.get("timeoutSeconds") or 1800)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await resp.prepare(request)
            while True:
                wait = deadline - loop.time()
                if self.bookmark_interval and w.bookmarks:
                    wait = min(wait, self.bookmark_interval)
                if wait <= 0:
                    break
                try:
                    item = await asyncio.wait_for(w.queue.get(), wait)
                except TimeoutError:
                    if loop.time() >= deadline:
                        break
                    item = self._bookmark(w)
                if item is _END:
                    break
                if item is _DROP:
                    assert request.transport is not None
                    request.transport.abort()
                    raise asyncio.CancelledError
                kind, obj = item
                if kind != "ERROR":
                    obj = self._present(obj, rtype, w.version, False)
                await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(w)
        return resp

    def _bookmark(self, w: _Watcher) -> tuple[str, Obj]:
        t = TYPES[w.plural]
        return (
            "BOOKMARK",
            {
                "kind": t.kind,
                "apiVersion": f"{t.group}/{w.version}" if t.group else w.version,
                "metadata": {"resourceVersion": str(self.rv), "creationTimestamp": None},
            },
        )

    def _publish(self, ev: _Event) -> None:
        self._history.append(ev)
        for w in list(self._watchers):
            if w.plural == ev.plural:
                self._offer(w, ev)

    @staticmethod
    def _offer(w: _Watcher, ev: _Event) -> None:
        was = ev.old is not None and _matches(ev.old, w.selector)
        now = ev.new is not None and _matches(ev.new, w.selector)
        if ev.new is None:
            if was:
                assert ev.old is not None
                w.queue.put_nowait(("DELETED", ev.old))
        elif was and now:
            w.queue.put_nowait(("MODIFIED", ev.new))
        elif now:
            w.queue.put_nowait(("ADDED", ev.new))
        elif was:  # moved out of the selection: the watch cache reports it deleted
            w.queue.put_nowait(("DELETED", ev.new))


def _bool(text: str | None) -> bool:
    """Query booleans as the API server reads them: absent/empty, "0", "f", "false" (any case) are false."""
    return bool(text) and text is not None and text.lower() not in ("0", "f", "false")


def _json(body: Mapping[str, Any], code: int) -> web.Response:
    return web.Response(status=code, body=json.dumps(body).encode(), content_type="application/json")


SELECTABLE = {"metadata.name", "metadata.namespace"}
SELECTABLE_BY_TYPE = {"pods": {"spec.nodeName"}}


def _parse_selector(text: str, rtype: ResourceType) -> list[tuple[str, str]]:
    out = []
    for term in filter(None, text.split(",")):
        if "!=" in term:
            raise ValueError(f"fake API: unsupported field selector {term!r}")
        name, _, value = term.replace("==", "=").partition("=")
        if name not in SELECTABLE | SELECTABLE_BY_TYPE.get(rtype.plural, set()):
            raise ValueError(f'"{name}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        out.append((name, value))
    return out


def _matches(obj: Obj, selector: list[tuple[str, str]]) -> bool:
    for path, value in selector:
        cur: Any = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if str(cur or "") != value:
            return False
    return True


# -- object builders (real JSON shapes) ------------------------------------------------------------
def pod(name: str, ns: str = "default", node: str = "n1", ip: str = "10.244.1.5", **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}], **spec},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def service(name: str, ns: str = "default", cluster_ip: str = "10.96.0.10", port: int = 80) -> Obj:
    ips = [cluster_ip]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": ips,
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": port}],
            "selector": {"app": name},
        },
    }


def endpoint_slice(name: str, service_name: str, ns: str = "default", ips: tuple[str, ...] = ()) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": f"p-{i}"}}
            for i, ip in enumerate(ips)
        ],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }


def namespace(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def service_entry(name: str, host: str, ns: str = "default", address: str | None = None) -> Obj:
    spec: Obj = {
        "hosts": [host],
        "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
        "location": "MESH_EXTERNAL",
        "resolution": "DNS",
    }
    if address:
        spec["addresses"] = [address]
    return {
        "apiVersion": f"{ISTIO}/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def workload_entry(name: str, address: str, ns: str = "default", labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": f"{ISTIO}/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"address": address, "labels": labels or {}},
    }
