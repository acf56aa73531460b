"""Enrollment against the in-memory pod map: a pod's cgroup (found as the kubelet names it, in a
directory tree standing for cgroupfs: a cgroup id is the directory's inode) is enrolled, opted out,
re-enrolled when the pod is recreated, and forgotten when it goes."""

from __future__ import annotations

import ctypes as ct
from pathlib import Path

from node_agent.kernel import cgroups, maps
from node_agent.kernel.enrollment import Enrollment
from node_agent.mesh.model import Pod

UID1 = "11111111-2222-3333-4444-555555555555"
UID2 = "66666666-7777-8888-9999-000000000000"


def pod(uid: str, **kw: object) -> Pod:
    return Pod("ns", "web", ("10.244.0.5",), uid=uid, **kw)  # type: ignore[arg-type]


def kubelet_cgroup(root: Path, uid: str) -> int:
    """As the systemd driver names a burstable pod's cgroup; returns its cgroup id."""
    d = root / "kubepods.slice/kubepods-burstable.slice" / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    (d / "cri-containerd-0123.scope").mkdir(parents=True)
    return cgroups.cgroup_id(str(d))


def setup(tmp_path: Path) -> tuple[maps.FakeMaps, maps.PodMap, Enrollment]:
    fake = maps.FakeMaps()
    pods = maps.PodMap(fake[maps.PODS])
    return fake, pods, Enrollment(pods, str(tmp_path))


def test_a_pod_is_enrolled_by_its_cgroup_id_and_forgotten_when_deleted(tmp_path: Path) -> None:
    fake, pods, e = setup(tmp_path)
    cg = kubelet_cgroup(tmp_path, UID1)
    e.change(None, pod(UID1))
    assert pods.entries() == {cg: maps.PodEntry(cg, False, 0, 0)}
    assert e.by_uid == {UID1: cg} and e.namespace_of == {cg: "ns"}
    e.change(pod(UID1), None)
    assert pods.entries() == {} and e.by_uid == {} and e.namespace_of == {}


def test_opt_out_updates_the_flag_and_keeps_the_programs_counters(tmp_path: Path) -> None:
    fake, pods, e = setup(tmp_path)
    cg = kubelet_cgroup(tmp_path, UID1)
    e.change(None, pod(UID1))
    leaf = fake[maps.PODS][ct.c_uint64(cg)]
    leaf.steered = 12  # the programs count per pod
    fake[maps.PODS][ct.c_uint64(cg)] = leaf
    e.change(pod(UID1), pod(UID1, opt_out=True))
    assert pods.entries() == {cg: maps.PodEntry(cg, True, 12, 0)}
    e.change(pod(UID1, opt_out=True), pod(UID1))
    assert pods.entries()[cg].opt_out is False


def test_a_recreated_pod_moves_to_its_new_cgroup(tmp_path: Path) -> None:
    """Same name, new uid (a StatefulSet pod recreated): the old cgroup id goes, the new one comes."""
    fake, pods, e = setup(tmp_path)
    old, new = kubelet_cgroup(tmp_path, UID1), kubelet_cgroup(tmp_path, UID2)
    e.change(None, pod(UID1))
    e.change(pod(UID1), pod(UID2))
    assert set(pods.entries()) == {new} and old != new
    assert e.by_uid == {UID2: new}


def test_a_pod_whose_cgroup_is_not_there_yet_waits_in_missing(tmp_path: Path) -> None:
    fake, pods, e = setup(tmp_path)
    e.change(None, pod(UID1))
    assert e.missing == {UID1} and pods.entries() == {}
    cg = kubelet_cgroup(tmp_path, UID1)
    e.change(None, pod(UID1))  # the agent's retry
    assert e.missing == set() and set(pods.entries()) == {cg}
    e.change(None, pod(UID2))
    e.change(pod(UID2), None)  # deleted before its cgroup appeared
    assert e.missing == set()


def test_host_network_and_uidless_pods_are_never_enrolled(tmp_path: Path) -> None:
    fake, pods, e = setup(tmp_path)
    kubelet_cgroup(tmp_path, UID1)
    e.change(None, pod(UID1, host_network=True))
    e.change(None, pod(""))
    assert pods.entries() == {} and e.missing == set() and fake.writes == []
