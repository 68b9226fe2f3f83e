"""The CA's memory: which serial belongs to which name, and what was revoked when.

Pure: parses and renders ``index.json``; `pki.store` reads and writes it.
JSON rather than OpenSSL's ``index.txt`` because we never hand the
directory to ``openssl ca`` and a person can read and diff this one.
Serials are keys in mod_ssl's format (upper-case hex, whole bytes), the same
string `pki inspect` prints and SSL_CLIENT_M_SERIAL carries.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509

from mtls.dn import format_dn
from mtls.identity import format_serial
from pki.authority import REASONS, RevokedEntry
from pki.errors import StoreError, UnknownCertificateError

FORMAT = 1


@dataclass(frozen=True)
class Entry:
    serial: int
    name: str
    subject: str
    issued: datetime.datetime
    not_after: datetime.datetime
    revoked_at: datetime.datetime | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Index:
    crl_url: str | None = None
    crl_number: int = 0
    entries: tuple[Entry, ...] = field(default=())

    def add(self, entry: Entry) -> Index:
        return replace(self, entries=(*self.entries, entry))

    def next_crl(self) -> Index:
        """CRL numbers only grow (RFC 5280 5.2.3), so every signing takes the next one."""
        return replace(self, crl_number=self.crl_number + 1)

    def find(self, name_or_serial: str) -> list[Entry]:
        """Unrevoked entries for a NAME (all its certificates) or a serial (any hex spelling)."""
        serial = parse_serial(name_or_serial)
        found = [e for e in self.entries if e.name == name_or_serial]
        found = found or [e for e in self.entries if e.serial == serial]
        if not found:
            raise UnknownCertificateError(
                f"no certificate named or with serial {name_or_serial!r} in the index; "
                "`pki inspect NAME.crt` shows a certificate's serial"
            )
        live = [e for e in found if e.revoked_at is None]
        if not live:
            last = found[-1]
            raise UnknownCertificateError(
                f"{name_or_serial} is already revoked (serial {format_serial(last.serial)} "
                f"on {last.revoked_at:%Y-%m-%d}, {last.reason}); nothing to do"
            )
        return live

    def revoke(self, serials: set[int], at: datetime.datetime, reason: str) -> Index:
        entries = tuple(
            replace(e, revoked_at=at, reason=reason) if e.serial in serials else e
            for e in self.entries
        )
        return replace(self, entries=entries)

    def revoked(self) -> list[RevokedEntry]:
        return [
            RevokedEntry(e.serial, e.revoked_at, REASONS[e.reason or "unspecified"])
            for e in self.entries
            if e.revoked_at is not None
        ]


def entry_for(name: str, cert: x509.Certificate) -> Entry:
    return Entry(
        serial=cert.serial_number,
        name=name,
        subject=format_dn(cert.subject),
        issued=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def parse_serial(text: str) -> int | None:
    """Accept ``0A1B2C``, ``0a:1b:2c`` and ``0x0a1b2c``; None when it is not hex at all."""
    digits = text.replace(":", "").removeprefix("0x")
    try:
        return int(digits, 16) if digits else None
    except ValueError:
        return None


def dump_index(index: Index) -> bytes:
    doc = {
        "format": FORMAT,
        "crl_url": index.crl_url,
        "crl_number": index.crl_number,
        "certificates": {
            format_serial(e.serial): {
                "name": e.name,
                "subject": e.subject,
                "issued": e.issued.isoformat(),
                "not_after": e.not_after.isoformat(),
                "revoked": None
                if e.revoked_at is None
                else {"at": e.revoked_at.isoformat(), "reason": e.reason},
            }
            for e in index.entries
        },
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def parse_index(data: bytes, *, source: str) -> Index:
    """Parse index.json; anything unexpected names the file rather than raising KeyError."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        entries = tuple(_entry(k, v) for k, v in doc["certificates"].items())
        return Index(doc.get("crl_url"), int(doc["crl_number"]), entries)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"{source} is not a pki index ({exc}); restore it from a backup") from None


def _entry(serial: str, item: dict[str, Any]) -> Entry:
    revoked = item.get("revoked")
    number = parse_serial(serial)
    if number is None:
        raise ValueError(f"serial {serial!r} is not hex")
    reason = None if revoked is None else str(revoked["reason"])
    if reason is not None and reason not in REASONS:
        raise ValueError(f"unknown revocation reason {reason!r}")
    return Entry(
        serial=number,
        name=str(item["name"]),
        subject=str(item["subject"]),
        issued=datetime.datetime.fromisoformat(item["issued"]),
        not_after=datetime.datetime.fromisoformat(item["not_after"]),
        revoked_at=None if revoked is None else datetime.datetime.fromisoformat(revoked["at"]),
        reason=reason,
    )
