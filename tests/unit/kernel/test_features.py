"""kernel/features.py: what the probe concludes from what a kernel answers (a fake kernel that parses
the programs it is asked to load), and, as root, on this machine's kernel: agreeing with bpftool's
own prober, able to say no, and the programs compiled for what it found."""

from __future__ import annotations

import ctypes as ct
import errno
import json
import logging
import os
import secrets
import shutil
import struct
import subprocess
from collections.abc import Iterable

import pytest

from node_agent.kernel import features
from node_agent.kernel.features import (
    BPF_LINK_CREATE,
    BPF_LINK_UPDATE,
    BPF_PROG_LOAD,
    CONNECT4,
    CONNECT6,
    FEATURES,
    GETPEERNAME4,
    GETPEERNAME6,
    HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID,
    HELPER_GET_SOCKET_COOKIE,
    HELPER_SET_RETVAL,
    RECVMSG4,
    RECVMSG6,
    SENDMSG4,
    SENDMSG6,
    Answer,
    FeatureError,
    ProbeError,
)

ALL_HOOKS = {CONNECT4, CONNECT6, SENDMSG4, SENDMSG6, RECVMSG4, RECVMSG6, GETPEERNAME4, GETPEERNAME6}
BPF_MAP_CREATE, HELPER_MAP_LOOKUP_ELEM, HELPER_SK_RELEASE = 0, 1, 86
root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


class FakeKernel:
    """Answers bpf() as a kernel with the given hooks and helpers would: a program loads when its
    attach type is a hook it has and every helper it calls is allowed in that hook. Records what it
    was asked, and hands out real fds (the prober closes them)."""

    def __init__(self, hooks: Iterable[int] = ALL_HOOKS, helpers: dict[int, set[int]] | None = None, *,
                 links: bool = True, link_update: bool = True, permitted: bool = True) -> None:
        self.hooks = set(hooks)
        every = set(ALL_HOOKS)
        self.helpers = helpers if helpers is not None else {
            HELPER_GET_SOCKET_COOKIE: every, HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID: every,
            HELPER_SET_RETVAL: every, HELPER_MAP_LOOKUP_ELEM: every, HELPER_SK_RELEASE: every}
        self.links, self.link_update, self.permitted = links, link_update, permitted
        self.loads: list[tuple[int, list[int]]] = []  # (attach type, helpers called)

    def _fd(self) -> Answer:
        return Answer(os.open(os.devnull, os.O_RDONLY), 0)

    def __call__(self, cmd: int, attr: bytes, log_size: int) -> Answer:
        if not self.permitted:
            return Answer(-1, errno.EPERM)
        if cmd == BPF_PROG_LOAD:
            prog_type, count, insns, _, _, _, _, _, _, name, _, attach_type = struct.unpack_from(
                "<IIQQIIQII16sII", attr)
            assert prog_type == features.PROG_TYPE_CGROUP_SOCK_ADDR and name.rstrip(b"\0") == b"na_probe"
            code = ct.string_at(insns, count * 8)
            calls = [imm for op, _, _, imm in struct.iter_unpack("<BBhi", code) if op == 0x85]
            self.loads.append((attach_type, calls))
            if attach_type not in self.hooks:
                return Answer(-1, errno.EINVAL)
            for helper in calls:
                if attach_type not in self.helpers.get(helper, set()):
                    return Answer(-1, errno.EINVAL, f"0: (85) call unknown#{helper}\ninvalid func unknown#{helper}\n"
                                                    "processed 2 insns")
            return self._fd()
        if cmd == BPF_MAP_CREATE:
            return self._fd()
        if cmd == BPF_LINK_CREATE:
            prog_fd, target_fd, attach_type, _ = struct.unpack("<IiII", attr)
            assert attach_type == CONNECT4 and target_fd == -1
            return Answer(-1, errno.EBADF if self.links else errno.EINVAL)
        if cmd == BPF_LINK_UPDATE:
            return Answer(-1, errno.EBADF if self.link_update else errno.EINVAL)
        return Answer(-1, errno.EINVAL)


def without(helper: int, *hooks: int) -> dict[int, set[int]]:
    """The full helper table, but `helper` refused in `hooks` (all hooks if none given)."""
    table = FakeKernel().helpers
    table[helper] = set(ALL_HOOKS) - set(hooks or ALL_HOOKS)
    return table


def test_a_kernel_with_everything_compiles_every_optional_feature_in() -> None:
    found = features.probe(FakeKernel(), kernel="6.12.0")
    assert all(found.found.values()) and set(found.found) == {f.name for f in FEATURES}
    assert found.missing == [] and found.degraded == [] and found.degradations() == []
    assert set(found.cflags()) == {f"-D{f.macro}=1" for f in FEATURES if f.macro}
    assert "-DNA_HAVE_SET_RETVAL=1" in found.cflags()


def test_without_set_retval_the_agent_runs_degraded_and_says_what_changes(caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel(helpers=without(HELPER_SET_RETVAL))  # Linux 5.10
    with caplog.at_level(logging.INFO, logger="node_agent.kernel.features"):
        found = features.check_kernel(kernel)
    assert found.found["set_retval"] is False and found.missing == []
    assert [f.name for f in found.degraded] == ["set_retval"]
    assert "-DNA_HAVE_SET_RETVAL=1" not in found.cflags()
    assert "invalid func unknown#187" in found.why["set_retval"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "set_retval" in warnings[0] and "EPERM" in warnings[0], warnings
    assert any("missing set_retval" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    # The helper was asked for where dns_steer.c calls it (connect and sendmsg), not elsewhere.
    assert {at for at, calls in kernel.loads if HELPER_SET_RETVAL in calls} == {CONNECT4}  # first refusal stops


def test_a_helper_refused_in_one_of_its_hooks_counts_as_missing() -> None:
    found = features.probe(FakeKernel(helpers=without(HELPER_SET_RETVAL, SENDMSG4)))
    assert found.found["set_retval"] is False
    assert f"attach type {SENDMSG4}" in found.why["set_retval"]


def test_below_the_floor_one_line_names_everything_missing() -> None:
    kernel = FakeKernel(hooks=ALL_HOOKS - {GETPEERNAME4, GETPEERNAME6}, link_update=False)  # Linux 5.4-like
    with pytest.raises(FeatureError) as err:
        features.check_kernel(kernel)
    msg = str(err.value)
    assert "\n" not in msg
    assert "getpeername4/getpeername6" in msg and "bpf_link_update" in msg and "--no-bpf" in msg
    assert os.uname().release in msg
    assert "bpf_set_retval" not in msg  # present here; an optional feature never stops the agent anyway
    assert "bpf_get_socket_cookie" not in msg, "a helper is not missing because one of its hooks is"


def test_without_cgroup_links_the_kernel_is_below_the_floor() -> None:
    found = features.probe(FakeKernel(links=False))
    assert [f.name for f in found.missing] == ["link_create"]
    assert found.why["link_create"] == os.strerror(errno.EINVAL)


def test_no_privilege_is_no_answer_at_all() -> None:
    with pytest.raises(ProbeError, match="CAP_BPF"):
        features.probe(FakeKernel(permitted=False))


# ---- this machine's kernel -------------------------------------------------------------------------


@root
def test_the_probe_agrees_with_bpftool_on_this_kernel() -> None:
    """bpftool asks the same helper question its own way (per program type, from the verifier's
    answer to a call of each helper): both must agree for the helpers dns_steer.c calls."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not os.path.exists(bpftool):
        pytest.skip("bpftool not installed")
    out = subprocess.run([bpftool, "-j", "feature", "probe", "kernel"], capture_output=True, text=True, timeout=120)
    theirs = set(json.loads(out.stdout)["helpers"]["cgroup_sock_addr_available_helpers"])
    found = features.probe()
    for feature, helper in (("set_retval", "bpf_set_retval"), ("socket_cookie", "bpf_get_socket_cookie"),
                            ("ancestor_cgroup_id", "bpf_get_current_ancestor_cgroup_id")):
        assert found.found[feature] == (helper in theirs), (feature, found.why.get(feature))


@root
def test_the_probe_can_say_no_on_this_kernel() -> None:
    p = features._Prober(features.kernel_syscall())
    assert "invalid func" in (p.helper(9999, b"", (CONNECT4,)) or "")  # no such helper anywhere
    assert p.hook((0,)) is not None  # BPF_CGROUP_INET_INGRESS is no sock_addr attach type
    assert p.hook((CONNECT4,)) is None


@root
def test_the_programs_call_bpf_set_retval_only_where_the_kernel_has_it() -> None:
    """Compiled without NA_HAVE_SET_RETVAL (what a 5.10 kernel gets), no program calls helper 187,
    so the verifier has nothing to reject; with it, the connect and sendmsg programs call it."""
    pytest.importorskip("bcc")
    from node_agent.kernel import loader

    pin_root = f"/sys/fs/bpf/na-features-{secrets.token_hex(3)}"
    try:
        calls: dict[bool, set[str]] = {}
        for have in (False, True):
            bpf = loader._compile(os.path.join(pin_root, "v1"), ("-DNA_HAVE_SET_RETVAL=1",) if have else ())
            try:
                calls[have] = {name for name, _ in loader.PROGRAMS
                               if any(op == 0x85 and imm == HELPER_SET_RETVAL
                                      for op, _, _, imm in struct.iter_unpack("<BBhi", bpf.dump_func(name.encode())))}
            finally:
                bpf.cleanup()
        assert calls[False] == set()
        assert calls[True] == {"na_connect4", "na_connect6", "na_sendmsg4", "na_sendmsg6"}
    finally:
        loader.uninstall(pin_root)


@root
def test_the_probe_lifts_the_memlock_limit_before_asking() -> None:
    """Before 5.11 the kernel charges BPF memory to RLIMIT_MEMLOCK across all of root's processes:
    a second agent, or `status`, next to a running one was refused with EPERM until the probe lifted
    it (as bcc does when it compiles)."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if before[1] != resource.RLIM_INFINITY and before[1] <= 64 * 1024:
        pytest.skip("the hard memlock limit leaves nothing to lift")
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, before[1]))
        features.kernel_syscall()
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        assert soft in (resource.RLIM_INFINITY, hard) and soft != 64 * 1024, (soft, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, before)
