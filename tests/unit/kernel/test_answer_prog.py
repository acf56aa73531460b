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
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
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
    assert raw is not None and prog.maps.put(view_id, parsed.ck, raw, slot=1)
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
    assert raw is not None and raw.rotates and not prog.maps.put(VIEW_ID, parsed.ck, raw, slot=1)
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
    if len(prog.bpf[answers.ANSWERS]) == 0:  # (bcc's keys() is an iterator: always true)
        for e in (None, (1232, False), (1232, True)):
            store(prog, cache, query("www.example.com", edns=e), response("www.example.com", 1, A_ANSWER),
                  age=0.5)
    assert prog.run(to_responder(base_q))[0] == TC_ACT_REDIRECT  # what is mutated below is answered
    q = bytearray(base_q)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(q) - 1))
        q[i] = data.draw(st.sampled_from([0, 1, 0x20, 0x29, 0x3F, 0x40, 0x80, 0xC0, 0xFF, q[i] ^ 0x20]))
    cut = data.draw(st.integers(0, 3))
    dns = bytes(q[: len(q) - cut] if cut else q)
    fr = to_responder(dns, data.draw(st.sampled_from([POD4, POD6, OTHER4])))
    verdict, out = prog.run(fr)
    now = time.monotonic()
    event(f"verdict {verdict}")
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


def test_an_entry_answers_once_written_and_counts_its_hits_until_removed(prog: Prog, cache: Cache) -> None:
    q = query("hot.example.com")
    parsed = wire.parse_query(q)
    assert isinstance(parsed, wire.Query)
    now = time.monotonic()
    cache.put(VIEW, parsed, response("hot.example.com", 1, A_ANSWER), now - 0.5, rotate=False)
    raw = cache.raw(VIEW, parsed.ck)
    assert raw is not None
    assert_pass(prog, to_responder(q))
    before = prog.maps.hits(7)
    assert prog.maps.put(VIEW_ID, parsed.ck, raw, slot=7)
    assert prog.run(to_responder(q))[0] == TC_ACT_REDIRECT
    assert prog.run(to_responder(q))[0] == TC_ACT_REDIRECT
    assert prog.maps.hits(7) == before + 2  # the kernel's hits in the entry's slot, for prefetch and metrics
    assert prog.maps.counters()[7] == before + 2  # the agent's memory mapping of the same array
    prog.maps.remove(VIEW_ID, parsed.ck)
    assert_pass(prog, to_responder(q))


# ---- values rewritten under the program (the check: dns_answer.h) ------------------------------------


def value(prog: Prog, view_id: int, q: bytes, table: bytes = answers.ANSWERS) -> tuple[Any, Any, bytearray]:
    """(map, its key, the value's octets) of the kernel entry for query `q`."""
    parsed = wire.parse_query(q)
    assert isinstance(parsed, wire.Query)
    t = prog.bpf[table]
    k = answers._as(t.Key, answers.key(view_id, parsed.ck))
    return t, k, bytearray(bytes(t[k]))


def put_value(t: Any, k: Any, octets: bytes | bytearray) -> None:
    t[k] = t.Leaf.from_buffer_copy(bytes(octets))


E = answers.Entry


def _u(octets: bytearray, field: Any, delta: int, size: int) -> None:
    """Add `delta` to the `size`-octet host-order integer at `field`'s offset, in place."""
    off = field.offset
    v = int.from_bytes(octets[off : off + size], sys.byteorder) + delta
    octets[off : off + size] = (v % (1 << (8 * size))).to_bytes(size, sys.byteorder)


TEARS = {
    # one field as another write left it, the check still the old one's (what a tear leaves)
    "tail octet": lambda b: b.__setitem__(E.tail.offset + 19, b[E.tail.offset + 19] ^ 1),  # A's last octet
    "ttl base": lambda b: _u(b, E.ttl, 1 << 32, size=8),
    "ttl offset": lambda b: _u(b, E.ttl, 1, size=8),
    "tail_len": lambda b: _u(b, E.tail_len, -4, size=2),
    "nttl": lambda b: _u(b, E.nttl, 1, size=2),
    "counts": lambda b: b.__setitem__(E.counts.offset + 1, 2),
    "flags": lambda b: b.__setitem__(E.flags.offset + 1, b[E.flags.offset + 1] | 3),
    "stored_ns": lambda b: _u(b, E.stored_ns, 10**9, size=8),
    "expires_ns": lambda b: _u(b, E.expires_ns, 10**9, size=8),
    "tail_sum": lambda b: _u(b, E.tail_sum, 1, size=4),
    "check": lambda b: _u(b, E.check, 1, size=8),
}


@pytest.mark.parametrize("tear", sorted(TEARS))
def test_an_entry_not_matching_its_check_passes(prog: Prog, cache: Cache, tear: str) -> None:
    q = query("www.example.com")
    now = store(prog, cache, q, response("www.example.com", 1, A_ANSWER))
    t, k, good = value(prog, VIEW_ID, q)
    bad = bytearray(good)
    TEARS[tear](bad)
    assert bad != good
    put_value(t, k, bad)
    before = prog.maps.stats()["torn"]
    assert_pass(prog, to_responder(q))
    assert prog.maps.stats()["torn"] == before + 1
    put_value(t, k, good)  # the same entry, whole again: answered, so the check was the reason
    verdict, out = prog.run(to_responder(q))
    expected = userspace(cache, q, now)
    assert verdict == TC_ACT_REDIRECT and expected is not None and out == reply_frame(expected)


def test_another_keys_entry_under_this_key_passes(prog: Prog, cache: Cache) -> None:
    """An element reused for another key holds a whole entry, sealed - for that key."""
    qa, qb = query("a.example.com"), query("b.example.com")
    store(prog, cache, qa, response("a.example.com", 1, A_ANSWER))
    store(prog, cache, qb, response("b.example.com", 1, [rr(1, 300, bytes((10, 6, 6, 6)))]))
    ta, ka, _ = value(prog, VIEW_ID, qa)
    _, _, b_octets = value(prog, VIEW_ID, qb)
    put_value(ta, ka, b_octets)
    assert_pass(prog, to_responder(qa))
    # and an entry for the same name in another view (another view id is another key)
    store(prog, cache, qa, response("a.example.com", 1, A_ANSWER), view="ns-b", view_id=2)
    _, _, other_view = value(prog, 2, qa)
    put_value(ta, ka, other_view)
    assert_pass(prog, to_responder(qa))


def test_two_entries_spliced_pass(prog: Prog, cache: Cache) -> None:
    """A copy taken while the element was rewritten: its first words from one entry of the key, the
    rest from the next (a prefetch refresh with other addresses and TTLs)."""
    q = query("www.example.com")
    store(prog, cache, q, response("www.example.com", 1, [rr(1, 300, bytes((10, 1, 1, 1)))]), age=2.5)
    t, k, old = value(prog, VIEW_ID, q)
    now = store(prog, cache, q, response("www.example.com", 1, [rr(1, 200, bytes((10, 2, 2, 2)))]), age=0.5)
    _, _, new = value(prog, VIEW_ID, q)
    for cut in (E.stored_ns.offset, E.ttl.offset, E.tail.offset + 8, E.tail.offset + 16):
        put_value(t, k, new[:cut] + old[cut:])
        assert_pass(prog, to_responder(q))
        put_value(t, k, old[:cut] + new[cut:])
        assert_pass(prog, to_responder(q))
    put_value(t, k, new)
    expected = userspace(cache, q, now)
    verdict, out = prog.run(to_responder(q))
    assert verdict == TC_ACT_REDIRECT and expected is not None and out == reply_frame(expected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_a_flipped_bit_is_passed_or_unread(prog: Prog, cache: Cache, data: st.DataObject) -> None:
    """Any bit of the entry flipped: the query passes if the bit is one the check covers (every
    octet the reply is built from, and the last tail word's zero padding), else the reply is the
    cache's, unchanged (the hit counter, TTL slots and tail room past what the entry uses)."""
    q = query("www.example.com", edns=(1232, False))
    if len(prog.bpf[answers.ANSWERS]) == 0:
        two = [rr(1, 300, bytes((10, 1, 2, 3))), rr(1, 60, bytes((10, 1, 2, 4)))]
        store(prog, cache, q, response("www.example.com", 1, two), age=0.5)
    t, k, good = value(prog, VIEW_ID, q)
    assert prog.run(to_responder(q))[0] == TC_ACT_REDIRECT
    e = E.from_buffer_copy(bytes(good))
    covered = [(E.check.offset, E.ttl.offset), (E.ttl.offset, E.ttl.offset + 8 * e.nttl),
               (E.tail.offset, E.tail.offset + -(-e.tail_len // 8) * 8)]
    lo, hi = data.draw(st.sampled_from([*covered, (0, len(good))]))  # (most octets are not covered)
    bit = data.draw(st.integers(8 * lo, 8 * hi - 1))
    bad = bytearray(good)
    bad[bit // 8] ^= 1 << (bit % 8)
    put_value(t, k, bad)
    try:
        verdict, out = prog.run(to_responder(q))
    finally:
        put_value(t, k, good)
    if any(lo <= bit // 8 < hi for lo, hi in covered):
        event("a covered bit: passed")
        assert verdict == TC_ACT_OK and out == to_responder(q)
    else:
        event("an uncovered bit: answered")
        expected = userspace(cache, q, time.monotonic())
        assert verdict == TC_ACT_REDIRECT and expected is not None and out == reply_frame(expected)


def test_a_pod_value_not_matching_its_check_passes(prog: Prog, cache: Cache) -> None:
    q = query("www.example.com")
    store(prog, cache, q, response("www.example.com", 1, A_ANSWER))
    store(prog, cache, q, response("www.example.com", 1, [rr(1, 300, bytes((10, 7, 7, 7)))]), view="ns-b",
          view_id=2)
    pods = prog.bpf[answers.PODS]
    k4 = answers._as(pods.Key, answers.ip_key(POD4))
    good = bytes(pods[k4])
    P = answers.Pod
    other_view = bytearray(good)
    other_view[P.view.offset] = 2  # the view of another write, the check of this one
    opt_in = bytearray(good)
    prog.maps.set_pod(POD4, VIEW_ID, opt_out=True)
    opted_out = bytes(pods[k4])
    opt_in[:] = opted_out
    opt_in[P.flags.offset] = 0  # the opt-out lost
    prog.maps.set_pod(OTHER4, 2)
    another_pod = bytes(pods[answers._as(pods.Key, answers.ip_key(OTHER4))])  # sealed for OTHER4
    try:
        for bad in (other_view, opt_in, another_pod):
            put_value(pods, k4, bad)
            before = prog.maps.stats()["torn"]
            assert_pass(prog, to_responder(q))
            assert prog.maps.stats()["torn"] == before + 1
        assert prog.run(to_responder(q, OTHER4))[0] == TC_ACT_REDIRECT  # sealed for its own address
    finally:
        prog.maps.remove_pod(OTHER4)
        prog.maps.set_pod(POD4, VIEW_ID)
    assert bytes(pods[k4])[: P.answers.offset] == good[: P.answers.offset]
    assert prog.run(to_responder(q))[0] == TC_ACT_REDIRECT


def test_the_seed_stays_with_the_maps(prog: Prog, cache: Cache) -> None:
    """A second AnswerMaps on the same maps (an agent adopting them) reads the seed the first chose,
    so entries it did not write stay answerable; an entry sealed under another seed passes."""
    q = query("www.example.com")
    store(prog, cache, q, response("www.example.com", 1, A_ANSWER))
    seed = prog.maps.seed()
    adopter = answers.AnswerMaps(prog.bpf)
    assert seed != 0 and adopter.seed() == seed
    adopter.configure(RESPONDER4, RESPONDER6, PORT, max_udp=wire.DEFAULT_PAYLOAD, edns_payload=1232, enabled=True)
    assert prog.bpf[answers.CONFIG][0].seed == seed
    assert prog.run(to_responder(q))[0] == TC_ACT_REDIRECT
    parsed = wire.parse_query(q)
    assert isinstance(parsed, wire.Query)
    raw = cache.raw(VIEW, parsed.ck)
    assert raw is not None
    t = prog.bpf[answers.ANSWERS]
    k = answers.key(VIEW_ID, parsed.ck)
    t[answers._as(t.Key, k)] = answers._as(t.Leaf, answers.seal(k, answers.encode(raw), seed ^ 1))
    assert_pass(prog, to_responder(q))


@pytest.mark.parametrize("shape", ["64 TTLs", "longest tail"])
def test_the_largest_entries_are_the_userspace_reply(prog: Prog, cache: Cache, shape: str) -> None:
    """Every TTL slot used, or a tail as long as a reply to a 1232-octet client leaves room for: the
    copy and the check cover all of it."""
    name = "b.example.com"
    if shape == "64 TTLs":
        qtype = 1
        records = [rr(1, 300 + i, bytes((10, 0, 0, i))) for i in range(answers.CONST["NA_ANS_MAX_TTLS"])]
    else:
        qtype = 16
        rdata = wire.DEFAULT_PAYLOAD - 12 - len(enc(name)) - 4 - 11 - 12  # header, question, OPT, RR fields
        strings = b"".join(bytes((255,)) + b"t" * 255 for _ in range(rdata // 256))
        records = [rr(16, 300, strings + bytes((rdata % 256 - 1,)) + b"u" * (rdata % 256 - 1))]
    q = query(name, qtype, edns=(1232, False))
    now = store(prog, cache, q, response(name, qtype, records), age=1.5)
    _, _, octets = value(prog, VIEW_ID, q)
    e = E.from_buffer_copy(bytes(octets))
    if shape == "64 TTLs":
        assert e.nttl == answers.CONST["NA_ANS_MAX_TTLS"]
    else:
        assert 12 + len(enc(name)) + e.tail_len + 11 == wire.DEFAULT_PAYLOAD
    verdict, out = prog.run(to_responder(q))
    expected = userspace(cache, q, now)
    assert verdict == TC_ACT_REDIRECT and expected is not None and out == reply_frame(expected)
