"""kernel/maps.py: the layouts read from bpf/dns_steer.h, the codecs, and the in-memory fake of bcc's
tables (checked against bcc's own types when the test runs as root)."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import os
import secrets
import socket
from typing import Any

import pytest

from node_agent.kernel import loader, maps


def test_every_declared_map_has_a_name_and_header_types() -> None:
    assert set(maps.DECLS) == set(maps.NAMES)
    for decl in maps.DECLS.values():
        assert decl.max_entries > 0
        for t in (decl.key, decl.leaf):
            assert t in maps.STRUCTS.values() or t in (ct.c_uint8, ct.c_uint32, ct.c_uint64)
    assert maps.DECLS[maps.BACKENDS].max_entries == maps.CONST["NA_MAX_BACKENDS"]


def test_struct_parser_reads_arrays_and_constants_and_refuses_what_it_cannot_read() -> None:
    s = maps.header_structs("#define NA_N 3\nstruct na_t {\n __u16 a; /* x; y */\n __u32 b[NA_N];\n};\n")["na_t"]
    assert [f[0] for f in s._fields_] == ["a", "b"]
    assert s.b.offset == 4 and ct.sizeof(s) == 4 + 3 * 4  # natural alignment, as in C
    with pytest.raises(ValueError, match="cannot read field"):
        maps.header_structs("struct na_t { int a; };")


@pytest.mark.parametrize("addr", ["10.1.2.3", "240.240.0.7", "2001:db8::1", "::ffff:10.0.0.1"])
def test_address_words_round_trip(addr: str) -> None:
    words = maps.addr_words(addr)
    assert len(words) == 4
    assert ipaddress.ip_address(maps.words_addr(words, maps.family(addr))) == ipaddress.ip_address(addr)
    # Network order in memory: the words' bytes are the address's bytes.
    packed = b"".join(w.to_bytes(4, "little") for w in words)
    fam = maps.family(addr)
    assert packed[: 4 if fam == socket.AF_INET else 16] == socket.inet_pton(fam, addr)


def test_vip_key_and_backend_codecs_round_trip() -> None:
    fake = maps.FakeMaps()
    vips, backends = fake[maps.VIPS], fake[maps.BACKENDS]
    for vip in ("240.240.0.1", "2001:2::5"):
        k = maps.vip_key(vips, vip, 8443, 6)
        assert k.port == socket.htons(8443) and k.family == maps.family(vip)
        assert maps.read_vip_key(k) == (vip, 8443, 6)
    leaf = maps.backend_leaf(backends, "10.0.0.9", 53)
    assert maps.read_backend(leaf) == ("10.0.0.9", 53)
    key = maps.backend_key(backends, 7, 2)
    assert (key.id, key.slot) == (7, 2)


def test_fake_reads_are_copies_and_writes_are_logged_in_order() -> None:
    seen: list[maps.Write] = []
    fake = maps.FakeMaps(observe=lambda m, w: seen.append(w))
    pods = fake[maps.PODS]
    key = ct.c_uint64(42)
    with pytest.raises(KeyError):
        pods[key]
    pods[key] = pods.Leaf()
    leaf = pods[key]
    leaf.steered = 5
    assert pods[key].steered == 0  # not written back
    pods[key] = leaf
    assert pods[key].steered == 5
    del pods[key]
    with pytest.raises(KeyError):
        del pods[key]
    raw = bytes(key)
    assert fake.writes == seen == [maps.Write("set", maps.PODS, raw)] * 2 + [maps.Write("del", maps.PODS, raw)]


def test_fake_arrays_have_every_index_and_deleting_zeroes() -> None:
    fake = maps.FakeMaps(ncpus=3)
    hb = fake[maps.HEARTBEAT]
    assert len(hb) == 1 and hb[0].mono_ns == 0
    leaf = hb.Leaf()
    leaf.mono_ns = 9
    hb[maps.u32(0)] = leaf
    del hb[maps.u32(0)]
    assert hb[0].mono_ns == 0 and len(hb) == 1
    with pytest.raises(IndexError):
        hb[maps.u32(1)]
    stats = fake[maps.STATS]
    per_cpu = stats.Leaf()
    per_cpu[0], per_cpu[2] = 4, 3
    stats[maps.u32(1)] = per_cpu
    assert sum(stats[maps.u32(1)]) == 7  # per-CPU values, as bcc returns them


def test_fake_refuses_wrong_keys_and_a_full_hash() -> None:
    fake = maps.FakeMaps()
    vips = fake[maps.VIPS]
    with pytest.raises(TypeError):
        vips[ct.c_uint32(1)] = vips.Leaf()  # a u32 is no na_vip_key
    with pytest.raises(TypeError):
        fake[maps.PODS][ct.c_uint32(1)] = fake[maps.PODS].Leaf()  # 4 bytes for an 8-byte key
    dns4 = fake[maps.DNS4]
    for i in range(dns4.max_entries):
        dns4[maps.u32(i)] = ct.c_uint8(1)
    dns4[maps.u32(0)] = ct.c_uint8(1)  # an update of a present key still works
    with pytest.raises(Exception, match="Could not update table"):
        dns4[maps.u32(dns4.max_entries)] = ct.c_uint8(1)
    with pytest.raises(KeyError):
        fake[b"na_nope"]


def test_pod_map_keeps_counters_across_an_update() -> None:
    fake = maps.FakeMaps()
    pods = maps.PodMap(fake[maps.PODS])
    pods.enroll(7)
    leaf = fake[maps.PODS][ct.c_uint64(7)]
    leaf.steered, leaf.failopen = 3, 1  # what the programs count
    fake[maps.PODS][ct.c_uint64(7)] = leaf
    pods.enroll(7, opt_out=True)
    assert pods.entries() == {7: maps.PodEntry(7, True, 3, 1)}
    pods.unenroll(7)
    pods.unenroll(7)  # gone already: no error
    assert pods.entries() == {}


def _layout(t: Any) -> tuple[int, list[tuple[str, int, int]]]:
    """Size and (name, offset, size) of every named field; bcc adds padding fields of its own."""
    if not issubclass(t, ct.Structure):
        return ct.sizeof(t), []
    return ct.sizeof(t), [(f[0], getattr(t, f[0]).offset, ct.sizeof(f[1])) for f in t._fields_
                          if not f[0].startswith("__pad")]


@pytest.mark.root
def test_fake_layouts_are_the_ones_bcc_compiles() -> None:
    """The fake is only worth its tests if its structs are the kernel's: compare with the types bcc
    derives from the compiled programs."""
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF maps")
    pin_root = f"/sys/fs/bpf/na-maps-{secrets.token_hex(3)}"
    bpf = loader._compile(f"{pin_root}/v{maps.CONST['NA_LAYOUT_VERSION']}")
    try:
        fake = maps.FakeMaps()
        for name in maps.NAMES:
            if maps.DECLS[name].kind == "sockmap":  # bcc has no table for it (SockMap, tested below)
                continue
            real, ours = bpf[name], fake[name]
            assert _layout(real.Key) == _layout(ours.Key), name
            # Per-CPU maps: bcc's Leaf is one value per CPU; sLeaf is the declared one.
            assert _layout(getattr(real, "sLeaf", real.Leaf)) == _layout(maps.DECLS[name].leaf), name
            assert real.max_entries == ours.max_entries, name
    finally:
        bpf.cleanup()
        loader.uninstall(pin_root)
    assert not os.path.exists(pin_root)


def _listeners() -> list[socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    return [udp, tcp]


def test_fake_sock_map_drops_a_closed_socket_and_logs_writes() -> None:
    fake = maps.FakeMaps()
    udp, tcp = _listeners()
    kinds = [maps.sock_kind(udp), maps.sock_kind(tcp)]
    assert kinds == [maps.CONST["NA_SOCK_UDP4"], maps.CONST["NA_SOCK_TCP4"]]
    for sock in (udp, tcp):
        fake.socks.set(maps.sock_kind(sock), sock)
    assert [fake.socks.cookie(k) for k in kinds] == [maps.socket_cookie(udp), maps.socket_cookie(tcp)]
    udp.close()
    assert fake.socks.cookie(kinds[0]) is None and fake.socks.cookie(kinds[1]) == maps.socket_cookie(tcp)
    fake.socks.delete(kinds[1])
    fake.socks.delete(kinds[1])  # gone already: nothing written
    assert fake.socks.cookie(kinds[1]) is None
    assert [w.op for w in fake.writes] == ["set", "set", "del"]
    with pytest.raises(OSError):
        fake.socks.set(maps.CONST["NA_SOCK_MAX"], tcp)
    tcp.close()
    with pytest.raises(KeyError):
        fake[maps.SOCKS]  # as bcc: no table for a sockmap


@pytest.mark.root
def test_kernel_sock_map_holds_the_responders_sockets_until_they_close() -> None:
    """The kernel's side of what the fake claims: a UDP and a listening TCP socket go into the pinned
    na_socks, read back as their cookies, and leave the map the moment they close."""
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF maps")
    pin_root = f"/sys/fs/bpf/na-maps-{secrets.token_hex(3)}"
    pin = f"{pin_root}/v{maps.CONST['NA_LAYOUT_VERSION']}"
    bpf = loader._compile(pin)
    sm = maps.SockMap.open(f"{pin}/{maps.SOCKS.decode()}")
    udp, tcp = _listeners()
    try:
        assert sm is not None
        for sock in (udp, tcp):
            sm.set(maps.sock_kind(sock), sock)
            assert sm.cookie(maps.sock_kind(sock)) == maps.socket_cookie(sock)
        assert sm.cookie(maps.CONST["NA_SOCK_UDP6"]) is None
        udp.close()
        assert sm.cookie(maps.CONST["NA_SOCK_UDP4"]) is None
        sm.delete(maps.CONST["NA_SOCK_TCP4"])
        sm.delete(maps.CONST["NA_SOCK_TCP4"])  # an empty slot: no error
        assert sm.cookie(maps.CONST["NA_SOCK_TCP4"]) is None
    finally:
        udp.close()
        tcp.close()
        if sm is not None:
            sm.close()
        bpf.cleanup()
        loader.uninstall(pin_root)
