"""mtls.der and DN printing over DER nobody vetted: a value prints or a ValueError says why.

A peer's subject is whatever a trusted CA signed; OpenSSL verifies the
chain, not what the attribute values are. format_dn must print any value
(non-string types as ``#`` + DER hex, RFC 4514 section 2.4) and raise
nothing but ValueError on structure it cannot walk (the worker's refusal).
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtls import der
from mtls.dn import format_dn
from pki.authority import build_leaf, build_root, make_name

# Universal string types the DN printer decodes (tag2nbyte in OpenSSL's a_strex.c).
STRING_TAGS = {12, 18, 19, 20, 22, 23, 24, 26, 28, 30}


def tlv(tag: int, content: bytes) -> bytes:
    """DER of one element: short or long definite length (X.690 8.1.3)."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def oid(*arcs: int) -> bytes:
    body = b""
    for arc in (40 * arcs[0] + arcs[1], *arcs[2:]):
        digits = [arc & 0x7F]
        while arc := arc >> 7:
            digits.append(0x80 | arc & 0x7F)
        body += bytes(reversed(digits))
    return tlv(0x06, body)


def name(*rdns: list[tuple[bytes, bytes]]) -> bytes:
    """Name from RDNs of (OID DER, value DER) pairs."""
    sets = b"".join(tlv(0x31, b"".join(tlv(0x30, t + v) for t, v in rdn)) for rdn in rdns)
    return tlv(0x30, sets)


CN = oid(2, 5, 4, 3)
_arcs = st.tuples(
    st.integers(0, 2), st.integers(0, 39), st.lists(st.integers(0, 2**40), max_size=4)
)
_types = st.sampled_from([CN, oid(2, 5, 4, 10), oid(2, 5, 4, 45)]) | _arcs.map(
    lambda a: oid(a[0], a[1], *a[2])
)
_values = st.builds(
    tlv, st.integers(0, 0xFF).filter(lambda t: t & 0x1F != 0x1F), st.binary(max_size=40)
)
_rdns = st.lists(st.lists(st.tuples(_types, _values), min_size=1, max_size=3), max_size=4)


@settings(max_examples=300, deadline=None)
@given(_rdns)
def test_any_attribute_value_prints_and_never_raises(rdns: list[list[tuple[bytes, bytes]]]) -> None:
    text = format_dn(name(*rdns))
    assert isinstance(text, str)
    for _, value in (pair for rdn in rdns for pair in rdn):
        if value[0] not in STRING_TAGS:
            assert "#" + value.hex().upper() in text  # RFC 4514 2.4: # + the value's DER


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | _rdns.map(lambda rdns: name(*rdns)[:-1]))
def test_bytes_that_are_no_name_raise_value_error_only(data: bytes) -> None:
    with contextlib.suppress(ValueError):  # the one failure the worker turns into a refusal
        assert isinstance(format_dn(data), str)


def test_a_bit_string_value_is_hex_dumped_whole() -> None:
    assert format_dn(name([(CN, tlv(0x03, b"\x00\xffab"))])) == "CN=#030400FF6162"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x30", "truncated in its identifier or length"),
        (b"\x30\x05ab", "overruns its container"),
        (b"\x30\x80\x00\x00", "length form 0x80 is not allowed"),
        (b"\x30\x85\x00\x00\x00\x00\x01x", "length form 0x85 is not allowed"),
        (b"\x30\x82\x01", "truncated in its length"),
        (b"\x1f\x81", "truncated in its identifier or length"),
    ],
)
def test_malformed_der_is_a_value_error_naming_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        der.elements(data)


def test_a_high_tag_number_is_one_element() -> None:
    assert der.elements(b"\x1f\x81\x01\x01x\x04\x00") == [
        der.Element(0x1F, b"x", b"\x1f\x81\x01\x01x"),
        der.Element(0x04, b"", b"\x04\x00"),
    ]


@pytest.mark.parametrize("content", [b"", b"\x2a\x86"], ids=["empty", "unfinished arc"])
def test_a_malformed_oid_is_a_value_error(content: bytes) -> None:
    with pytest.raises(ValueError, match="OBJECT IDENTIFIER is empty or ends inside"):
        der.oid_text(content)


def test_oid_text_reads_large_arcs() -> None:
    assert der.oid_text(oid(2, 999, 2**40)[2:]) == f"2.999.{2**40}"


def test_certificate_names_are_the_issuer_and_subject_der() -> None:
    root = build_root()
    cert = build_leaf(root, name=make_name("svc.internal"), profile="client").cert
    issuer, subject = der.certificate_names(cert.tbs_certificate_bytes)
    assert (issuer, subject) == (cert.issuer.public_bytes(), cert.subject.public_bytes())
    with pytest.raises(ValueError, match="TBSCertificate ends before its subject"):
        der.certificate_names(tlv(0x30, tlv(0x02, b"\x01")))
