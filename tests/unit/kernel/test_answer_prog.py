"""bpf/dns_answer.c without a network: BPF_PROG_TEST_RUN on crafted frames (root, bcc).

Each case checks the verdict and the exact frame that comes out. An answered query must come out as
the reply the userspace path sends for it - Cache.get on the same cached answer, at the same age -
inside MAC/IP/port-swapped headers whose checksums this file computes itself; a passed one must come
out byte for byte as it went in. The fuzzer's property: whatever the program answers, the userspace
path answers with the same bytes (so the kernel never answers what it must pass)."""

from __future__ import annotations

import ctypes as ct
import os
import secrets
import shutil
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.dns import wire
from node_agent.kernel import answers
from node_agent.resolve.cache import Cache

pytestmark = pytest.mark.root

TC_ACT_OK = 0
TC_ACT_REDIRECT = 7
RESPONDER4, RESPONDER6, PORT = "169.254.20.10", "fd00:20::10", 53
POD4, POD6, OTHER4 = "10.0.0.7", "fd00:1::7", "10.0.0.99"
VIEW = "ns-a"  # the cache's view key; the kernel's id for it is 1
VIEW_ID = 1
MAC_POD, MAC_HOST = bytes.fromhex("0a0000000007"), bytes.fromhex("0a00000000fe")


# ---- BPF_PROG_TEST_RUN -------------------------------------------------------------------------


class RunOpts(ct.Structure):  # libbpf's struct bpf_test_run_opts
    _fields_ = [
        ("sz", ct.c_size_t), ("data_in", ct.c_void_p), ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32), ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p), ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32), ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32), ("repeat", ct.c_int), ("duration", ct.c_uint32),
        ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32),
    ]


class Prog:
    def __init__(self, bpf: Any, fd: int) -> None:
        self.bpf, self.fd = bpf, fd
        self.maps = answers.AnswerMaps(bpf)
        from bcc.libbcc import lib

        self._run = lib.bpf_prog_test_run_opts
        self._run.argtypes = [ct.c_int, ct.POINTER(RunOpts)]

    def run(self, frame: bytes) -> tuple[int, bytes]:
        inp = ct.create_string_buffer(frame, len(frame))
        out = ct.create_string_buffer(4096)
        o = RunOpts(sz=ct.sizeof(RunOpts), data_in=ct.cast(inp, ct.c_void_p),
                        data_out=ct.cast(out, ct.c_void_p), data_size_in=len(frame), data_size_out=4096)
        rc = self._run(self.fd, ct.byref(o))
        assert rc == 0, os.strerror(-rc if rc < 0 else ct.get_errno())
        return o.retval, out.raw[: o.data_size_out]


@pytest.fixture(scope="module")
def prog() -> Iterator[Prog]:
    if os.geteuid() != 0:
        pytest.skip("BPF_PROG_TEST_RUN needs root")
    pytest.importorskip("bcc")
    pin = f"/sys/fs/bpf/na-test-answers-{secrets.token_hex(4)}"
    bpf = answers.compile_program(pin, 1024)
    try:
        p = Prog(bpf, answers.load_program(bpf).fd)
        p.maps.configure(RESPONDER4, RESPONDER6, PORT, max_udp=wire.DEFAULT_PAYLOAD, edns_payload=1232,
                         enabled=True)
        p.maps.set_pod(POD4, VIEW_ID)
        p.maps.set_pod(POD6, VIEW_ID)
        yield p
    finally:
        bpf.cleanup()
        shutil.rmtree(pin, ignore_errors=True)


@pytest.fixture
def cache(prog: Prog) -> Iterator[Cache]:
    c = Cache()
    yield c
    prog.bpf[answers.ANSWERS].clear()


# ---- packets -------------------------------------------------------------------------------------


def enc(name: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in name.split(".") if p) + b"\x00"


def rr(rtype: int, ttl: int, rdata: bytes, owner: bytes = b"\xc0\x0c") -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def response(name: str, qtype: int, answer: list[bytes], authority: list[bytes] = (), *,  # type: ignore[assignment]
             flags: int = 0x8180, opt: bool = False) -> bytes:
    ar = 1 if opt else 0
    out = struct.pack("!HHHHHH", 0, flags, 1, len(answer), len(authority), ar) + enc(name)
    out += struct.pack("!HH", qtype, 1) + b"".join(answer) + b"".join(authority)
    return out + (wire.opt_rr(1232) if opt else b"")


def query(spelled: str, qtype: int = 1, *, qid: int = 0xBEEF, flags: int = 0x0100,
          edns: tuple[int, bool] | None = None, tail: bytes = b"") -> bytes:
    out = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0) + enc(spelled) + struct.pack("!HH", qtype, 1)
    if edns:
        out += wire.opt_rr(edns[0], edns[1])
    return out + tail


def csum(data: bytes) -> int:
    s = answers.ones_sum(data)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(src: str, dst: str, sport: int, dport: int, dns: bytes, *, ttl: int = 63,
          smac: bytes = MAC_POD, dmac: bytes = MAC_HOST) -> bytes:
    """An Ethernet frame with IPv4 or IPv6/UDP and correct checksums."""
    six = ":" in src
    ulen = 8 + len(dns)
    if six:
        s, d = (ipaddress_packed(a) for a in (src, dst))
        pseudo = s + d + struct.pack("!IxxxB", ulen, 17)
    else:
        s, d = (ipaddress_packed(a) for a in (src, dst))
        pseudo = s + d + struct.pack("!xBH", 17, ulen)
    c = csum(pseudo + struct.pack("!HHHH", sport, dport, ulen, 0) + dns) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, ulen, c) + dns
    if six:
        ip = struct.pack("!IHBB", 6 << 28, ulen, 17, ttl) + s + d
        return dmac + smac + b"\x86\xdd" + ip + udp
    hdr = struct.pack("!BBHHHBBH", 0x45, 0, 20 + ulen, 0x1234, 0x4000, ttl, 17, 0) + s + d
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return dmac + smac + b"\x08\x00" + hdr + udp


def ipaddress_packed(a: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(a).packed


def to_responder(dns: bytes, src: str = POD4) -> bytes:
    return frame(src, RESPONDER6 if ":" in src else RESPONDER4, 40000, PORT, dns)


def reply_frame(dns: bytes, src: str = POD4) -> bytes:
    """What the program must send back for a query from `src`: every header swapped."""
    return frame(RESPONDER6 if ":" in src else RESPONDER4, src, PORT, 40000, dns, ttl=64,
                 smac=MAC_HOST, dmac=MAC_POD)


def store(prog: Prog, cache: Cache, q: bytes, resp: bytes, *, age: float = 2.5, view: Any = VIEW,
          view_id: int = VIEW_ID) -> float:
    """Cache `resp` as the answer to `q` stored `age` s ago (mid-second: both sides age alike) and
    write it to the kernel map; returns the cache clock's now."""
    parsed = wire.parse_query(q)
    assert isinstance(parsed, wire.Query)
    now = time.monotonic()
    assert cache.put(view, parsed, resp, now - age, rotate=False)
    raw = cache.raw(view, parsed.ck)
    assert raw is not None and prog.maps.put(view_id, parsed.ck, raw)
    return now


def userspace(cache: Cache, q: bytes, now: float, view: Any = VIEW) -> bytes | None:
    parsed = wire.parse_query(q)
    assert isinstance(parsed, wire.Query)
    return cache.get(view, parsed, now)


A_ANSWER = [rr(1, 300, bytes((10, 1, 2, 3)))]


# ---- hits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("edns", [None, (1232, False), (4096, True), (600, False)])
@pytest.mark.parametrize("src", [POD4, POD6])
def test_hit_is_the_userspace_reply(prog: Prog, cache: Cache, edns: tuple[int, bool] | None, src: str) -> None:
    q = query("Www.ExAmple.COM", edns=edns)
    now = store(prog, cache, query("www.example.com", edns=edns), response("www.example.com", 1, A_ANSWER))
    verdict, out = prog.run(to_responder(q, src))
    expected = userspace(cache, q, now)
    assert expected is not None and expected[:2] == b"\xbe\xef" and b"ExAmple" in expected
    assert verdict == TC_ACT_REDIRECT
    assert out == reply_frame(expected, src)
    assert int.from_bytes(out[-(4 + 2 + 4 + (11 if edns else 0)):][:4], "big") == 300 - 2  # aged


def test_flags_cname_chain_and_negative_answers(prog: Prog, cache: Cache) -> None:
    cname = [rr(5, 60, enc("b.example.net")), rr(1, 30, bytes((10, 9, 9, 9)), owner=enc("b.example.net"))]
    now = store(prog, cache, query("a.example.com"), response("a.example.com", 1, cname))
    soa = rr(6, 900, enc("ns.example.com") + enc("h.example.com") + struct.pack("!IIIII", 1, 2, 3, 4, 60),
             owner=b"\xc0\x0c")
    store(prog, cache, query("nx.example.com", 28), response("nx.example.com", 28, [], [soa], flags=0x8183))
    for q in (query("A.example.com", qid=1, flags=0x0000), query("a.EXAMPLE.com", qid=2, flags=0x0110),
              query("nx.example.com", 28, qid=3), query("NX.example.com", 28, qid=4, flags=0x0010)):
        verdict, out = prog.run(to_responder(q))
        expected = userspace(cache, q, now)
        assert expected is not None and verdict == TC_ACT_REDIRECT
        assert out == reply_frame(expected), q


# ---- passes ----------------------------------------------------------------------------------------


def assert_pass(prog: Prog, frame_in: bytes) -> None:
    verdict, out = prog.run(frame_in)
    assert verdict == TC_ACT_OK and out == frame_in


def test_miss_expired_and_do_mismatch_pass(prog: Prog, cache: Cache) -> None:
    store(prog, cache, query("www.example.com"), response("www.example.com", 1, A_ANSWER))
    store(prog, cache, query("short.example.com"), response("short.example.com", 1, [rr(1, 2, b"\x0a\0\0\1")]),
          age=2.5)  # TTL 2, stored 2.5 s ago: expired
    assert_pass(prog, to_responder(query("other.example.com")))
    assert_pass(prog, to_responder(query("www.example.com", 28)))  # other type
    assert_pass(prog, to_responder(query("www.example.com", edns=(1232, True))))  # DO is in the key
    assert_pass(prog, to_responder(query("short.example.com")))
    assert prog.maps.stats()["expired"] >= 1


def test_only_enrolled_pods_to_the_responder(prog: Prog, cache: Cache) -> None:
    q = query("www.example.com")
    store(prog, cache, q, response("www.example.com", 1, A_ANSWER))
    assert_pass(prog, to_responder(q, OTHER4))
    assert_pass(prog, frame(POD4, "10.96.0.10", 40000, 53, q))  # not the responder address
    assert_pass(prog, frame(POD4, RESPONDER4, 40000, 5353, q))  # nor its port
    prog.maps.set_pod(OTHER4, VIEW_ID, opt_out=True)
    try:
        assert_pass(prog, to_responder(q, OTHER4))
    finally:
        prog.maps.remove_pod(OTHER4)
    assert prog.run(to_responder(q))[0] == TC_ACT_REDIRECT  # and the same query from a pod is answered


@pytest.mark.parametrize("variant", [
    dict(flags=0x8100),  # a response
    dict(flags=0x0900),  # opcode 1
    dict(flags=0x0300),  # TC
    dict(flags=0x0101),  # RCODE in a query
    dict(tail=b"\x00"),  # trailing octet
    dict(edns=(1232, False), tail=b"\x00"),  # OPT not ending the packet
])
def test_odd_queries_pass(prog: Prog, cache: Cache, variant: dict[str, Any]) -> None:
    store(prog, cache, query("www.example.com"), response("www.example.com", 1, A_ANSWER))
    store(prog, cache, query("www.example.com", edns=(1232, False)), response("www.example.com", 1, A_ANSWER))
    assert_pass(prog, to_responder(query("www.example.com", **variant)))


def test_counts_edns_options_and_versions_pass(prog: Prog, cache: Cache) -> None:
    q = query("www.example.com", edns=(1232, False))
    store(prog, cache, q, response("www.example.com", 1, A_ANSWER))
    cookie = q[:-2] + b"\x00\x0c" + b"\x00\x0a\x00\x08" + b"12345678"  # OPT with a cookie option
    assert_pass(prog, to_responder(cookie))
    v1 = bytearray(q)
    v1[-5] = 1  # EDNS version 1: BADVERS is userspace's
    assert_pass(prog, to_responder(bytes(v1)))
    two_q = bytearray(q)
    two_q[5] = 2
    assert_pass(prog, to_responder(bytes(two_q)))
    assert prog.run(to_responder(q))[0] == TC_ACT_REDIRECT


def test_truncated_and_malformed_frames_pass(prog: Prog, cache: Cache) -> None:
    q = query("www.example.com")
    store(prog, cache, q, response("www.example.com", 1, A_ANSWER))
    good = to_responder(q)
    for n in range(34, len(good)):  # (the test run itself refuses frames without a whole IPv4 header)
        assert_pass(prog, good[:n])  # cut anywhere: lengths in the headers no longer match
    for n in range(len(q)):
        assert_pass(prog, to_responder(q[:n]))  # consistent headers, DNS cut short
    ptr = q[:12] + b"\xc0\x0c" + q[-4:]  # a compressed qname
    assert_pass(prog, to_responder(ptr))
    frag = bytearray(good)
    frag[20] |= 0x20  # IPv4 more-fragments
    assert_pass(prog, bytes(frag))


def test_oversize_answers_pass(prog: Prog, cache: Cache) -> None:
    many = [rr(16, 300, bytes((40,)) + b"x" * 40) for _ in range(12)]  # ~12 * 53 octets of TXT
    q = query("big.example.com", 16)
    store(prog, cache, q, response("big.example.com", 16, many))
    qe = query("big.example.com", 16, edns=(1232, False))
    now = store(prog, cache, qe, response("big.example.com", 16, many))
    assert_pass(prog, to_responder(q))  # over 512: userspace truncates it
    assert_pass(prog, to_responder(query("big.example.com", 16, edns=(512, False))))
    verdict, out = prog.run(to_responder(qe))
    expected = userspace(cache, qe, now)
    assert verdict == TC_ACT_REDIRECT and expected is not None and len(expected) > 512
    assert out == reply_frame(expected)
    assert prog.maps.stats()["too_big"] >= 2


def test_rotating_entries_never_go_to_the_kernel(prog: Prog, cache: Cache) -> None:
    two = [rr(1, 300, bytes((10, 0, 0, i))) for i in (1, 2)]
    q = query("rr.example.com")
    parsed = wire.parse_query(q)
    assert isinstance(parsed, wire.Query)
    cache.put(VIEW, parsed, response("rr.example.com", 1, two), time.monotonic(), rotate=True)
    raw = cache.raw(VIEW, parsed.ck)
    assert raw is not None and raw.rotates and not prog.maps.put(VIEW_ID, parsed.ck, raw)
    assert_pass(prog, to_responder(q))


def test_shared_entries_answer_every_view(prog: Prog, cache: Cache) -> None:
    q = query("ext.example.org")
    now = store(prog, cache, q, response("ext.example.org", 1, A_ANSWER), view="shared",
                view_id=answers.SHARED_VIEW)
    verdict, out = prog.run(to_responder(q))
    expected = userspace(cache, q, now, view="shared")
    assert verdict == TC_ACT_REDIRECT and expected is not None and out == reply_frame(expected)


# ---- fuzz ----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_never_answers_what_userspace_would_not(prog: Prog, cache: Cache, data: st.DataObject) -> None:
    base_q = query("www.example.com", edns=data.draw(st.sampled_from([None, (1232, False), (1232, True)])))
    if not prog.bpf[answers.ANSWERS].keys():
        for e in (None, (1232, False), (1232, True)):
            store(prog, cache, query("www.example.com", edns=e), response("www.example.com", 1, A_ANSWER),
                  age=0.5)
    q = bytearray(base_q)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(q) - 1))
        q[i] = data.draw(st.sampled_from([0, 1, 0x20, 0x29, 0x3F, 0x40, 0x80, 0xC0, 0xFF, q[i] ^ 0x20]))
    cut = data.draw(st.integers(0, 3))
    dns = bytes(q[: len(q) - cut] if cut else q)
    fr = to_responder(dns, data.draw(st.sampled_from([POD4, POD6, OTHER4])))
    verdict, out = prog.run(fr)
    now = time.monotonic()
    if verdict == TC_ACT_OK:
        assert out == fr
        return
    assert verdict == TC_ACT_REDIRECT
    parsed = wire.parse_query(dns)
    assert isinstance(parsed, wire.Query), "answered a query the userspace fast path refuses"
    expected = cache.get(VIEW, parsed, now)
    assert expected is not None and len(expected) <= wire.udp_limit(parsed)
    src = ".".join(str(b) for b in fr[26:30]) if fr[12:14] == b"\x08\x00" else POD6
    assert out == reply_frame(expected, src)


# ---- promotion and coherence (the map written through the same codecs) ---------------------------


def test_entries_go_in_when_hot_and_leave_with_a_flush(prog: Prog, cache: Cache) -> None:
    promoter = answers.Promoter(prog.maps)
    q = query("hot.example.com")
    parsed = wire.parse_query(q)
    assert isinstance(parsed, wire.Query)
    now = time.monotonic()
    cache.put(VIEW, parsed, response("hot.example.com", 1, A_ANSWER), now - 0.5, rotate=False)
    raw = cache.raw(VIEW, parsed.ck)
    assert raw is not None
    assert not promoter.offer(VIEW_ID, parsed.ck, raw, 1, now)  # one hit: stays in userspace
    assert_pass(prog, to_responder(q))
    assert promoter.offer(VIEW_ID, parsed.ck, raw, 2, now)
    assert prog.run(to_responder(q))[0] == TC_ACT_REDIRECT
    assert prog.maps.hits(VIEW_ID, parsed.ck) == 1  # the kernel's hits, for prefetch and metrics
    assert promoter.flush_names([parsed.key]) == 1
    assert_pass(prog, to_responder(q))
