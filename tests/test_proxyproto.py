"""mtls.proxyproto: what a load balancer may send, what it must not, and every byte in between."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mtls.errors import ProxyHeaderError
from mtls.proxyproto import (
    MAX_V1_LENGTH,
    MAX_V2_ACCEPTED_LENGTH,
    V2_SIGNATURE,
    Incomplete,
    ProxyInfo,
    build_v1_header,
    build_v2_header,
    looks_like_proxy_header,
    parse_proxy_header,
)

CLIENT_HELLO = bytes.fromhex("16 0301 0200 01 0001fc 0303") + bytes(32)  # record, ClientHello
V4 = (("203.0.113.7", 51234), ("10.0.0.2", 8443))
V6 = (("2001:db8::7", 51234), ("2001:db8::2", 8443))


def v2(ver_cmd: int, fam: int, block: bytes, length: int | None = None) -> bytes:
    """A raw v2 header, for the malformed ones build_v2_header refuses to make."""
    size = len(block) if length is None else length
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + block


V4_BLOCK = (
    bytes([203, 0, 113, 7, 10, 0, 0, 2]) + (51234).to_bytes(2, "big") + (8443).to_bytes(2, "big")
)

VALID = {
    "v1 TCP4": (
        b"PROXY TCP4 203.0.113.7 10.0.0.2 51234 8443\r\n",
        ProxyInfo(1, "PROXY", "TCP4", V4[0], V4[1], header_length=44),
    ),
    "v1 TCP6": (
        b"PROXY TCP6 2001:DB8:0:0:0:0:0:7 2001:db8::2 51234 8443\r\n",
        ProxyInfo(1, "PROXY", "TCP6", V6[0], V6[1], header_length=56),
    ),
    "v1 TCP6 v4-mapped (HAProxy's inet_ntop)": (
        b"PROXY TCP6 ::ffff:203.0.113.7 ::1 0 65535\r\n",
        ProxyInfo(
            1,
            "PROXY",
            "TCP6",
            (str(ipaddress.ip_address("::ffff:203.0.113.7")), 0),
            ("::1", 65535),
            header_length=43,
        ),
    ),
    "v1 UNKNOWN short": (
        b"PROXY UNKNOWN\r\n",
        ProxyInfo(1, "PROXY", "UNKNOWN", None, None, header_length=15),
    ),
    "v1 UNKNOWN worst case (107 bytes)": (
        b"PROXY UNKNOWN "
        + b":".join([b"ffff"] * 8)
        + b" "
        + b":".join([b"ffff"] * 8)
        + b" 65535 65535\r\n",
        ProxyInfo(1, "PROXY", "UNKNOWN", None, None, header_length=107),
    ),
    "v2 TCP4": (v2(0x21, 0x11, V4_BLOCK), ProxyInfo(2, "PROXY", "TCP4", V4[0], V4[1], (), 28)),
    "v2 TCP6": (build_v2_header(*V6), ProxyInfo(2, "PROXY", "TCP6", V6[0], V6[1], (), 52)),
    "v2 LOCAL (health check), family ignored": (
        v2(0x20, 0xFF, b"\x01\x02\x03"),
        ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, (), 19),
    ),
    "v2 UNSPEC: addresses ignored": (
        v2(0x21, 0x00, b"xyz"),
        ProxyInfo(2, "PROXY", "UNKNOWN", None, None, (), 19),
    ),
    "v2 UDP4: accepted without addresses": (
        v2(0x21, 0x12, V4_BLOCK),
        ProxyInfo(2, "PROXY", "UDP4", None, None, (), 28),
    ),
    "v2 UNIX stream": (
        v2(0x21, 0x31, b"\x00" * 216),
        ProxyInfo(2, "PROXY", "UNIX_STREAM", None, None, (), 232),
    ),
    "v2 TCP4 with TLVs (authority, unique id, empty)": (
        build_v2_header(*V4, tlvs=[(0x02, b"svc.internal"), (0x05, b"\xab" * 16), (0x04, b"")]),
        ProxyInfo(
            2,
            "PROXY",
            "TCP4",
            V4[0],
            V4[1],
            ((0x02, b"svc.internal"), (0x05, b"\xab" * 16), (0x04, b"")),
            65,
        ),
    ),
}


@pytest.mark.parametrize(("header", "expected"), VALID.values(), ids=VALID.keys())
def test_valid_headers_parse_and_consume_exactly_the_header(
    header: bytes, expected: ProxyInfo
) -> None:
    assert len(header) == expected.header_length
    assert parse_proxy_header(header, accept="auto") == expected
    assert parse_proxy_header(header, accept=f"v{expected.version}") == expected  # type: ignore[arg-type]
    # The ClientHello that follows in the same segment is not part of the header.
    assert parse_proxy_header(header + CLIENT_HELLO, accept="auto") == expected
    assert looks_like_proxy_header(header)


@pytest.mark.parametrize("header", [h for h, _ in VALID.values()], ids=VALID.keys())
def test_every_truncation_of_a_valid_header_is_incomplete(header: bytes) -> None:
    for cut in range(len(header)):
        with pytest.raises(Incomplete) as info:
            parse_proxy_header(header[:cut], accept="auto")
        assert cut < info.value.needed <= len(header)


INVALID = {
    "TLS ClientHello": (CLIENT_HELLO, "a TLS ClientHello"),
    "one byte of TLS": (b"\x16", "first bytes 16"),
    "plain HTTP": (b"GET / HTTP/1.1\r\n", "does not start with a PROXY v1 or v2 header"),
    "v1 glued protocol": (b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "does not start with"),
    "v1 unknown protocol": (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol 'UDP4'"),
    "v1 unknown protocol, early": (b"PROXY TCPX", "unknown protocol 'TCPX'"),
    "v1 no CRLF within 107": (b"PROXY UNKNOWN " + b"f" * 100, "no CRLF within 107 bytes"),
    "v1 bare LF": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "byte 0x0a"),
    "v1 NUL": (b"PROXY TCP4 1.2.3.4\x00", "byte 0x00"),
    "v1 double space": (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "got 5"),
    "v1 missing port": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "got 3"),
    "v1 IPv6 in TCP4": (
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        "TCP4 source address is not an IPv4 address: '::1'",
    ),
    "v1 IPv4 in TCP6": (
        b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n",
        "TCP6 destination address is not an IPv6",
    ),
    "v1 leading zero octet": (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "'01.2.3.4'"),
    "v1 IPv6 zone": (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "'fe80::1%eth0'"),
    "v1 port leading zero": (
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
        "source port must be 0-65535",
    ),
    "v1 port too big": (
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        "destination port must be 0-65535",
    ),
    "v1 port sign": (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "'+1'"),
    "v2 version 1": (v2(0x11, 0x11, V4_BLOCK), "version 1, not 2"),
    "v2 command 2": (v2(0x22, 0x11, V4_BLOCK), "command 0x2"),
    "v2 family 4": (v2(0x21, 0x41, V4_BLOCK), "family/protocol byte 0x41"),
    "v2 TCP4 with unspecified transport": (v2(0x21, 0x10, V4_BLOCK), "byte 0x10"),
    "v2 block too short for TCP6": (v2(0x21, 0x21, b"\x00" * 20), "too short for TCP6: 20 < 36"),
    "v2 block too short, early": (v2(0x21, 0x11, b"", length=8), "too short for TCP4: 8 < 12"),
    "v2 oversized, early": (v2(0x21, 0x11, b"", length=2000), "2000 bytes"),
    "v2 TLV overruns": (
        v2(0x21, 0x11, V4_BLOCK + b"\x02\x00\x05abc"),
        "overruns the header: length 5 > 3",
    ),
    "v2 TLV header truncated": (v2(0x21, 0x11, V4_BLOCK + b"\x02\x00"), "truncated: 2 bytes left"),
}


@pytest.mark.parametrize(("data", "message"), INVALID.values(), ids=INVALID.keys())
def test_invalid_headers_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=None) as info:
        parse_proxy_header(data, accept="auto")
    assert message in str(info.value)


def test_a_tls_client_hello_is_refused_on_its_first_byte() -> None:
    for cut in range(1, len(CLIENT_HELLO)):
        with pytest.raises(ProxyHeaderError, match="TLS ClientHello"):
            parse_proxy_header(CLIENT_HELLO[:cut], accept="auto")
    assert not looks_like_proxy_header(CLIENT_HELLO)


def test_the_accepted_version_is_enforced() -> None:
    with pytest.raises(ProxyHeaderError, match="got a PROXY v2 header, but only v1 is accepted"):
        parse_proxy_header(build_v2_header(*V4), accept="v1")
    with pytest.raises(ProxyHeaderError, match="got a PROXY v1 header, but only v2 is accepted"):
        parse_proxy_header(build_v1_header(*V4), accept="v2")
    with pytest.raises(ProxyHeaderError, match="does not start with a PROXY v2 header"):
        parse_proxy_header(b"GET /", accept="v2")
    with pytest.raises(ValueError, match="accept must be"):
        parse_proxy_header(b"", accept="v3")  # type: ignore[arg-type]


def test_nothing_yet_is_incomplete_for_any_mode() -> None:
    for accept, needed in (("v1", 15), ("v2", 16), ("auto", 15)):
        with pytest.raises(Incomplete) as info:
            parse_proxy_header(b"", accept=accept)  # type: ignore[arg-type]
        assert info.value.needed == needed


def test_the_largest_accepted_v2_header_parses_and_one_more_byte_does_not() -> None:
    tlv_room = MAX_V2_ACCEPTED_LENGTH - 16 - 12 - 3
    biggest = build_v2_header(*V4, tlvs=[(0xE0, b"x" * tlv_room)])
    assert parse_proxy_header(biggest, accept="v2").header_length == MAX_V2_ACCEPTED_LENGTH
    with pytest.raises(ProxyHeaderError, match="at most 1024 are accepted"):
        parse_proxy_header(
            build_v2_header(*V4, tlvs=[(0xE0, b"x" * (tlv_room + 1))])[:16], accept="v2"
        )


def test_looks_like_proxy_header() -> None:
    assert looks_like_proxy_header(b"PROXY TCP4 1.2.3.4")
    assert looks_like_proxy_header(b"PRO")  # could still become one: refuse it too
    assert looks_like_proxy_header(V2_SIGNATURE[:5])
    assert not looks_like_proxy_header(b"")
    assert not looks_like_proxy_header(b"POST / HTTP/1.1")
    assert not looks_like_proxy_header(b"PROXY/1.0")


def test_builders_refuse_what_no_header_can_say() -> None:
    assert build_v1_header(None, None) == b"PROXY UNKNOWN\r\n"
    assert build_v2_header(None, None, command="LOCAL") == V2_SIGNATURE + b"\x20\x00\x00\x00"
    with pytest.raises(ValueError, match="same IP version"):
        build_v1_header(V4[0], V6[1])
    with pytest.raises(ValueError, match="both addresses or neither"):
        build_v2_header(V4[0], None)
    with pytest.raises(ValueError, match="port 70000"):
        build_v2_header(V4[0], ("10.0.0.2", 70000))


# -- properties ---------------------------------------------------------------

_endpoint_v4 = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535))
_endpoint_v6 = st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535))
_pairs = st.one_of(st.tuples(_endpoint_v4, _endpoint_v4), st.tuples(_endpoint_v6, _endpoint_v6))
_tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5)


def _same_endpoint(parsed: tuple[str, int] | None, given: tuple[str, int]) -> bool:
    return parsed is not None and (ipaddress.ip_address(parsed[0]), parsed[1]) == (
        ipaddress.ip_address(given[0]),
        given[1],
    )


@settings(max_examples=100, deadline=None)
@given(_pairs, _tlvs, st.binary(max_size=8), st.sampled_from(["v1", "v2"]))
def test_built_headers_parse_back(
    pair: tuple[tuple[str, int], tuple[str, int]],
    tlvs: list[tuple[int, bytes]],
    tail: bytes,
    version: str,
) -> None:
    header = build_v1_header(*pair) if version == "v1" else build_v2_header(*pair, tlvs=tlvs)
    info = parse_proxy_header(header + tail, accept="auto")
    assert info.header_length == len(header)
    assert info.family == ("TCP4" if ipaddress.ip_address(pair[0][0]).version == 4 else "TCP6")
    assert _same_endpoint(info.source, pair[0])
    assert _same_endpoint(info.destination, pair[1])
    assert info.tlvs == (tuple(tlvs) if version == "v2" else ())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["v1", "v2", "auto"]))
@example(V2_SIGNATURE + b"\x21\x11\x00\x0c", "auto")
@example(b"PROXY TCP6 ", "v1")
def test_random_bytes_only_ever_raise_proxy_header_error_or_incomplete(
    data: bytes, accept: str
) -> None:
    outcome = _parse(data, accept)
    if isinstance(outcome, Incomplete):
        assert outcome.needed > len(data)
    elif isinstance(outcome, ProxyInfo):
        assert 0 < outcome.header_length <= len(data)


def _parse(data: bytes, accept: str) -> ProxyInfo | Incomplete | ProxyHeaderError:
    """Any other exception propagates and fails the property."""
    try:
        return parse_proxy_header(data, accept=accept)  # type: ignore[arg-type]
    except (Incomplete, ProxyHeaderError) as signal:
        return signal


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([h for h, _ in VALID.values()]).flatmap(
        lambda h: st.tuples(st.just(h), st.integers(0, len(h) - 1), st.integers(0, 255))
    )
)
def test_corrupting_one_byte_never_crashes_or_overreads(case: tuple[bytes, int, int]) -> None:
    header, position, value = case
    data = header[:position] + bytes([value]) + header[position + 1 :]
    outcome = _parse(data, "auto")
    if isinstance(outcome, ProxyInfo):
        assert outcome.header_length <= len(data)


def test_v1_headers_longer_than_the_limit_are_never_incomplete() -> None:
    with pytest.raises(ProxyHeaderError, match="no CRLF within 107 bytes"):
        parse_proxy_header(b"PROXY UNKNOWN" + b" " * (MAX_V1_LENGTH - 13), accept="v1")
