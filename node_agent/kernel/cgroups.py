"""cgroup v2 discovery: where the hierarchy is mounted, cgroup ids, and pods' cgroups."""

from __future__ import annotations

import os
from collections.abc import Iterator


class CgroupError(RuntimeError):
    pass


def cgroup2_mount(mounts: str = "/proc/mounts") -> str:
    """The cgroup v2 mount point: /sys/fs/cgroup on unified hosts, .../unified on hybrid ones."""
    with open(mounts) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                return parts[1]
    raise CgroupError(
        "no cgroup v2 hierarchy is mounted (BPF steering needs cgroup v2; --no-bpf runs without)"
    )


def resolve(path: str, root: str | None = None) -> str:
    """An absolute cgroup directory: absolute paths as given, others relative to the v2 mount."""
    if os.path.isabs(path) and (root is None or path.startswith(root)) and os.path.isdir(path):
        return path
    base = root or cgroup2_mount()
    full = os.path.normpath(os.path.join(base, path.lstrip("/")))
    if not os.path.isdir(full):
        raise CgroupError(f"cgroup {full} does not exist")
    return full


def cgroup_id(path: str) -> int:
    """The kernel's cgroup id is the inode number of the cgroup's directory in cgroupfs."""
    return os.stat(path).st_ino


def find_pod_cgroups(root: str, pod_uid: str) -> Iterator[str]:
    """Pod cgroups as the kubelet names them with the systemd driver (kubepods-...-pod<uid with _>.slice)
    or the cgroupfs driver (kubepods/.../pod<uid>)."""
    wanted = {f"pod{pod_uid}", f"pod{pod_uid.replace('-', '_')}"}
    kubepods = [d for d in ("kubepods.slice", "kubepods") if os.path.isdir(os.path.join(root, d))]
    for top in kubepods:
        for dirpath, dirnames, _ in os.walk(os.path.join(root, top)):
            for d in list(dirnames):
                stem = d.removesuffix(".slice")
                if any(stem == w or stem.endswith("-" + w) for w in wanted):
                    yield os.path.join(dirpath, d)
                    dirnames.remove(d)
            # Pod cgroups sit at most two levels under kubepods; do not walk containers.
            if dirpath.count(os.sep) - root.count(os.sep) >= 3:
                dirnames.clear()
