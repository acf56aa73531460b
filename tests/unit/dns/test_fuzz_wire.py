"""Bounded fuzzing of the raw-bytes path: nothing may raise, and cache output must be a sound message.

Seeds come from tests/corpus/*.bin (regenerate with tests/corpus/make_corpus.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from node_agent.dns import names, wire
from node_agent.dns.wire import Query, Verdict
from node_agent.resolve.cache import Cache
from node_agent.settings import CacheSettings

CORPUS_DIR = Path(__file__).resolve().parents[2] / "corpus"
CORPUS = {p.name: p.read_bytes() for p in sorted(CORPUS_DIR.glob("*.bin"))}
QUERIES = [v for k, v in CORPUS.items() if k.startswith("q_")]
RESPONSES = [v for k, v in CORPUS.items() if k.startswith("r_")]
GOOD_QUERIES = [
    v for k, v in CORPUS.items() if k.startswith("q_") and not k.startswith("q_bad") and "version1" not in k
]

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SMALL = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 4))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == 0 and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == 1 and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 2:
            del data[pos:]
        elif op == 3:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 4 and data:
            data[pos] = draw(st.sampled_from([0x00, 0x3F, 0x40, 0xC0, 0xFF]))
    return bytes(data)


packets = st.one_of(st.binary(max_size=600), mutated(QUERIES), mutated(RESPONSES))


def exercise_wire(data: bytes) -> None:
    r = wire.parse_query(data)
    assert type(r) is Query or isinstance(r, Verdict)
    if type(r) is Query:
        assert data[12 : r.qend - 4] == r.qname and r.key == r.qname.lower()
        assert len(r.qname) <= 255
        out = wire.servfail(data)
        assert out is not None and wire.walk(out) is not None
    elif r is not Verdict.DROP:
        out = wire.formerr(data)
        assert out is not None and wire.walk(out) is not None
    wire.badvers(data)
    w = wire.walk(data)
    if w is not None:
        for off, ttl in zip(w.ttl_offsets, w.ttls, strict=True):
            raw = struct.unpack_from("!I", data, off)[0]
            assert ttl == (0 if raw & 0x80000000 else raw)
    for limit in (12, 512):
        t = wire.truncate(data, limit)
        if len(data) >= 12:
            assert len(t) <= max(limit, 12)
    for i in (0, 12, len(data) // 2):
        wire.skip_name(data, i)
        wire.read_name(data, i)
    qs = wire.question_of(data)
    if qs is not None:  # a reply echoing the question is matched, whatever else the packet holds
        echo = data[:2] + bytes((data[2] | 0x80,)) + data[3:]
        assert wire.match_reply(echo, data[:2], data[2] & 0x78, qs, True) == wire.REPLY_OK
    if len(data) >= 12:
        end = names.question_end(data, (data[4] << 8) | data[5])
        assert end == -1 or 12 <= end <= len(data)


@FUZZ
@given(packets)
def test_wire_never_raises(data: bytes) -> None:
    exercise_wire(data)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_seeds(name: str) -> None:
    exercise_wire(CORPUS[name])


def test_corpus_expectations() -> None:
    for name, data in CORPUS.items():
        r = wire.parse_query(data)
        if name.startswith("q_bad"):
            assert r is Verdict.FORMERR, name
        elif name == "q_opt_version1.bin":
            assert r is Verdict.SLOW
        elif name.startswith("q_"):
            assert type(r) is Query, name
        elif name.startswith("r_bad"):
            assert wire.walk(data) is None, name
        else:
            assert r is Verdict.DROP and wire.walk(data) is not None, name


# --------------------------------------------------------------------------------------------------
# cache


def _query_for(data: bytes) -> Query | None:
    r = wire.parse_query(data)
    return r if type(r) is Query else None


def check_hit(q: Query, out: bytes | None, stale_ttl: int | None = None) -> None:
    if out is None:
        return
    assert out[:2] == q.idb and out[2] & 0x80
    assert out[12 : 12 + len(q.qname)] == q.qname
    w = wire.walk(out)
    assert w is not None, out
    assert (w.opt is not None) == (q.edns is not None)
    assert w.do == q.do
    assert bool(out[2] & 1) == q.rd
    if stale_ttl is not None:
        assert all(t == stale_ttl for t in w.ttls)


@st.composite
def response_for(draw: st.DrawFn, q: Query) -> bytes:
    """A structurally valid answer to `q` with random sections, TTLs and flags, maybe mutated."""
    rcode = draw(st.sampled_from([0, 0, 0, 2, 3, 5]))
    flags = 0x8180 | rcode | (0x0200 if draw(st.booleans()) and draw(st.booleans()) else 0)
    an = draw(st.integers(0, 4))
    body = b""
    for _ in range(an):
        ttl = draw(st.integers(0, 2**32 - 1))
        body += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + draw(st.binary(min_size=4, max_size=4))
    ns = 0
    if draw(st.booleans()):
        ns = 1
        soa_rdata = b"\x02ns\xc0\x0c\x01h\xc0\x0c" + struct.pack("!IIIII", 1, 2, 3, 4, draw(st.integers(0, 2**32 - 1)))
        body += b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, draw(st.integers(0, 2**32 - 1)), len(soa_rdata)) + soa_rdata
    ar = 0
    if draw(st.booleans()):
        ar += 1
        body += b"\x02ns\xc0\x0c" + struct.pack("!HHIH", 1, 1, draw(st.integers(0, 100000)), 4) + b"\x0a\x00\x00\x35"
    if draw(st.booleans()):
        ar += 1
        body += b"\x00\x00\x29\x04\xd0\x00\x00" + (b"\x80\x00" if draw(st.booleans()) else b"\x00\x00") + b"\x00\x00"
    qsec = q.qname if draw(st.booleans()) else q.key
    data = bytearray(
        struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), flags, 1, an, ns, ar)
        + qsec
        + struct.pack("!HH", q.qtype, q.qclass)
        + body
    )
    if draw(st.integers(0, 3)) == 0 and data:  # sometimes break it
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            del data[draw(st.integers(0, len(data) - 1)) :]
    return bytes(data)


@FUZZ_SMALL
@given(st.data())
def test_cache_put_get_never_raises(data: st.DataObject) -> None:
    qbytes = data.draw(st.one_of(st.sampled_from(GOOD_QUERIES), mutated(QUERIES)))
    q = _query_for(qbytes)
    if q is None:
        return
    cache = Cache(
        max_entries=data.draw(st.integers(1, 4)),
        settings=CacheSettings(
            min_ttl=data.draw(st.sampled_from([0, 5])),
            max_ttl=data.draw(st.sampled_from([60, 86400])),
            neg_ttl_nosoa=data.draw(st.sampled_from([0, 10])),
            prefetch_hits=data.draw(st.integers(1, 3)),
            max_stale=100,
        ),
    )
    view = data.draw(st.sampled_from(["a", "b"]))
    resp = data.draw(st.one_of(response_for(q), response_for(q), mutated(RESPONSES), st.binary(max_size=300)))
    now = 1000.0
    stored = cache.put(view, q, resp, now)
    event("stored" if stored else "not stored")
    if stored:
        assert len(cache) == 1 and cache.stats.bytes > 0
    # the same question asked differently: other ID, maybe other case / EDNS on-off
    variants = [q] + [v for v in (_query_for(x) for x in QUERIES) if v is not None]
    for _ in range(data.draw(st.integers(1, 6))):
        now += data.draw(st.floats(0, 200, allow_nan=False))
        asked = data.draw(st.sampled_from(variants)) if data.draw(st.booleans()) else q
        hit = cache.get(view, asked, now)
        check_hit(asked, hit)
        stale = cache.get_stale(view, asked, now)
        check_hit(asked, stale)
        if hit is not None:
            event("hit")
        elif stale is not None:
            event("stale")
    if stored:
        assert cache.get(view, q, 1000.0) is None or cache.stats.hits > 0
    cache.flush_names({wire.name_to_text(q.key)})
    assert len(cache) == 0 and cache.stats.bytes == 0
    cache.take_prefetches()


@FUZZ_SMALL
@given(st.lists(st.tuples(st.sampled_from(GOOD_QUERIES), st.binary(max_size=200)), max_size=20))
def test_cache_garbage_responses(pairs: list[tuple[bytes, bytes]]) -> None:
    cache = Cache(max_entries=3, max_bytes=3000)
    for i, (qb, resp) in enumerate(pairs):
        q = _query_for(qb)
        assert q is not None
        # splice the real question into garbage so some of it gets past the question check
        spliced = resp[:12] + qb[12 : q.qend] + resp[12:]
        cache.put("v", q, spliced, float(i))
        check_hit(q, cache.get("v", q, float(i)))
    assert len(cache) <= 3 and cache.stats.bytes <= 3000 + 1000
