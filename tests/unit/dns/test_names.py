"""node_agent.dns.names: encoding text names, reading / skipping wire names, the question walk, 0x20."""

from __future__ import annotations

import os

import pytest

from node_agent.dns import names, wire

HDR1 = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"  # one question
HDR2 = b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00"  # two questions
TYPE_CLASS = b"\x00\x01\x00\x01"


def test_encode_name() -> None:
    assert names.encode_name("example.com") == b"\x07example\x03com\x00"
    assert names.encode_name("example.com.") == b"\x07example\x03com\x00"
    assert names.encode_name(".") == b"\x00"
    assert names.encode_name("") == b"\x00"
    assert names.encode_name("a\\.b.c") == b"\x03a.b\x01c\x00"
    assert names.encode_name("\\065\\046x.") == b"\x03A.x\x00"
    assert names.encode_name("Mixed.Case") == b"\x05Mixed\x04Case\x00"  # spelling kept
    for bad in ("a..b", "x" * 64 + ".com", ".".join(["abcdefg"] * 40), "dangling\\"):
        with pytest.raises(ValueError):
            names.encode_name(bad)


def test_read_name_follows_pointers() -> None:
    data = b"\x00" * 12 + b"\x03foo\x07example\x00" + b"\x03bar\xc0\x10"
    assert names.read_name(data, 12) == (b"\x03foo\x07example\x00", 25)
    assert names.read_name(data, 25) == (b"\x03bar\x07example\x00", 31)
    assert names.read_name(data, 31) is None
    assert names.skip_name(data, 25) == 31
    assert names.name_to_text(b"\x03Foo\x07EXAMPLE\x00") == "foo.example"
    assert names.name_to_text(b"\x00") == ""


def test_wire_reexports_the_name_functions() -> None:
    # Other modules read them as wire.read_name etc.: the same functions, not copies.
    assert wire.read_name is names.read_name
    assert wire.skip_name is names.skip_name
    assert wire.name_to_text is names.name_to_text


def test_question_end() -> None:
    q1 = b"\x01a\x07example\x00" + TYPE_CLASS
    assert names.question_end(HDR1 + q1, 1) == 12 + len(q1)
    assert names.question_end(HDR1 + q1 + b"trailing", 1) == 12 + len(q1)
    assert names.question_end(HDR1 + q1[:-1], 1) == -1  # class cut short
    assert names.question_end(HDR1, 0) == 12
    # A second question compressed against the first: fine, unless plain names are asked for.
    q2 = b"\x01b\xc0\x0e" + TYPE_CLASS
    both = HDR2 + q1 + q2
    assert names.question_end(both, 2) == len(both)
    assert names.question_end(both, 2, plain=True) == -1
    assert names.question_end(HDR1 + b"\xc0\x0c" + TYPE_CLASS, 1) == -1  # pointer to itself
    assert names.question_end(HDR1 + b"\x41" + TYPE_CLASS, 1) == -1  # extended label type
    assert names.question_end(HDR1 + b"\x41" + TYPE_CLASS, 1, plain=True) == -1


def test_question_end_plain_does_not_bound_the_length() -> None:
    # 306 octets of labels: skip_name's 255 rule rejects it; the plain walk only delimits octets.
    long = b"".join(b"\x3c" + b"a" * 60 for _ in range(5)) + b"\x00"
    pkt = HDR1 + long + TYPE_CLASS
    assert names.question_end(pkt, 1) == -1
    assert names.question_end(pkt, 1, plain=True) == len(pkt)


def test_mix_case_flips_letters_only() -> None:
    wire_name = names.encode_name("Ab-9.x_Y.example")
    assert names.mix_case(wire_name, b"\x00" * len(wire_name)) == wire_name
    flipped = names.mix_case(wire_name, b"\xff" * len(wire_name))
    assert flipped == names.encode_name("aB-9.X_y.EXAMPLE")
    for _ in range(50):
        m = names.mix_case(wire_name, os.urandom(len(wire_name) + 2))  # longer rnd: only a prefix used
        assert len(m) == len(wire_name) and m.lower() == wire_name.lower()
        # length octets and non-letters untouched
        assert bytes(c for c, o in zip(m, wire_name, strict=True) if not chr(o).isalpha()) == bytes(
            o for o in wire_name if not chr(o).isalpha()
        )
