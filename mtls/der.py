"""The few DER structures we walk ourselves (X.690): TLVs, OIDs, a certificate's two names.

Pure functions over bytes. cryptography parses a certificate strictly but
builds its ``Name`` objects lazily, and refuses some that OpenSSL prints: a
CN whose value is a BIT STRING makes ``cert.subject`` raise TypeError. What
mod_ssl exports is printed from the DER, so that is where we read names.

Every malformed input raises ValueError (never IndexError or TypeError):
the worker turns a ValueError into a refused handshake. Deliberately NOT
accepted: the indefinite length form and lengths over 4 bytes, which DER
forbids or no certificate needs (X.690 10.1).
"""

from __future__ import annotations

from typing import NamedTuple


class Element(NamedTuple):
    tag: int  # the identifier's first byte (class, constructed bit, number or 0x1F)
    content: bytes
    tlv: bytes  # the whole element, identifier and length included


def elements(data: bytes) -> list[Element]:
    """The DER elements that fill ``data`` exactly, in order."""
    found, position, end = [], 0, len(data)
    while position < end:
        start, tag = position, data[position]
        position += 1
        if tag & 0x1F == 0x1F:  # high tag number: base-128 digits, last one below 0x80
            while position < end and data[position] & 0x80:
                position += 1
            position += 1
        if position >= end:
            raise ValueError("DER element truncated in its identifier or length")
        length = data[position]
        position += 1
        if length & 0x80:
            size = length & 0x7F
            if not 1 <= size <= 4:
                raise ValueError(f"DER length form 0x{length:02X} is not allowed")
            if position + size > end:
                raise ValueError("DER element truncated in its length")
            length = int.from_bytes(data[position : position + size], "big")
            position += size
        if position + length > end:
            raise ValueError("DER element overruns its container")
        position += length
        found.append(Element(tag, data[position - length : position], data[start:position]))
    return found


def only(data: bytes, tag: int, what: str) -> Element:
    """``data`` is exactly one element with ``tag``."""
    items = elements(data)
    if len(items) != 1 or items[0].tag != tag:
        raise ValueError(f"{what} is not a single DER element with tag 0x{tag:02X}")
    return items[0]


def oid_text(content: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER's content octets (X.690 8.19)."""
    if not content or content[-1] & 0x80:
        raise ValueError("OBJECT IDENTIFIER is empty or ends inside a sub-identifier")
    arcs, value = [], 0
    for byte in content:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))


def certificate_names(tbs: bytes) -> tuple[bytes, bytes]:
    """(issuer, subject) Name DER from a TBSCertificate (RFC 5280 section 4.1).

    TBSCertificate ::= SEQUENCE { version [0] EXPLICIT OPTIONAL, serialNumber,
    signature, issuer, validity, subject, ... }.
    """
    fields = elements(only(tbs, 0x30, "TBSCertificate").content)
    if fields and fields[0].tag == 0xA0:
        fields = fields[1:]
    if len(fields) < 5:
        raise ValueError("TBSCertificate ends before its subject")
    return fields[2].tlv, fields[4].tlv
