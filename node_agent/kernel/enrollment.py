"""Enrollment: which cgroups the BPF programs treat as pods.

The programs steer a socket when one of its task's ancestor cgroups is enrolled; the agent enrolls
each pod's cgroup as the kubelet names it (cgroups.find_pod_cgroups) and drops it when the pod goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from node_agent.kernel import cgroups
from node_agent.mesh.model import Pod


class PodEnroller(Protocol):
    """The pod map's writer: loader.Interceptor, or maps.PodMap over any table (the fake too)."""

    def enroll(self, cgroup_id: int, *, opt_out: bool = False) -> None: ...

    def unenroll(self, cgroup_id: int) -> None: ...


@dataclass
class Enrollment:
    """Pods of this node -> their cgroup ids in the BPF pod map (enroll, opt out, forget)."""

    interceptor: PodEnroller
    cgroup_root: str
    by_uid: dict[str, int] = field(default_factory=dict)
    namespace_of: dict[int, str] = field(default_factory=dict)  # cgroup id -> namespace, for metrics
    missing: set[str] = field(default_factory=set)  # pods whose cgroup is not there (yet)

    def change(self, old: Pod | None, new: Pod | None) -> None:
        if old is not None and (new is None or new.uid != old.uid):
            cg = self.by_uid.pop(old.uid, None)
            self.missing.discard(old.uid)
            if cg is not None:
                self.interceptor.unenroll(cg)
                self.namespace_of.pop(cg, None)
        if new is None or new.host_network or not new.uid:
            return  # hostNetwork pods share the node's cgroup tree and its resolv.conf
        found = next(cgroups.find_pod_cgroups(self.cgroup_root, new.uid), None)
        if found is None:
            self.missing.add(new.uid)
            return
        self.missing.discard(new.uid)
        cg_id = cgroups.cgroup_id(found)
        self.by_uid[new.uid] = cg_id
        self.namespace_of[cg_id] = new.namespace
        self.interceptor.enroll(cg_id, opt_out=new.opt_out)
