"""Kubernetes API source against the list/watch double in tests/support/fakeapi.py (real HTTP, real JSON)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE

from node_agent.app.agent import Agent as AgentProcess
from node_agent.app.metrics import parse_exposition
from node_agent.config import from_mapping
from node_agent.mesh.model import Key, Kind, Namespace, Service
from node_agent.mesh.table import AnswerKind, NameTable
from node_agent.mesh.views import View
from node_agent.settings import SourceSettings, TableSettings
from node_agent.sources import kubernetes as kube
from node_agent.sources.kubernetes import KubernetesSources, cluster_specs
from tests.support import fakeapi
from tests.support.fakeapi import FakeAPI
from tests.support.netutil import free_port

pytestmark = pytest.mark.timeout(30)

DEFAULT = View("default", (), 5)
ALL = tuple(r.plural for r in kube.RESOURCES)  # what the source watches (namespaces among them)
FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.2, "batch_window": 0.01}


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


async def until(pred: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


def a(table: NameTable, name: str, view: View = DEFAULT) -> list[str] | None:
    """A records of `name`; None for NXDOMAIN / not the table's."""
    ans = table.lookup(view, name, QTYPE.A)
    if ans.kind is not AnswerKind.RECORDS:
        return None
    return sorted(str(rr.rdata) for rr in ans.records if rr.rtype == QTYPE.A)


class Agent:
    """KubernetesSources wired to a table, as the agent does, for the length of an `async with`."""

    def __init__(
        self,
        tmp_path: Path,
        local: FakeAPI | None,
        remotes: dict[str, FakeAPI] | None = None,
        node: str = "n1",
        **options: Any,
    ) -> None:
        entries = []
        if local is not None:
            entries.append(f"Kubernetes={local.kubeconfig(tmp_path / 'local.yaml')}")
        for name, api in (remotes or {}).items():
            entries.append(f"{name}={api.kubeconfig(tmp_path / f'{name}.yaml', name)}")
        self.settings = SourceSettings(kubernetes=True, kubeconfigs=tuple(entries), node_name=node)
        self.table = NameTable(TableSettings())
        self.changes: list[set[str]] = []
        self.state: dict[str, tuple[bool, float]] = {}
        self.sources = KubernetesSources(
            self.settings, self.table, self.changes.append, self.state, **{**FAST, **options}
        )
        self.task: asyncio.Task[None] | None = None

    @property
    def changed(self) -> set[str]:
        return set().union(*self.changes)

    async def __aenter__(self) -> Agent:
        self.task = asyncio.ensure_future(self.sources.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    async def synced(self) -> None:
        await until(lambda: self.table.synced, what="synced")


def populate(api: FakeAPI) -> None:
    api.add(fakeapi.pod("mine", node="n1", ip="10.244.1.5"))
    api.add(fakeapi.pod("theirs", node="n2", ip="10.244.2.5"))
    api.add(fakeapi.service("web", cluster_ip="10.96.0.20"))
    headless = fakeapi.service("db", cluster_ip="None")
    headless["spec"]["clusterIPs"] = ["None"]
    api.add(headless)
    api.add(fakeapi.endpoint_slice("db-abc12", "db", ips=("10.244.1.7", "10.244.3.8")))
    api.add(fakeapi.service_entry("ext", "api.example.com", address="240.240.0.9"))
    api.add(fakeapi.workload_entry("vm1", "10.10.0.1", labels={"app": "legacy"}))


# ----------------------------------------------------------------------------------- first list --
def test_first_list_fills_table_and_synced_waits_for_every_resource(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            api.fail_next(1000, 503, path="endpointslices")  # one resource cannot list yet
            async with Agent(tmp_path, api) as agent:
                others = [f"kubernetes:Kubernetes/{r}" for r in ("pods", "services", "serviceentries")]
                await until(lambda: all(agent.state.get(k, (False,))[0] for k in others), what="lists")
                await asyncio.sleep(0.2)
                assert not agent.table.synced
                assert agent.state["kubernetes:Kubernetes/endpointslices"][0] is False
                assert a(agent.table, "web.default.svc.cluster.local") == ["10.96.0.20"]

                api.clear_failures()
                await agent.synced()
                t = agent.table
                assert [p.name for p in t.pods()] == ["mine"]  # fieldSelector spec.nodeName=n1
                view = t.view_for("10.244.1.5")
                assert view is not None and view.namespace == "default"
                assert t.view_for("10.244.2.5") is None
                assert a(t, "db.default.svc.cluster.local") == ["10.244.1.7", "10.244.3.8"]
                assert a(t, "10-244-1-7.db.default.svc.cluster.local") == ["10.244.1.7"]
                assert a(t, "api.example.com") == ["240.240.0.9"]
                assert t.sizes()["WorkloadEntry"] == 1
                assert set(agent.state) == {
                    f"kubernetes:Kubernetes/{r}"
                    for r in ALL
                }
                assert all(ok and when > 0 for ok, when in agent.state.values())
                assert "web.default.svc.cluster.local" in agent.changed
            pods = api.log("pods", watch=False)
            assert pods and all(r.query["fieldSelector"] == "spec.nodeName=n1" for r in api.log("pods"))
            assert all(r.query.get("limit") == "500" for r in api.log(watch=False))

    run(main)


def test_pagination_follows_continue_tokens(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            for i in range(7):
                api.add(fakeapi.service(f"s{i}", cluster_ip=f"10.96.1.{i}"))
            async with Agent(tmp_path, api, page_size=3) as agent:
                await agent.synced()
                assert agent.table.sizes()["Service"] == 7
                assert a(agent.table, "s6.default.svc.cluster.local") == ["10.96.1.6"]
                await until(lambda: api.log("services", watch=True), what="watch")
            lists = api.log("services", watch=False)
            assert [r.query.get("limit") for r in lists] == ["3", "3", "3"]
            assert "continue" not in lists[0].query
            assert lists[1].query["continue"] and lists[2].query["continue"] != lists[1].query["continue"]
            # The watch starts at the list's (first page's) resourceVersion.
            watch = api.log("services", watch=True)[0]
            assert watch.query["resourceVersion"] == "107"

    run(main)


def test_expired_continue_token_restarts_the_list(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            for i in range(4):
                api.add(fakeapi.service(f"s{i}", cluster_ip=f"10.96.1.{i}"))
            # The first page is served; then history is compacted, so the continue token is too old.
            seen: list[int] = []
            orig = api._list

            def listing(*args: Any) -> Any:
                resp = orig(*args)
                if args[1].plural == "services" and not seen:
                    seen.append(1)
                    api.delete(fakeapi.service("s0"))
                    api.compact()
                return resp

            api._list = listing  # type: ignore[method-assign,assignment]
            async with Agent(tmp_path, api, page_size=2) as agent:
                await agent.synced()
                assert agent.table.sizes()["Service"] == 3
                assert a(agent.table, "s0.default.svc.cluster.local") is None
            lists = api.log("services", watch=False)
            assert [r.status for r in lists][:2] == [200, 410]
            assert "continue" not in lists[2].query

    run(main)


# ---------------------------------------------------------------------------------------- watch --
def test_watch_events_reach_lookups_and_flush_names(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            async with Agent(tmp_path, api) as agent:
                await agent.synced()
                await until(lambda: api.watches() == len(ALL), what="watches")
                t = agent.table
                agent.changes.clear()

                api.add(fakeapi.service("new", cluster_ip="10.96.0.30"))
                await until(lambda: a(t, "new.default.svc.cluster.local") == ["10.96.0.30"], what="ADDED")
                assert "new.default.svc.cluster.local" in agent.changed

                agent.changes.clear()
                api.modify(fakeapi.service("new", cluster_ip="10.96.0.31"))
                await until(lambda: a(t, "new.default.svc.cluster.local") == ["10.96.0.31"], what="MODIFIED")
                assert "new.default.svc.cluster.local" in agent.changed

                agent.changes.clear()
                api.delete(fakeapi.service("new"))
                await until(lambda: a(t, "new.default.svc.cluster.local") is None, what="DELETED")
                assert "new.default.svc.cluster.local" in agent.changed

                # Headless answers follow the slices.
                api.modify(fakeapi.endpoint_slice("db-abc12", "db", ips=("10.244.1.7",)))
                await until(lambda: a(t, "db.default.svc.cluster.local") == ["10.244.1.7"], what="slice")
                # A slice that loses its service label names nothing any more: removed.
                orphan = fakeapi.endpoint_slice("db-abc12", "db", ips=("10.244.1.7",))
                orphan["metadata"]["labels"] = {}
                api.modify(orphan)
                await until(lambda: t.sizes()["EndpointSlice"] == 0, what="orphaned slice")

                # Pods: only this node's arrive; a pod scheduled here later shows up as ADDED.
                api.add(fakeapi.pod("elsewhere", node="n2", ip="10.244.2.9"))
                late = fakeapi.pod("late", node="", ip="10.244.1.9")
                api.add(late)
                api.modify(fakeapi.pod("late", node="n1", ip="10.244.1.9"))
                await until(lambda: t.view_for("10.244.1.9") is not None, what="scheduled pod")
                assert sorted(p.name for p in t.pods()) == ["late", "mine"]

                # A malformed object is skipped; the watch goes on.
                bad = fakeapi.service("bad")
                bad["spec"]["ports"] = [{"port": "http"}]
                api.add(bad)
                api.add(fakeapi.service("after", cluster_ip="10.96.0.40"))
                await until(lambda: a(t, "after.default.svc.cluster.local") == ["10.96.0.40"], what="after bad")
                assert a(t, "bad.default.svc.cluster.local") is None
                assert len(api.log("services", watch=True)) == 1

    run(main)


def test_watch_events_are_applied_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            async with Agent(tmp_path, api, batch_window=0.2) as agent:
                await agent.synced()
                await until(lambda: api.watches() == len(ALL), what="watches")
                calls: list[int] = []
                orig = agent.table.apply

                def apply(changes: Any) -> set[str]:
                    changes = list(changes)
                    calls.append(len(changes))
                    return orig(changes)

                monkeypatch.setattr(agent.table, "apply", apply)
                for i in range(50):
                    api.add(fakeapi.service(f"b{i}", cluster_ip=f"10.96.2.{i}"))
                    if i % 10 == 0:
                        await asyncio.sleep(0.01)  # spread over several chunks
                await until(lambda: agent.table.sizes()["Service"] == 50, what="all services")
                assert sum(calls) == 50 and len(calls) <= 2

    run(main)


def test_bookmark_advances_the_resource_version_of_the_next_watch(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            async with Agent(tmp_path, api) as agent:
                await agent.synced()
                await until(lambda: api.watches("pods") == 1, what="pod watch")
                first = api.log("pods", watch=True)[0]
                assert first.query["allowWatchBookmarks"].lower() == "true"
                for i in range(3):  # changes the pod watch of n1 does not see
                    api.add(fakeapi.service(f"x{i}", cluster_ip=f"10.96.3.{i}"))
                    api.add(fakeapi.pod(f"other{i}", node="n2", ip=f"10.244.2.{i + 20}"))
                api.bookmark()
                await asyncio.sleep(0.1)
                api.end_watches()  # a clean end (as timeoutSeconds): reconnect at once, from the bookmark
                await until(lambda: len(api.log("pods", watch=True)) == 2, what="second pod watch")
                second = api.log("pods", watch=True)[1]
                assert int(first.query["resourceVersion"]) < int(second.query["resourceVersion"]) == api.rv
                assert len(api.log("pods", watch=False)) == 1  # no re-list

    run(main)


# ------------------------------------------------------------------------------------ 410 Gone --
@pytest.mark.parametrize("as_event", [False, True], ids=["http-410", "error-event"])
def test_gone_relists_and_the_table_ends_consistent(tmp_path: Path, as_event: bool) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            api.expire_as_event = as_event
            async with Agent(tmp_path, api) as agent:
                await agent.synced()
                await until(lambda: api.watches() == len(ALL), what="watches")
                t = agent.table
                # Objects that arrived by watch must survive the re-list of every resource.
                api.add(fakeapi.service("watched", cluster_ip="10.96.0.50"))
                api.add(fakeapi.service_entry("watched-se", "watched.example.com", address="240.240.0.10"))
                await until(lambda: a(t, "watched.example.com") == ["240.240.0.10"], what="watched")

                # The streams break; while nobody watches, things change and history is compacted.
                listed_at = {source: when for source, (_, when) in agent.state.items()}
                assert len(listed_at) == len(ALL)  # one per resource: the wait below covers them all
                api.drop_watches()
                api.delete(fakeapi.service("web"))
                api.delete(fakeapi.pod("mine"))
                api.add(fakeapi.service("gap", cluster_ip="10.96.0.60"))
                api.compact()
                await until(lambda: all(len(api.log(r, watch=False)) == 2 for r in ALL), what="re-lists")
                # A re-list is asked for before its answer is applied: wait until every one was delivered.
                await until(lambda: all(agent.state[src][1] > when for src, when in listed_at.items()),
                            what="re-lists applied")
                await until(lambda: a(t, "gap.default.svc.cluster.local") == ["10.96.0.60"], what="gap add")
                assert a(t, "web.default.svc.cluster.local") is None
                assert t.pods() == []
                assert a(t, "watched.default.svc.cluster.local") == ["10.96.0.50"]
                assert a(t, "watched.example.com") == ["240.240.0.10"]
                assert a(t, "db.default.svc.cluster.local") == ["10.244.1.7", "10.244.3.8"]
                assert "web.default.svc.cluster.local" in agent.changed
                watches = api.log("services", watch=True)
                assert watches[1].status == (200 if as_event else 410)
                await until(lambda: len(api.log("services", watch=True)) == 3, what="watch after re-list")
                assert api.log("services", watch=True)[2].query["resourceVersion"] == str(api.rv)

                # Live again.
                api.add(fakeapi.service("later", cluster_ip="10.96.0.70"))
                await until(lambda: a(t, "later.default.svc.cluster.local") == ["10.96.0.70"], what="later")

    run(main)


# ------------------------------------------------------------------------------ errors, backoff --
def test_dropped_stream_reconnects_with_backoff_and_500s_are_retried(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            api.fail_next(2, 500, path="/api/v1/services")
            async with Agent(tmp_path, api, backoff_base=0.15, backoff_cap=0.45) as agent:
                await agent.synced()
                lists = api.log("services", watch=False)
                assert [r.status for r in lists] == [500, 500, 200]
                assert lists[1].t - lists[0].t >= 0.14 and lists[2].t - lists[1].t >= 0.14
                await until(lambda: api.watches("services") == 1, what="watch")
                rv = api.log("services", watch=True)[-1].query["resourceVersion"]

                dropped = time.monotonic()
                api.drop_watches()
                await until(lambda: len(api.log("services", watch=True)) == 2, what="reconnect")
                again = api.log("services", watch=True)[1]
                assert again.t - dropped >= 0.14  # not a tight loop
                assert again.query["resourceVersion"] == rv  # resumes, no re-list
                assert len(api.log("services", watch=False)) == 3

                # A watch answered 500 is retried too.
                api.fail_next(1, 500, path="/api/v1/services")
                api.drop_watches()
                await until(lambda: [r.status for r in api.log("services", watch=True)][-1:] == [200], what="w")
                await until(lambda: len(api.log("services", watch=True)) == 4, what="retry after 500")
                assert [r.status for r in api.log("services", watch=True)] == [200, 200, 500, 200]
                api.add(fakeapi.service("alive", cluster_ip="10.96.0.80"))
                await until(lambda: a(agent.table, "alive.default.svc.cluster.local") is not None, what="live")

                # A clean end of the stream (server timeout) reconnects at once.
                await until(lambda: api.watches("services") == 1, what="watching")
                ended = time.monotonic()
                api.end_watches()
                await until(lambda: len(api.log("services", watch=True)) == 5, what="clean reconnect")
                assert api.log("services", watch=True)[4].t - ended < 0.25

    run(main)


def test_watch_timeout_is_sent_and_honoured(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            async with Agent(tmp_path, api, watch_timeout=1.0) as agent:
                await agent.synced()
                await until(lambda: len(api.log("services", watch=True)) >= 2, timeout=4, what="rewatch")
                w = api.log("services", watch=True)
                assert w[0].query["timeoutSeconds"] == "1"
                assert len(api.log("services", watch=False)) == 1

    run(main)


def test_401_reloads_the_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube.Credentials, "RELOAD_INTERVAL", 0.0)

    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            api.token = "fake-token"
            async with Agent(tmp_path, api) as agent:
                await agent.synced()
                await until(lambda: api.watches() == len(ALL), what="watches")
                api.token = "rotated"
                api.kubeconfig(tmp_path / "local.yaml", token="rotated")
                before = {p: len(api.log(p, watch=True)) for p in ALL}
                api.drop_watches()
                await until(lambda: 401 in [r.status for r in api.log(watch=True)], what="401")

                def watching_again() -> bool:
                    # Each resource's newest watch since the drop was let in (with the rotated token).
                    # Which reflectors see a 401 first depends on when each reconnects, before or after
                    # another one's reload: the log's order is not the property.
                    since = {p: api.log(p, watch=True)[before[p]:] for p in ALL}
                    return all(w and w[-1].status == 200 for w in since.values())

                await until(watching_again, what="watching again")
                api.add(fakeapi.service("fresh", cluster_ip="10.96.0.90"))
                await until(lambda: a(agent.table, "fresh.default.svc.cluster.local") is not None, what="live")

    run(main)


# ---------------------------------------------------------------------------------------- CRDs --
def test_missing_crds_count_as_synced_and_are_looked_for_again(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI(istio_versions=()) as api:
            populate(api)
            async with Agent(tmp_path, api, crd_recheck=0.3) as agent:
                await agent.synced()
                assert agent.state["kubernetes:Kubernetes/serviceentries"][0] is True
                assert agent.table.sizes()["ServiceEntry"] == 0
                assert a(agent.table, "web.default.svc.cluster.local") == ["10.96.0.20"]
                tried = [r.path for r in api.log("serviceentries")]
                assert tried[:3] == [f"/apis/networking.istio.io/{v}/serviceentries" for v in kube.ISTIO_VERSIONS]

                api.istio_versions = {"v1beta1"}  # Istio installed later, an older one
                await until(lambda: a(agent.table, "api.example.com") == ["240.240.0.9"], what="CRD appears")
                api.add(fakeapi.service_entry("more", "more.example.com", address="240.240.0.11"))
                await until(lambda: a(agent.table, "more.example.com") == ["240.240.0.11"], what="SE watch")
                assert api.log("serviceentries", watch=True)[-1].path.startswith("/apis/networking.istio.io/v1beta1/")

                api.istio_versions = set()  # uninstalled: the watch fails, the list 404s, the records go
                api.drop_watches()
                await until(lambda: a(agent.table, "api.example.com") is None, what="CRD removed")
                assert agent.table.sizes()["ServiceEntry"] == 0

    run(main)


# ------------------------------------------------------------------------------- multicluster --
def test_two_clusters_merge_and_sync_together(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as local, FakeAPI() as remote:
            populate(local)
            remote.add(fakeapi.pod("remote-pod", node="n1", ip="10.245.1.5"))
            remote.add(fakeapi.service("only-remote", cluster_ip="10.97.0.5"))
            remote.add(fakeapi.service("web", cluster_ip="10.97.0.20"))
            remote.fail_next(1000, 503)
            async with Agent(tmp_path, local, {"cluster-2": remote}) as agent:
                await until(lambda: agent.state.get("kubernetes:Kubernetes/services", (False,))[0], what="local")
                await asyncio.sleep(0.2)
                assert not agent.table.synced  # the remote cluster has not listed yet
                remote.clear_failures()
                await agent.synced()
                t = agent.table
                assert a(t, "only-remote.default.svc.cluster.local") == ["10.97.0.5"]
                assert a(t, "web.default.svc.cluster.local") is not None
                assert t.sizes()["Service"] == 4  # web twice (one per cluster), db, only-remote
                assert [p.name for p in t.pods()] == ["mine"]  # pods come from the local cluster only
                assert "kubernetes:cluster-2/services" in agent.state
                assert "kubernetes:cluster-2/pods" not in agent.state
                remote.delete(fakeapi.service("only-remote"))
                await until(lambda: a(t, "only-remote.default.svc.cluster.local") is None, what="remote delete")
            assert remote.log("pods") == []
            assert remote.log("services", watch=False)

    run(main)


def test_cluster_specs() -> None:
    s = SourceSettings(kubeconfigs=("east=/k/east", "Kubernetes=/k/local"), cluster_name="Kubernetes")
    assert [(c.name, c.kubeconfig, c.local) for c in cluster_specs(s)] == [
        ("Kubernetes", "/k/local", True),
        ("east", "/k/east", False),
    ]
    assert cluster_specs(SourceSettings())[0] == kube.ClusterSpec("Kubernetes", None, True)
    with pytest.raises(ValueError):
        cluster_specs(SourceSettings(kubeconfigs=("nopath",)))
    with pytest.raises(ValueError):
        cluster_specs(SourceSettings(kubeconfigs=("a=/x", "a=/y")))


def test_without_node_name_pods_are_not_watched(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            async with Agent(tmp_path, api, node="") as agent:
                await agent.synced()
                assert agent.table.pods() == []
            assert api.log("pods") == []

    run(main)


# --------------------------------------------------------------------------------- shutdown ----
def test_cancel_closes_every_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clients: list[Any] = []
    real = kube.k8s.ApiClient

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            clients.append(self)

    monkeypatch.setattr(kube.k8s, "ApiClient", Recording)

    async def main() -> None:
        async with FakeAPI() as local, FakeAPI() as remote:
            populate(local)
            async with Agent(tmp_path, local, {"c2": remote}) as agent:
                await agent.synced()
                # The remote cluster's pods and namespaces are not watched (local cluster only).
                await until(lambda: local.watches() == len(ALL) and remote.watches() == len(ALL) - 2, what="watches")
            assert len(clients) == 2
            assert all(c.rest_client.pool_manager.closed for c in clients)
            await until(lambda: local.watches() == 0 and remote.watches() == 0, what="server sees close")

    run(main)


def test_records_carry_their_cluster(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            api.add(fakeapi.service("web", cluster_ip="10.96.0.20"))
            async with Agent(tmp_path, None, {"east": api}) as agent:
                await until(lambda: agent.state.get("kubernetes:east/services", (False,))[0], what="east")
                rec = agent.table._records.get(Key(Kind.SERVICE, "east", "default", "web"))
                assert isinstance(rec, Service) and rec.cluster_ips == ("10.96.0.20",)

    run(main)


# ----------------------------------------------------------------------------------- namespaces --
def test_namespaces_are_listed_and_watched(tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            api.add(fakeapi.namespace("default"))
            api.add(fakeapi.namespace("empty", labels={"team": "a"}))  # no Service in it: exists all the same
            async with Agent(tmp_path, api) as agent:
                await agent.synced()
                t = agent.table

                def namespaces() -> dict[str, tuple[tuple[str, str], ...]]:
                    return {k.name: r.labels for k, r in t._records.items() if isinstance(r, Namespace)}

                assert agent.state["kubernetes:Kubernetes/namespaces"][0] is True
                assert namespaces() == {
                    "default": (("kubernetes.io/metadata.name", "default"),),
                    "empty": (("kubernetes.io/metadata.name", "empty"), ("team", "a")),
                }
                assert Key(Kind.NAMESPACE, "Kubernetes", "", "empty") in t._records  # cluster-scoped key
                await until(lambda: api.watches("namespaces") == 1, what="namespace watch")

                api.add(fakeapi.namespace("later"))
                await until(lambda: "later" in namespaces(), what="ADDED namespace")
                api.modify(fakeapi.namespace("later", labels={"x": "y"}))
                await until(lambda: ("x", "y") in namespaces().get("later", ()), what="MODIFIED namespace")
                api.delete(fakeapi.namespace("empty"))
                await until(lambda: "empty" not in namespaces(), what="DELETED namespace")
                assert sorted(namespaces()) == ["default", "later"] and t.sizes()["Namespace"] == 2
            lists = api.log("namespaces", watch=False)
            assert lists and all(r.path == "/api/v1/namespaces" and "fieldSelector" not in r.query for r in lists)

    run(main)


# ---------------------------------------------------------------------------- rejected objects --
def test_objects_that_cannot_be_converted_are_warned_about_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            listed_bad = fakeapi.service("listed-bad", ns="team")
            listed_bad["spec"]["ports"] = [{"name": "http"}]  # no port number
            api.add(listed_bad)
            api.add(fakeapi.service("listed-good", ns="team", cluster_ip="10.96.5.1"))
            async with Agent(tmp_path, api) as agent:
                await agent.synced()
                t = agent.table
                # The list goes on past the bad object: everything else is there.
                assert a(t, "listed-good.team.svc.cluster.local") == ["10.96.5.1"]
                assert a(t, "web.default.svc.cluster.local") == ["10.96.0.20"]
                assert a(t, "listed-bad.team.svc.cluster.local") is None
                assert agent.sources.rejected == {("kubernetes:Kubernetes/services", "Service"): 1}
                warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
                assert any("Service team/listed-bad" in m and "kubernetes:Kubernetes/services" in m for m in warned)

                await until(lambda: api.watches() == len(ALL), what="watches")
                bad_slice = fakeapi.endpoint_slice("db-bad", "db", ips=("10.244.9.9",))
                bad_slice["ports"] = [{"port": "eighty"}]
                api.add(bad_slice)
                api.add(fakeapi.service("after", cluster_ip="10.96.0.40"))
                await until(lambda: a(t, "after.default.svc.cluster.local") == ["10.96.0.40"], what="after bad")
                assert a(t, "db.default.svc.cluster.local") == ["10.244.1.7", "10.244.3.8"]  # db-bad left out
                assert agent.sources.rejected == {
                    ("kubernetes:Kubernetes/services", "Service"): 1,
                    ("kubernetes:Kubernetes/endpointslices", "EndpointSlice"): 1,
                }
                assert any("EndpointSlice default/db-bad" in r.getMessage() for r in caplog.records)
                assert len(api.log("endpointslices", watch=True)) == 1  # the watch was not broken by it

    run(main)


def test_rejected_objects_are_exported_as_a_metric(tmp_path: Path) -> None:
    """The whole agent (no BPF, loopback) on the fake API: the counter reaches /metrics."""

    async def main() -> None:
        async with FakeAPI() as api:
            populate(api)
            bad = fakeapi.service("bad")
            bad["spec"]["ports"] = [{"port": "http"}]
            api.add(bad)
            metrics_port = free_port()
            settings = dataclasses.replace(
                from_mapping({
                    "listen": {"address": "127.0.0.1", "port": free_port()},
                    "upstream": {"servers": ["127.0.0.1:9"]},
                    "metrics": {"address": "127.0.0.1", "port": metrics_port},
                    "sources": {"kubernetes": True, "node_name": "n1",
                                "kubeconfigs": [f"Kubernetes={api.kubeconfig(tmp_path / 'k.yaml')}"]},
                }),
                no_bpf=True,
            )
            agent = AgentProcess(settings)
            await agent.start()
            try:
                assert agent.table.synced
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                loop = asyncio.get_running_loop()
                text = await loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=3).read().decode())
                m = parse_exposition(text)
                key = 'nodeagent_source_rejected_objects_total{kind="Service",source="kubernetes:Kubernetes/services"}'
                assert m[key] == 1
                assert sum(v for k, v in m.items() if k.startswith("nodeagent_source_rejected_objects_total")) == 1
            finally:
                await agent.stop()

    run(main)
