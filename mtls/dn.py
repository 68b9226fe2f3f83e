"""Distinguished names printed exactly as OpenSSL (and so mod_ssl) prints them (pure).

What DN policies match, and what every log line and message shows of a DN.
Printed from the name's DER, not by ``Name.rfc4514_string()``: the two
differ where a regex cares (order inside a multi-valued RDN, control
characters, a lone ``#``, ``serialNumber`` vs ``2.5.4.5``, unknown types),
and cryptography refuses names OpenSSL prints (a CN that is a BIT STRING).
A value that is no string type prints as ``#`` + its DER in hex (RFC 4514
section 2.4), as OpenSSL prints it.
Deliberately NOT reproduced: types OpenSSL can name but ``_SHORT_NAMES``
lacks (printed as ``OID=#hex``, as OpenSSL prints types it cannot name), and
OpenSSL's byte-wise output for malformed strings (we decode with U+FFFD).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from mtls.der import elements, oid_text, only

# OpenSSL's short names (OBJ_nid2sn) for the attribute types found in DNs.
_SHORT_NAMES = {
    "2.5.4.3": "CN", "2.5.4.4": "SN", "2.5.4.5": "serialNumber", "2.5.4.6": "C",
    "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.9": "street", "2.5.4.10": "O",
    "2.5.4.11": "OU", "2.5.4.12": "title", "2.5.4.13": "description",
    "2.5.4.15": "businessCategory", "2.5.4.17": "postalCode", "2.5.4.41": "name",
    "2.5.4.42": "GN", "2.5.4.43": "initials", "2.5.4.44": "generationQualifier",
    "2.5.4.45": "x500UniqueIdentifier", "2.5.4.46": "dnQualifier", "2.5.4.65": "pseudonym",
    "2.5.4.72": "role", "2.5.4.97": "organizationIdentifier",
    "1.2.840.113549.1.9.1": "emailAddress", "1.2.840.113549.1.9.2": "unstructuredName",
    "0.9.2342.19200300.100.1.1": "UID", "0.9.2342.19200300.100.1.25": "DC",
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL", "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}  # fmt: skip
# ASN.1 string tags OpenSSL prints as text (tag2nbyte in a_strex.c); others are hex-dumped.
_CODECS = {12: "utf-8", 28: "utf-32-be", 30: "utf-16-be"}
_CODECS.update(dict.fromkeys((18, 19, 20, 22, 23, 24, 26), "latin-1"))
_BIT_STRING = 0x03
_RFC2253_SPECIALS = frozenset(',+"\\<>;')


@dataclass(frozen=True)
class Entry:  # one DN attribute, in DER order as OpenSSL's X509_NAME holds it
    rdn: int  # index of its RDN (SET): attributes of one RDN print joined by "+"
    oid: str
    tag: int
    content: bytes
    tlv: bytes


def format_dn(name: x509.Name | bytes) -> str:
    """RFC 4514 string, most specific RDN first, no spaces: what DN policies match.

    Exactly mod_ssl's SSL_CLIENT_S_DN: ``X509_NAME_print_ex`` with
    ``XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB``, e.g.
    ``CN=homepage.internal,OU=Services,O=Example``. Non-ASCII stays UTF-8;
    ``,+"\\<>;``, a leading space or ``#`` and a trailing space are
    backslash-escaped; control characters become ``\\XX``; unknown attribute
    types print as ``OID=#<DER hex>`` (RFC 4514 section 2.4), and so does a
    value of a type that is no string (a BIT STRING CN). ``name`` may be the
    Name's DER; a malformed one raises ValueError, any value prints.
    """
    parts: list[str] = []
    previous: int | None = None
    for entry in reversed(entries(name)):
        if previous is not None:
            parts.append("+" if entry.rdn == previous else ",")
        previous = entry.rdn
        label = _SHORT_NAMES.get(entry.oid)
        # XN_FLAG_DUMP_UNKNOWN_FIELDS: an attribute type without a name is hex-dumped.
        value = print_value(entry, rfc2253=True) if label else "#" + entry.tlv.hex().upper()
        parts.append(f"{label or entry.oid}={value}")
    return "".join(parts)


def print_value(entry: Entry, *, rfc2253: bool) -> str:
    """OpenSSL's do_print_ex: decode by ASN.1 string type, then escape."""
    codec = _CODECS.get(entry.tag)
    if codec is None and rfc2253:
        return "#" + entry.tlv.hex().upper()  # ASN1_STRFLGS_DUMP_UNKNOWN | DUMP_DER
    # An unknown type prints byte by byte; OpenSSL keeps a BIT STRING's bits
    # without the leading unused-bits octet (X.690 8.6.2), so that is not printed.
    content = entry.content[1:] if entry.tag == _BIT_STRING else entry.content
    return escape(content.decode(codec or "latin-1", "replace"), rfc2253=rfc2253)


def escape(text: str, *, rfc2253: bool) -> str:
    """OpenSSL's do_esc_char: RFC 2253 escapes (optional) and ``\\XX`` for control characters.

    OpenSSL quirk kept: a one-character value is only checked as the *last*
    character, so a lone ``#`` is not escaped (a lone space is).
    """
    last = len(text) - 1
    out = []
    for index, char in enumerate(text):
        if rfc2253 and (
            char in _RFC2253_SPECIALS
            or (char == " " and index in (0, last))
            or (char == "#" and index == 0 < last)
        ):
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\{ord(char):02X}")
        elif char == "\\":
            out.append("\\\\")  # any escaping at all escapes the escape character
        else:
            out.append(char)
    return "".join(out)


def entries(name: x509.Name | bytes) -> list[Entry]:
    """Walk Name ::= SEQUENCE OF SET OF SEQUENCE {type OID, value ANY} (RFC 5280 4.1.2.4)."""
    der = name if isinstance(name, bytes) else name.public_bytes()
    entries = []
    for index, rdn in enumerate(elements(only(der, 0x30, "Name").content)):
        if rdn.tag != 0x31:
            raise ValueError("a Name holds something other than a SET (RDN)")
        for attribute in elements(rdn.content):
            parts = elements(attribute.content) if attribute.tag == 0x30 else []
            if len(parts) != 2 or parts[0].tag != 0x06:
                raise ValueError("an RDN holds something other than a (type OID, value) pair")
            oid, value = parts
            entry = Entry(index, oid_text(oid.content), value.tag, value.content, value.tlv)
            entries.append(entry)
    return entries
