"""kernel/features.py's socket_lookup probe: may the steering programs look a sockmap up and release
the socket found (what bpf/dns_steer.c's responder_open does)? Without it they compile without the
socket check and fail open after the heartbeat bound only."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from node_agent.kernel import features
from node_agent.kernel.features import Answer, _Prober

root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


def test_a_kernel_without_sockmaps_degrades_to_the_heartbeat_and_says_so() -> None:
    asked: list[int] = []

    def kernel(cmd: int, attr: bytes, log_size: int) -> Answer:
        asked.append(cmd)
        return Answer(-1, errno.EINVAL)  # no BPF_MAP_CREATE of a sockmap here

    assert features.socket_lookup(_Prober(kernel)) == "no sockmap (Invalid argument)"
    assert asked == [features.BPF_MAP_CREATE]  # no program load without a map to look up
    found = features.Features("5.x", {f.name: f.name != "socket_lookup" for f in features.FEATURES})
    assert "-DNA_HAVE_SOCKET_LOOKUP=1" not in found.cflags()
    assert [f.name for f in found.degraded] == ["socket_lookup"]
    assert "heartbeat bound" in found.degradations()[0]


@root
def test_this_kernel_takes_the_lookup_and_its_release() -> None:
    p = _Prober(features.kernel_syscall())
    assert features.socket_lookup(p) is None


@root
def test_the_verifier_really_judges_the_probe() -> None:
    """The same program without bpf_sk_release leaks the socket's reference: refused. So a None from
    socket_lookup() is the verifier's yes, not a load that checks nothing."""
    p = _Prober(features.kernel_syscall())
    m = p.syscall(features.BPF_MAP_CREATE, struct.pack("<IIIII", features.MAP_TYPE_SOCKMAP, 4, 8, 1, 0), 0)
    assert m.rc >= 0
    op = features._op
    leaking = (op(0x62, dst=10, off=-4) + op(0x18, dst=1, src=1, imm=m.rc) + op(0) + op(0xBF, dst=2, src=10)
               + op(0x07, dst=2, imm=-4) + op(features._CALL, imm=features.HELPER_MAP_LOOKUP_ELEM)
               + features._RETURN_1)
    try:
        fd, log = p.load(leaking, features.CONNECT4)
    finally:
        os.close(m.rc)
    assert fd < 0 and ("reference leak" in log or "Unreleased reference" in log), log
