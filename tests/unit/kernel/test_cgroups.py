"""Finding pods' cgroups the way the kubelet names them, and the cgroup v2 mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.kernel import cgroups, loader, maps
from node_agent.settings import InterceptSettings

UID = "3f0e8c1a-5b2d-4c7e-9a10-1234567890ab"


def test_systemd_driver_names(tmp_path: Path) -> None:
    pod = tmp_path / "kubepods.slice/kubepods-burstable.slice" / f"kubepods-burstable-pod{UID.replace('-', '_')}.slice"
    (pod / "cri-containerd-abc.scope").mkdir(parents=True)
    (tmp_path / "kubepods.slice/kubepods-podffff.slice").mkdir(parents=True)
    assert list(cgroups.find_pod_cgroups(str(tmp_path), UID)) == [str(pod)]


def test_cgroupfs_driver_names(tmp_path: Path) -> None:
    guaranteed = tmp_path / "kubepods" / f"pod{UID}"
    (guaranteed / "c1").mkdir(parents=True)
    besteffort = tmp_path / "kubepods/besteffort/podother"
    besteffort.mkdir(parents=True)
    assert list(cgroups.find_pod_cgroups(str(tmp_path), UID)) == [str(guaranteed)]
    assert list(cgroups.find_pod_cgroups(str(tmp_path), "nope")) == []


def test_cgroup2_mount_found_in_hybrid_layout(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert cgroups.cgroup2_mount(str(mounts)) == "/sys/fs/cgroup/unified"
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n")
    with pytest.raises(cgroups.CgroupError, match="no cgroup v2"):
        cgroups.cgroup2_mount(str(mounts))


def test_cgroup_id_is_the_directory_inode(tmp_path: Path) -> None:
    assert cgroups.cgroup_id(str(tmp_path)) == tmp_path.stat().st_ino


def test_layout_constants_come_from_the_header() -> None:
    c = maps.header_constants()
    assert c["NA_STAT_MAX"] == len(loader.STAT_NAMES)
    assert loader.pin_dir(InterceptSettings(pin_root="/x")) == f"/x/v{c['NA_LAYOUT_VERSION']}"
