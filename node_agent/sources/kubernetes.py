"""Kubernetes API source: list + watch reflectors feeding the name table, for one or more clusters.

Per cluster (the local one: in-cluster config, or the ``kubeconfigs`` entry named ``cluster_name``;
remote ones: every other ``cluster=path`` entry) one reflector per resource:

* v1 Pods of this node (``fieldSelector=spec.nodeName=<node>``; local cluster only),
* v1 Services, discovery.k8s.io/v1 EndpointSlices, v1 Namespaces (cluster-scoped: a namespace with
  no Service in it still exists for DNS),
* networking.istio.io ServiceEntries and WorkloadEntries (v1, else v1beta1, else v1alpha3; a CRD
  that is not installed counts as listed-empty and is looked for again every `crd_recheck` seconds).

A reflector LISTs (paginated, limit/continue), hands the whole result to the table as one snapshot,
then WATCHes from the list's resourceVersion with bookmarks, applying events in small time-sliced
batches. 410 Gone (HTTP status at watch start, or an ERROR event in the stream) means the history
it needs is compacted: LIST again. Any other failure reconnects the watch from the last
resourceVersion after an exponential backoff with decorrelated jitter (0.5 s .. 30 s).

Objects stay raw JSON dicts (the client's `_preload_content=False`; its model deserialization is
slow and lossy) and go through `convert.to_record`, the converter the static source uses too. An
object it cannot convert is left out (the rest of the list or stream goes on), with a warning naming
it and a count in `rejected` by (source, kind): nodeagent_source_rejected_objects_total. Each
conversion counts: a bad object is counted again when it is modified or listed again.

Table ownership: each reflector is its own source ``kubernetes:<cluster>/<resource>``. The first
list goes through `NameTable.replace`; a later re-list is applied as a diff (deletes of keys that
are gone + upserts) against the keys this reflector delivered, because `NameTable.apply` files
new keys under the cluster's most recent snapshot owner, so a `replace` of one resource could
otherwise remove records another resource's watch added.

The table's `synced` flag turns on when every reflector of every cluster has finished its first
list; until then the agent forwards everything and reports not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from node_agent.mesh.model import Change, Key, Kind, Record, Snapshot
from node_agent.mesh.table import NameTable
from node_agent.mesh.vip import claim_order
from node_agent.settings import SourceSettings
from node_agent.sources.convert import ISTIO_GROUP, describe, to_record

log = logging.getLogger(__name__)

ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: Kind
    group: str  # "" = core
    versions: tuple[str, ...]
    optional: bool = False  # a CRD: 404 means "not installed", not an error
    node_scoped: bool = False  # pods: this node's only, local cluster only
    # Namespaces: the local cluster's only. Istio's multicluster model assumes namespace sameness, and
    # remote clusters' reader credentials need not grant them (a 403 would keep that cluster unsynced).
    local_only: bool = False
    namespaced: bool = True  # False: cluster-scoped, records have namespace ""

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


RESOURCES: tuple[Resource, ...] = (
    Resource("pods", Kind.POD, "", ("v1",), node_scoped=True),
    Resource("services", Kind.SERVICE, "", ("v1",)),
    Resource("endpointslices", Kind.ENDPOINT_SLICE, "discovery.k8s.io", ("v1",)),
    Resource("namespaces", Kind.NAMESPACE, "", ("v1",), namespaced=False, local_only=True),
    Resource("serviceentries", Kind.SERVICE_ENTRY, ISTIO_GROUP, ISTIO_VERSIONS, optional=True),
    Resource("workloadentries", Kind.WORKLOAD_ENTRY, ISTIO_GROUP, ISTIO_VERSIONS, optional=True),
)


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    kubeconfig: str | None  # None: in-cluster service account
    local: bool


def cluster_specs(settings: SourceSettings) -> list[ClusterSpec]:
    """The clusters to watch: the local one first, then the remote ones; ValueError on bad entries."""
    entries: dict[str, str] = {}
    for entry in settings.kubeconfigs:
        name, sep, path = entry.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"kubeconfigs entry {entry!r}: expected cluster=path")
        if name in entries:
            raise ValueError(f"kubeconfigs: cluster {name!r} given twice")
        entries[name] = path
    local = ClusterSpec(settings.cluster_name, entries.pop(settings.cluster_name, None), True)
    return [local] + [ClusterSpec(name, path, False) for name, path in entries.items()]


def source_name(cluster: str, resource: str) -> str:
    return f"kubernetes:{cluster}/{resource}"


class Gone(Exception):
    """410: the resourceVersion (or continue token) is compacted away; list again."""


class NotFound(Exception):
    """404 on a resource (a CRD that is not installed)."""


class APIError(Exception):
    """Any other failed request or broken stream: retried with backoff."""


class Unauthorized(APIError):
    """401: the credentials expired (a rotated token, an exec plugin's short-lived one): reload them."""


class Credentials:
    """A cluster's Configuration, reloaded in place on 401 (requests read the token from it each time)."""

    RELOAD_INTERVAL = 10.0

    def __init__(self, spec: ClusterSpec, cfg: k8s.Configuration) -> None:
        self.spec, self.cfg = spec, cfg
        self._lock = asyncio.Lock()
        self._loaded = time.monotonic()

    async def reload(self) -> None:
        async with self._lock:  # every reflector of the cluster sees the 401 at once: reload once
            if time.monotonic() - self._loaded < self.RELOAD_INTERVAL:
                return
            self._loaded = time.monotonic()
            try:
                await load_configuration(self.spec, self.cfg)
                log.info("kubernetes source %s: credentials reloaded", self.spec.name)
            except Exception as e:
                log.warning("kubernetes source %s: cannot reload config: %s", self.spec.name, e)


class Backoff:
    """Decorrelated jitter: each delay is uniform in [base, 3 * previous], capped."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap
        self._prev = base

    def next(self) -> float:
        delay = min(self.cap, random.uniform(self.base, self._prev * 3))
        self._prev = delay
        return delay

    def reset(self) -> None:
        self._prev = self.base


class KubernetesSources:
    """Every reflector of every cluster; `run()` until cancelled (closes all HTTP sessions)."""

    def __init__(
        self,
        settings: SourceSettings,
        table: NameTable,
        on_change: Callable[[set[str]], None],
        state: dict[str, tuple[bool, float]],
        *,
        rejected: Counter[tuple[str, str]] | None = None,
        page_size: int = 500,
        watch_timeout: float = 300.0,
        batch_window: float = 0.02,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        crd_recheck: float = 60.0,
    ) -> None:
        self.settings = settings
        self.table = table
        self.on_change = on_change
        self.state = state
        # (source, kind) -> objects that could not be converted (plain ints: read at scrape time)
        self.rejected: Counter[tuple[str, str]] = Counter() if rejected is None else rejected
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.batch_window = batch_window
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.crd_recheck = crd_recheck
        self.clusters = cluster_specs(settings)
        self._pending: set[str] = set()  # sources whose first list has not completed
        self._plan: list[tuple[ClusterSpec, list[Resource]]] = []
        for spec in self.clusters:
            resources = []
            for res in RESOURCES:
                if (res.node_scoped or res.local_only) and not spec.local:
                    continue
                if res.node_scoped and not settings.node_name:
                    # Without a node name every pod of the cluster would come, none of them ours.
                    log.warning("kubernetes source: node_name is not set, pods of this node are not watched")
                    continue
                resources.append(res)
                name = source_name(spec.name, res.plural)
                self._pending.add(name)
                self.state.setdefault(name, (False, 0.0))
            self._plan.append((spec, resources))
        if not self._pending:
            table.synced = True

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for spec, resources in self._plan:
                tg.create_task(self._run_cluster(spec, resources), name=f"kubernetes:{spec.name}")

    async def _run_cluster(self, spec: ClusterSpec, resources: list[Resource]) -> None:
        backoff = Backoff(self.backoff_base, self.backoff_cap)
        while True:
            try:
                cfg = await load_configuration(spec)
                break
            except Exception as e:  # no service account, unreadable kubeconfig, exec plugin failure
                delay = backoff.next()
                log.warning("kubernetes source %s: cannot load config (%s); retry in %.1fs", spec.name, e, delay)
                await asyncio.sleep(delay)
        creds = Credentials(spec, cfg)
        async with k8s.ApiClient(cfg) as api:
            async with asyncio.TaskGroup() as tg:
                for res in resources:
                    selector = f"spec.nodeName={self.settings.node_name}" if res.node_scoped else None
                    reflector = Reflector(self, api, creds, res, selector)
                    tg.create_task(reflector.run(), name=reflector.source)

    def listed(self, source: str) -> None:
        """A reflector completed a list (or found its CRD missing)."""
        self.state[source] = (True, time.time())
        if source in self._pending:
            self._pending.discard(source)
            if not self._pending and not self.table.synced:
                self.table.synced = True
                log.info("kubernetes sources synced: %s", ", ".join(s.name for s in self.clusters))

    def changed(self, names: set[str]) -> None:
        if names:
            self.on_change(names)


async def load_configuration(spec: ClusterSpec, cfg: k8s.Configuration | None = None) -> k8s.Configuration:
    """A Configuration of its own per cluster (the library's global default is never touched)."""
    if cfg is None:
        cfg = k8s.Configuration()
    if spec.kubeconfig is None:
        k8s_config.load_incluster_config(client_configuration=cfg)
    else:
        await k8s_config.load_kube_config(config_file=spec.kubeconfig, client_configuration=cfg, persist_config=False)
    return cfg


class Reflector:
    """List + watch of one resource of one cluster into the table."""

    def __init__(
        self,
        owner: KubernetesSources,
        api: k8s.ApiClient,
        creds: Credentials,
        res: Resource,
        field_selector: str | None,
    ) -> None:
        self.owner = owner
        self.creds = creds
        self.cluster = cluster = creds.spec.name
        self.res = res
        self.field_selector = field_selector
        self.source = source_name(cluster, res.plural)
        self.keys: set[Key] = set()  # what this reflector has put into the table
        self.resource_version = ""
        self.version = res.versions[0]  # the API version found to be served
        self.snapshotted = False  # first list delivered through table.replace
        self._backoff = Backoff(owner.backoff_base, owner.backoff_cap)
        self._progress = True  # events arrived since the last failure (or nothing failed yet)
        self._gone = False  # a 410 came, and no event since
        if res.group == "":
            core = k8s.CoreV1Api(api)
            core_lists: dict[Kind, Callable[..., Any]] = {
                Kind.POD: core.list_pod_for_all_namespaces,
                Kind.SERVICE: core.list_service_for_all_namespaces,
                Kind.NAMESPACE: core.list_namespace,
            }
            self._list_fn: Callable[..., Any] = core_lists[res.kind]
        elif res.group == "discovery.k8s.io":
            self._list_fn = k8s.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces
        else:
            custom = k8s.CustomObjectsApi(api)

            def list_custom(**kw: Any) -> Any:
                return custom.list_cluster_custom_object(res.group, self.version, res.plural, **kw)

            self._list_fn = list_custom

    # -------------------------------------------------------------------------------------- loop --
    async def run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    if not await self.sync():
                        await asyncio.sleep(self.owner.crd_recheck)
                        continue
                    need_list = False
                await self.watch()
            except Gone as e:
                need_list = True
                if not self._gone:
                    log.info("%s: %s; listing again", self.source, e)
                else:  # gone again right after the list that followed a 410: do not hammer the server
                    delay = self._backoff.next()
                    log.warning("%s: %s again; listing in %.2fs", self.source, e, delay)
                    await asyncio.sleep(delay)
                self._gone = True
            except NotFound:
                # The CRD went away under a running watch: the next list finds out and clears it.
                need_list = True
            except Exception as e:  # APIError, connection errors, timeouts, bad JSON
                if isinstance(e, Unauthorized):
                    await self.creds.reload()
                if self._progress:
                    self._backoff.reset()  # the connection worked for a while: start over small
                self._progress = False
                delay = self._backoff.next()
                log.warning("%s: %s; retry in %.2fs", self.source, _describe(e), delay)
                await asyncio.sleep(delay)

    async def _request(self, **params: Any) -> aiohttp.ClientResponse:
        if self.field_selector:
            params["field_selector"] = self.field_selector
        resp: aiohttp.ClientResponse = await self._list_fn(_preload_content=False, **params)
        return resp

    # -------------------------------------------------------------------------------------- list --
    async def sync(self) -> bool:
        """List everything into the table; False if the resource is not served (a CRD not installed)."""
        versions = self.res.versions if self.res.optional else (self.version,)
        # Try the version that worked last first (no 404 round trips on every re-list of old Istios).
        ordered = [self.version] + [v for v in versions if v != self.version]
        for version in ordered:
            self.version = version
            try:
                records, keys, rv = await self._list_pages(version)
            except NotFound:
                if not self.res.optional:
                    raise APIError(f"{self.res.plural} not found (404)") from None
                continue
            self._deliver(records, keys)
            self.resource_version = rv
            self._backoff.reset()
            self.owner.listed(self.source)
            log.info("%s: listed %d objects at resourceVersion %s", self.source, len(records), rv)
            return True
        self.version = versions[0]
        log.info("%s: not served (CRD not installed); looking again in %.0fs", self.source, self.owner.crd_recheck)
        if self.keys:  # it was there before: its objects are gone with it
            self._deliver([], set())
        self.owner.listed(self.source)
        return False

    async def _list_pages(self, version: str) -> tuple[list[Record], set[Key], str]:
        api_version = self.res.api_version(version)
        records: list[Record] = []
        keys: set[Key] = set()
        token = ""
        while True:
            params: dict[str, Any] = {
                "limit": self.owner.page_size,
                "_request_timeout": aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
            }
            if token:
                params["_continue"] = token
            async with await self._request(**params) as resp:
                await _check(resp)
                body = await resp.read()
            page = json.loads(body)
            for obj in page.get("items") or ():
                # List items of built-in kinds carry no kind/apiVersion; the converter dispatches on them.
                obj.setdefault("kind", self.res.kind.value)
                obj.setdefault("apiVersion", api_version)
                key, record = self._convert(obj)
                if record is not None and key not in keys:
                    keys.add(key)
                    records.append(record)
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return records, keys, str(meta.get("resourceVersion") or "")

    def _deliver(self, records: list[Record], keys: set[Key]) -> None:
        if not self.snapshotted:
            names = self.owner.table.replace(Snapshot(source=self.source, cluster=self.cluster, records=records))
            self.snapshotted = True
        else:
            # A re-list: the diff against what this reflector delivered (see the module doc).
            changes = [Change(k, None) for k in self.keys - keys]
            recs: Iterable[Record] = (
                sorted(records, key=claim_order) if self.res.kind is Kind.SERVICE_ENTRY else records
            )
            changes.extend(Change(Key.of(r), r) for r in recs)
            names = self.owner.table.apply(changes)
        self.keys = keys
        self.owner.changed(names)

    def _convert(self, obj: dict[str, Any]) -> tuple[Key, Record | None]:
        key = self._key(obj)
        try:
            return key, to_record(obj, self.cluster)
        except ValueError as e:
            self.owner.rejected[(self.source, str(obj.get("kind") or self.res.kind.value))] += 1
            log.warning("%s: %s left out, it cannot be converted: %s", self.source, describe(obj), e)
            return key, None

    # ------------------------------------------------------------------------------------- watch --
    async def watch(self) -> None:
        """One watch request, until the server ends it (clean return) or it fails (exception)."""
        timeout = self.owner.watch_timeout * random.uniform(0.8, 1.2)
        resp = await self._request(
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self.resource_version,
            timeout_seconds=max(1, int(timeout)),
            # The server ends the stream after timeoutSeconds; bookmarks come every minute or so. A
            # socket silent far beyond that is a dead connection (a partition, a vanished LB).
            _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout + 60),
        )
        batch: dict[Key, Record | None] = {}
        try:
            await _check(resp)
            await self._stream(resp, batch)
            self._backoff.reset()  # a clean end (server-side timeout)
        finally:
            self._flush(batch)
            resp.close()

    async def _stream(self, resp: aiohttp.ClientResponse, batch: dict[Key, Record | None]) -> None:
        loop = asyncio.get_running_loop()
        window = self.owner.batch_window
        buf = bytearray()
        deadline: float | None = None
        while True:
            wait = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                # readany() is cancel-safe: on timeout no bytes are lost.
                chunk = await asyncio.wait_for(resp.content.readany(), wait)
            except aiohttp.ServerTimeoutError:
                raise  # the socket went silent: a subclass of TimeoutError, not the batch window
            except TimeoutError:
                self._flush(batch)
                deadline = None
                continue
            if not chunk:
                if buf.strip():
                    raise APIError("watch stream ended inside an event")
                return
            buf += chunk
            start = 0
            while (nl := buf.find(b"\n", start)) >= 0:
                line = bytes(buf[start:nl])
                start = nl + 1
                if line.strip():
                    self._event(json.loads(line), batch)
            del buf[:start]
            if batch and deadline is None:
                deadline = loop.time() + window
            if deadline is not None and loop.time() >= deadline:
                self._flush(batch)
                deadline = None

    def _event(self, event: dict[str, Any], batch: dict[Key, Record | None]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        if kind == "ERROR":
            code = obj.get("code")
            message = f"{obj.get('reason')}: {obj.get('message')}"
            if code == 410:
                raise Gone(f"watch: {message}")
            if code == 404 and self.res.optional:
                raise NotFound(message)
            raise APIError(f"watch error event {code}: {message}")
        rv = meta.get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = str(rv)
            self._progress = True
            self._gone = False
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.debug("%s: ignoring watch event %r", self.source, kind)
            return
        obj.setdefault("kind", self.res.kind.value)
        obj.setdefault("apiVersion", self.res.api_version(self.version))
        if kind == "DELETED":
            key, record = self._key(obj), None
        else:
            key, record = self._convert(obj)
        if record is None:
            if key in self.keys:  # deleted, or no longer something the table uses
                batch[key] = None
                self.keys.discard(key)
        else:
            batch[key] = record
            self.keys.add(key)
        if rv:
            self.resource_version = str(rv)
        self._progress = True
        self._gone = False

    def _key(self, obj: dict[str, Any]) -> Key:
        """The table key of an object (the same one Key.of gives its record; convert's namespace default)."""
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default") if self.res.namespaced else ""
        return Key(self.res.kind, self.cluster, namespace, str(meta.get("name") or ""))

    def _flush(self, batch: dict[Key, Record | None]) -> None:
        if not batch:
            return
        changes = [Change(k, r) for k, r in batch.items()]
        batch.clear()
        self.owner.changed(self.owner.table.apply(changes))


async def _check(resp: aiohttp.ClientResponse) -> None:
    """Raise for a non-200 answer (reading the Status body for the message)."""
    if resp.status == 200:
        return
    message = ""
    with contextlib.suppress(Exception):
        status = json.loads(await resp.read())
        message = f"{status.get('reason')}: {status.get('message')}"
    if resp.status == 410:
        raise Gone(f"HTTP 410 {message}")
    if resp.status == 404:
        raise NotFound(f"HTTP 404 {message}")
    if resp.status == 401:
        raise Unauthorized(f"HTTP 401 {message}")
    raise APIError(f"HTTP {resp.status} {message or resp.reason}")


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__
