"""kernel/answerpath.py against the real maps (root, bcc; no interface is attached here: test_tc does
that): pods into the pod map with their view ids, hot entries promoted, a view-specific entry taking
the SHARED copy out, flushes by name and wildcard, and a stop without successor switching it off."""

from __future__ import annotations

import os
import secrets
import shutil
import struct
import time
from collections.abc import Iterator

import pytest

from node_agent.dns import wire
from node_agent.kernel import answerpath, answers
from node_agent.mesh.model import Pod
from node_agent.resolve.cache import Cache

pytestmark = pytest.mark.root


@pytest.fixture
def path() -> Iterator[answerpath.KernelAnswers]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    pytest.importorskip("bcc")
    root = f"/sys/fs/bpf/na-test-ap-{secrets.token_hex(4)}"
    views = {"10.250.0.5": "view-a", "10.250.0.6": "view-b"}
    ka = answerpath.KernelAnswers(root, "169.254.20.10", "", 53, entries=128, max_udp=1232, edns_payload=1232,
                                  view_for=views.get, shared="*")
    assert ka.load(), ka.error
    try:
        yield ka
    finally:
        ka.bpf.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def q(name: str) -> wire.Query:
    qn = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    parsed = wire.parse_query(struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + qn + struct.pack("!HH", 1, 1))
    assert isinstance(parsed, wire.Query)
    return parsed


def resp(name: str) -> bytes:
    qn = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    return (struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + qn + struct.pack("!HH", 1, 1)
            + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes((10, 0, 0, 1)))


def items(cache: Cache, keys: list[tuple[str, wire.Query]], hits: int):  # type: ignore[no-untyped-def]
    for view, query in keys:
        raw = cache.raw(view, query.ck)
        assert raw is not None
        yield view, query.ck, raw, hits


def test_pods_views_promotion_and_flush(path: answerpath.KernelAnswers) -> None:
    assert path.maps is not None
    pod = Pod(namespace="a", name="p", ips=("10.250.0.5",), uid="u1")
    path.pod_changed(None, pod)  # no such veth here: in the pod map, not attached, and says why
    assert path.attacher is not None and "10.250.0.5" in path.attacher.failed
    table = path.bpf[answers.PODS]
    got = table[answers._as(table.Key, answers.ip_key("10.250.0.5"))]
    assert got.view == path.view_id("view-a") >= 1 and got.flags == 0
    path.pod_changed(pod, Pod(namespace="a", name="p", ips=("10.250.0.5",), uid="u1", opt_out=True))
    assert table[answers._as(table.Key, answers.ip_key("10.250.0.5"))].flags == answers.CONST["NA_ANS_POD_OFF"]
    path.pod_changed(pod, None)
    with pytest.raises(KeyError):
        table[answers._as(table.Key, answers.ip_key("10.250.0.5"))]

    cache, now = Cache(), time.monotonic()
    web, api = q("web.a.svc.cluster.local"), q("api.example.com")
    cache.put("*", api, resp("api.example.com"), now, rotate=False)
    cache.put("view-a", web, resp("web.a.svc.cluster.local"), now, rotate=False)
    assert path.promote(items(cache, [("*", api), ("view-a", web)], hits=1), now) == 0  # not hot yet
    assert path.promote(items(cache, [("*", api), ("view-a", web)], hits=2), now) == 2
    assert len(path.bpf[answers.ANSWERS]) == 2 and not any(path.maps.counters())
    # A view gets its own answer for a name every view shared: the SHARED kernel copy goes.
    cache.put("view-b", api, resp("api.example.com"), now, rotate=False)
    path.promote(items(cache, [("view-b", api)], hits=0), now)
    keys = {(k.view, bytes(k.qname).rstrip(b"\x00")) for k in path.bpf[answers.ANSWERS].keys()}
    assert (0, api.ck[:-5].rstrip(b"\x00")) not in keys
    assert (path.view_id("view-a"), web.ck[:-5].rstrip(b"\x00")) in keys
    assert path.flush_names(["*.svc.cluster.local"]) == 1
    assert len(path.bpf[answers.ANSWERS]) == 0

    path.stop(successor=False)
    assert path.bpf[answers.CONFIG][0].enabled == 0
