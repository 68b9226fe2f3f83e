"""PROXY protocol v1/v2 headers, parsed from (and built as) bytes: no sockets here.

A TCP-passthrough load balancer (HAProxy ``send-proxy-v2``) prepends one
header to the connection so that we learn the real client address while TLS
still ends at gunicorn. Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
(sections 2.1 and 2.2 cited below as "spec").

How the worker uses it: peek bytes with MSG_PEEK, call ``parse_proxy_header``;
on ``Incomplete`` wait for more (under a deadline); on success ``recv``
exactly ``header_length`` bytes, so the ClientHello stays in the socket. So
the parser never looks past the header, and raises ``Incomplete`` only
while every byte seen can still belong to one.

Strict, as Envoy is: anything off-spec is a ``ProxyHeaderError`` naming the
fault. Deliberately NOT done: CRC32C TLV verification (spec: "may"),
interpreting TLVs (returned raw), addresses for v2 UNSPEC/UDP/UNIX
families (accepted without addresses: the real endpoints are used), and the
spec's leniency for bytes after ``PROXY UNKNOWN`` (printable ASCII only).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mtls.errors import ProxyHeaderError

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Longest v1 line, CRLF included ("PROXY UNKNOWN" + two IPv6 + two ports; spec 2.1).
MAX_V1_LENGTH = 107
#: Longest v2 header the spec allows: 16 fixed bytes + a 16-bit length.
MAX_V2_LENGTH = 16 + 65535
#: Longest v2 header we accept: addresses plus 1 KiB of TLVs (HAProxy sends far less).
#: Larger ones are refused as soon as their 16 fixed bytes arrive, without waiting.
MAX_V2_ACCEPTED_LENGTH = 16 + 1024
_V1_SHORTEST = len(b"PROXY UNKNOWN\r\n")

Accept = Literal["v1", "v2", "auto"]
Command = Literal["PROXY", "LOCAL"]
Family = Literal["TCP4", "TCP6", "UDP4", "UDP6", "UNIX_STREAM", "UNIX_DGRAM", "UNKNOWN"]

# v2 family/transport byte (spec 2.2): name and address block size. Unlisted bytes are invalid.
_V2_FAMILIES: dict[int, tuple[Family, int]] = {
    0x00: ("UNKNOWN", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX_STREAM", 216),
    0x32: ("UNIX_DGRAM", 216),
}
_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")  # spec 2.1: decimal, no leading zeroes


@dataclass(frozen=True)
class ProxyInfo:
    """One parsed header. ``source`` is the real client; None when the header carries none."""

    version: int  # 1 or 2
    command: Command  # LOCAL (v2 only): a health check by the proxy itself
    family: Family
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...] = ()  # v2 (type, value), in header order
    header_length: int = 0  # bytes to consume from the stream: exactly the header


class Incomplete(Exception):  # a signal to read more, not an error: no MtlsError
    """``data`` is a valid prefix of a header: peek again once at least ``needed`` bytes are in."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"PROXY header incomplete: at least {needed} bytes needed")
        self.needed = needed


def looks_like_proxy_header(data: bytes) -> bool:
    """True if ``data`` is, or may be the start of, a v1 or v2 header.

    The worker refuses such a connection from an address outside
    MTLS_PROXY_ALLOW_FROM: a client must not be able to forge its address.
    """
    return bool(data) and (_prefix_of(data, V1_SIGNATURE) or _prefix_of(data, V2_SIGNATURE))


def parse_proxy_header(data: bytes, *, accept: Accept) -> ProxyInfo:
    """Parse the header at the start of ``data``; bytes after it are left alone.

    Raises ``Incomplete`` while ``data`` is a strict prefix of a valid header,
    and ``ProxyHeaderError`` as soon as it cannot be one (a TLS ClientHello
    fails on its first byte).
    """
    if accept not in ("v1", "v2", "auto"):
        raise ValueError(f"accept must be 'v1', 'v2' or 'auto', not {accept!r}")
    wanted = {"v1": "a PROXY v1", "v2": "a PROXY v2", "auto": "a PROXY v1 or v2"}[accept]
    if not data:
        raise Incomplete(_V1_SHORTEST if accept != "v2" else 16)
    if _prefix_of(data, V2_SIGNATURE):
        if accept == "v1":
            raise ProxyHeaderError(
                "got a PROXY v2 header, but only v1 is accepted (MTLS_PROXY_PROTOCOL=v1)"
            )
        return _parse_v2(data)
    if _prefix_of(data, V1_SIGNATURE):
        if accept == "v2":
            raise ProxyHeaderError(
                "got a PROXY v1 header, but only v2 is accepted (MTLS_PROXY_PROTOCOL=v2)"
            )
        return _parse_v1(data)
    hint = " (a TLS ClientHello: is the load balancer sending PROXY headers?)"
    raise ProxyHeaderError(
        f"connection does not start with {wanted} header: first bytes "
        f"{data[:8].hex(' ')}{hint if data[0] == 0x16 else ''}"
    )


def _parse_v1(data: bytes) -> ProxyInfo:
    """Spec 2.1: one US-ASCII line, single spaces, ending in CRLF within 107 bytes."""
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        _check_v1_prefix(data[:MAX_V1_LENGTH])
        if len(data) >= MAX_V1_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 header has no CRLF within {MAX_V1_LENGTH} bytes")
        raise Incomplete(max(_V1_SHORTEST, len(data) + 1))
    line = data[:end]
    _check_v1_chars(line)
    fields = line.split(b" ")
    protocol = fields[1]
    if protocol == b"UNKNOWN":  # the rest of the line is to be ignored
        return ProxyInfo(1, "PROXY", "UNKNOWN", None, None, header_length=end + 2)
    if protocol not in _V1_PROTOCOLS:
        raise ProxyHeaderError(f"PROXY v1 header has unknown protocol {_show(protocol)}")
    family: Family = "TCP4" if protocol == b"TCP4" else "TCP6"
    if len(fields) != 6:
        raise ProxyHeaderError(
            f"PROXY v1 {family} header needs 4 single-space-separated fields after "
            f"the protocol, got {len(fields) - 2}: {_show(line)}"
        )
    version = 4 if family == "TCP4" else 6
    source = (_v1_address(fields[2], version, "source"), _v1_port(fields[4], "source"))
    destination = (
        _v1_address(fields[3], version, "destination"),
        _v1_port(fields[5], "destination"),
    )
    return ProxyInfo(1, "PROXY", family, source, destination, header_length=end + 2)


def _check_v1_prefix(data: bytes) -> None:
    """Fail early on a partial line no header can continue: bad bytes, unknown protocol."""
    _check_v1_chars(data[:-1] if data.endswith(b"\r") else data)
    protocol, space, _ = data[len(V1_SIGNATURE) :].rstrip(b"\r").partition(b" ")
    if space:
        possible = protocol in _V1_PROTOCOLS
    else:
        possible = any(known.startswith(protocol) for known in _V1_PROTOCOLS)
    if not possible:
        raise ProxyHeaderError(f"PROXY v1 header has unknown protocol {_show(protocol)}")


def _check_v1_chars(line: bytes) -> None:
    bad = next((byte for byte in line if not 0x20 <= byte <= 0x7E), None)
    if bad is not None:
        raise ProxyHeaderError(
            f"PROXY v1 header contains byte {bad:#04x}; it must be printable ASCII ending in CRLF"
        )


def _v1_address(field: bytes, version: int, what: str) -> str:
    try:
        address = ipaddress.ip_address(field.decode("ascii"))
    except ValueError:
        address = None
    # The spec's grammar has no IPv6 zone ("%eth0"), which ipaddress would accept.
    if address is None or address.version != version or "%" in str(address):
        raise ProxyHeaderError(
            f"PROXY v1 TCP{version} {what} address is not an IPv{version} address: {_show(field)}"
        )
    return str(address)


def _v1_port(field: bytes, what: str) -> int:
    if not _V1_PORT.fullmatch(field) or int(field) > 65535:
        raise ProxyHeaderError(
            f"PROXY v1 {what} port must be 0-65535 without leading zeroes, not {_show(field)}"
        )
    return int(field)


def _parse_v2(data: bytes) -> ProxyInfo:
    """Spec 2.2: 12-byte signature, version/command, family/transport, length, block."""
    if len(data) < 16:
        raise Incomplete(16)
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 header has version {version}, not 2")
    if command not in (0, 1):
        raise ProxyHeaderError(
            f"PROXY v2 header has command {command:#x}: only 0 (LOCAL) and 1 (PROXY) exist"
        )
    length = int.from_bytes(data[14:16], "big")
    total = 16 + length
    if total > MAX_V2_ACCEPTED_LENGTH:
        raise ProxyHeaderError(
            f"PROXY v2 header announces {length} bytes of addresses and TLVs; "
            f"at most {MAX_V2_ACCEPTED_LENGTH - 16} are accepted"
        )
    if command == 0:  # LOCAL: "discard the protocol block including the family"
        if len(data) < total:
            raise Incomplete(total)
        return ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, header_length=total)
    if data[13] not in _V2_FAMILIES:
        raise ProxyHeaderError(
            f"PROXY v2 header has invalid address family/protocol byte {data[13]:#04x}"
        )
    family, size = _V2_FAMILIES[data[13]]
    if length < size:
        raise ProxyHeaderError(f"PROXY v2 address block too short for {family}: {length} < {size}")
    if len(data) < total:
        raise Incomplete(total)
    if family == "UNKNOWN":  # UNSPEC: "the receiver should ignore address information"
        return ProxyInfo(2, "PROXY", family, None, None, header_length=total)
    source = destination = None
    if family in ("TCP4", "TCP6"):
        width = 4 if family == "TCP4" else 16
        ips = [ipaddress.ip_address(data[16 + i * width : 16 + (i + 1) * width]) for i in (0, 1)]
        ports = data[16 + 2 * width : 16 + size]
        source = (str(ips[0]), int.from_bytes(ports[:2], "big"))
        destination = (str(ips[1]), int.from_bytes(ports[2:], "big"))
    tlvs = _parse_tlvs(data[16 + size : total], offset=16 + size)
    return ProxyInfo(2, "PROXY", family, source, destination, tlvs, total)


def _parse_tlvs(block: bytes, *, offset: int) -> tuple[tuple[int, bytes], ...]:
    """Type (1 byte), length (2 bytes), value; each must fit inside the header (spec 2.2)."""
    tlvs, position = [], 0
    while position < len(block):
        left = len(block) - position
        if left < 3:
            raise ProxyHeaderError(
                f"PROXY v2 TLV at byte {offset + position} is truncated: {left} bytes left, need 3"
            )
        kind, size = block[position], int.from_bytes(block[position + 1 : position + 3], "big")
        if size > left - 3:
            raise ProxyHeaderError(
                f"PROXY v2 TLV type {kind:#04x} at byte {offset + position} overruns the header: "
                f"length {size} > {left - 3} bytes left"
            )
        tlvs.append((kind, block[position + 3 : position + 3 + size]))
        position += 3 + size
    return tuple(tlvs)


def build_v1_header(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """A v1 line for (address, port) pairs, or ``PROXY UNKNOWN`` for None: for tests and tools."""
    if src is None or dst is None:
        if src is not None or dst is not None:
            raise ValueError("give both addresses or neither")
        return b"PROXY UNKNOWN\r\n"
    source, destination = _endpoints(src, dst)
    protocol = "TCP4" if source[0].version == 4 else "TCP6"
    text = f"PROXY {protocol} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    return text.encode("ascii")


def build_v2_header(
    src: tuple[str, int] | None,
    dst: tuple[str, int] | None,
    command: Command = "PROXY",
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """A v2 header (TCP over IPv4/IPv6, or UNSPEC for None) with ``tlvs`` appended."""
    if command not in ("PROXY", "LOCAL"):
        raise ValueError(f"command must be 'PROXY' or 'LOCAL', not {command!r}")
    block, family = b"", 0x00
    if src is not None or dst is not None:
        if src is None or dst is None:
            raise ValueError("give both addresses or neither")
        source, destination = _endpoints(src, dst)
        family = 0x11 if source[0].version == 4 else 0x21
        block = source[0].packed + destination[0].packed
        block += source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    for kind, value in tlvs:
        if not 0 <= kind <= 255 or len(value) > 65535:
            raise ValueError(f"TLV type {kind} with {len(value)} bytes does not fit PROXY v2")
        block += bytes([kind]) + len(value).to_bytes(2, "big") + value
    if len(block) > 65535:
        raise ValueError(f"PROXY v2 block of {len(block)} bytes exceeds 65535")
    version_command = 0x20 | (1 if command == "PROXY" else 0)
    return V2_SIGNATURE + bytes([version_command, family]) + len(block).to_bytes(2, "big") + block


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _endpoints(
    src: tuple[str, int], dst: tuple[str, int]
) -> tuple[tuple[IPAddress, int], tuple[IPAddress, int]]:
    source, destination = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if source.version != destination.version:
        raise ValueError(f"{src[0]} and {dst[0]} are not of the same IP version")
    for port in (src[1], dst[1]):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not in 0-65535")
    return (source, src[1]), (destination, dst[1])


def _prefix_of(data: bytes, signature: bytes) -> bool:
    """``data`` starts with ``signature``, or is a beginning of it."""
    return data[: len(signature)] == signature[: len(data)]


def _show(raw: bytes) -> str:
    return repr(raw[:64].decode("ascii", "backslashreplace"))
