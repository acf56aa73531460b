"""bench/stubload.c, the bench's stub-resolver-shaped load generator: what it sends, what it counts.

Against a real dnsmasq on 127.0.0.1 (authoritative for *.test, no upstream) and against a socket of
our own that reads and never answers. Its figures feed the kernel section, so they are checked here
through the same parser the bench uses (bench/dnsperf.py).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, DNSRecord

from bench import dnsperf, stubload
from tests.support.netutil import free_port, wait_dns_ready

pytestmark = pytest.mark.skipif(not shutil.which("dnsmasq") or not shutil.which("cc"),
                                reason="needs dnsmasq and a C compiler")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(stubload.build(tmp_path_factory.mktemp("stubload")))


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    p = subprocess.Popen(["dnsmasq", "-k", "-C", "/dev/null", "-p", str(port), "--listen-address=127.0.0.1",
                          "--bind-interfaces", "--no-resolv", "--local=/test/", "--host-record=a.test,10.0.0.1",
                          "--host-record=b.test,10.0.0.2", f"--pid-file={tmp_path / 'pid'}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_dns_ready(port, p, "a.test")
        yield port
    finally:
        p.terminate()
        p.wait(5)


def queries(tmp_path: Path) -> Path:
    # Two names dnsmasq knows and one it answers NXDOMAIN: the rcodes come in the file's proportions.
    return dnsperf.write_queries(tmp_path / "q.txt", ["a.test", "b.test", "nope.test"])


def test_at_a_rate_every_query_is_answered_counted_and_timed(program: str, dnsmasq: int, tmp_path: Path) -> None:
    r = dnsperf.run("127.0.0.1", dnsmasq, queries(tmp_path), 1, rate=300, edns=True, verbose=True, program=program,
                    core=None)
    assert 290 <= r.sent <= 301  # 300 per second: paced, not a burst
    assert r.completed == r.sent and r.lost == 0
    assert r.rcodes["NXDOMAIN"] in (r.sent // 3, r.sent // 3 + 1)
    assert r.rcodes["NOERROR"] == r.sent - r.rcodes["NXDOMAIN"]
    assert len(r.latencies_ms) == r.completed and all(0 < x < 1000 for x in r.latencies_ms)
    assert 0.9 <= r.runtime <= 1.5 and r.client_cpu_ns > 0


def test_saturated_keeps_the_outstanding_limit_and_loses_nothing(program: str, dnsmasq: int, tmp_path: Path) -> None:
    r = dnsperf.run("127.0.0.1", dnsmasq, queries(tmp_path), 0.5, max_outstanding=4, program=program, core=None)
    assert r.sent > 300 and r.completed == r.sent and r.lost == 0


def test_queries_are_a_stubs_and_unanswered_ones_are_lost_after_the_timeout(program: str, tmp_path: Path) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.2)
    got: list[bytes] = []

    def read() -> None:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                got.append(sink.recv(512))
            except TimeoutError:
                continue

    t = threading.Thread(target=read)
    t.start()
    started = time.monotonic()
    try:
        r = dnsperf.run("127.0.0.1", sink.getsockname()[1], queries(tmp_path), 0.5, rate=100, edns=True,
                        timeout_s=0.3, program=program, core=None)
    finally:
        elapsed = time.monotonic() - started
        t.join()
        sink.close()
    assert r.completed == 0 and r.lost == r.sent and 45 <= r.sent <= 51
    assert elapsed < 0.5 + 0.3 + 1.0  # it stops once the last query timed out
    msgs = [DNSRecord.parse(b) for b in got]
    assert len(msgs) == r.sent
    assert len({m.header.id for m in msgs}) == len(msgs)  # fewer than 65,536 in flight: no ID reused
    for i, m in enumerate(msgs):
        assert m.header.rd and not m.header.qr and len(m.questions) == 1
        assert str(m.q.qname) == ["a.test.", "b.test.", "nope.test."][i % 3] and m.q.qtype == QTYPE.A
        assert [(rr.rtype, rr.rclass) for rr in m.ar] == [(QTYPE.OPT, 4096)]
