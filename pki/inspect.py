"""Describe certificates and CRLs the way our servers will see them.

Certificates, chain files, CRLs and CSRs, as text or (``--json``) as the
dicts of the ``*_facts`` functions, whose keys `pki inspect --help` lists.
The subject DN, serial and dates are printed with `mtls.identity`'s
formatters, the very functions that fill SSL_CLIENT_S_DN and friends, so
the DN printed here is, character for character, what a DN policy regex
must fullmatch. Pure apart from `describe_file`, which reads one file.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls.dn import format_dn
from mtls.identity import format_serial, format_time
from mtls.x509rules import crl_number, extension, general_names, stale_crl
from pki import store
from pki.csr import describe_extension, describe_san
from pki.errors import StoreError
from pki.lifetime import time_left

_E = TypeVar("_E", bound=x509.ExtensionType)

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}
_REASON_NAMES = {
    x509.ReasonFlags.key_compromise: "keyCompromise",
    x509.ReasonFlags.ca_compromise: "cACompromise",
    x509.ReasonFlags.superseded: "superseded",
    x509.ReasonFlags.cessation_of_operation: "cessationOfOperation",
    x509.ReasonFlags.affiliation_changed: "affiliationChanged",
    x509.ReasonFlags.certificate_hold: "certificateHold",
}
_USAGE_NAMES = {
    "digital_signature": "digitalSignature",
    "content_commitment": "nonRepudiation",
    "key_encipherment": "keyEncipherment",
    "data_encipherment": "dataEncipherment",
    "key_agreement": "keyAgreement",
    "key_cert_sign": "keyCertSign",
    "crl_sign": "cRLSign",
}

#: The ``--json`` section of the command's help: every key, documented once.
JSON_HELP = """\
--json prints one object. Every kind has "file" and "type" (certificate, crl, csr).
  certificate: subject, issuer, serial, not_before, not_after (ISO 8601, UTC),
    seconds_left (negative once expired), key, ca, key_usage, eku, san, crl_dp
    (lists), sha256, policy_regex, chain (the other certificates of the file:
    subject, issuer, ca, not_after)
  crl: issuer, crl_number, this_update, next_update, out_of_date, revoked
    (list of serial, at, reason)
  csr: subject, san, key, signature_valid, extensions (what it asks for; `pki
    sign` takes only CN, OU and the SANs)
Keys may be added in later versions; none is renamed or removed."""


def eku_name(oid: x509.ObjectIdentifier) -> str:
    return _EKU_NAMES.get(oid, oid.dotted_string)


def reason_name(entry: x509.RevokedCertificate) -> str:
    """The CRL reason as OpenSSL and `pki revoke --reason` spell it; no extension is unspecified."""
    reason = extension(entry, x509.CRLReason)
    if reason is None:
        return "unspecified"
    return _REASON_NAMES.get(reason.reason, reason.reason.value)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def days_left(not_after: datetime.datetime, now: datetime.datetime) -> int:
    return (not_after - now) // datetime.timedelta(days=1)


def cert_facts(cert: x509.Certificate, *, now: datetime.datetime) -> dict[str, Any]:
    """A certificate as `pki inspect --json` shows it; the text form prints the same values."""
    dn = format_dn(cert.subject)
    return {
        "type": "certificate",
        "subject": dn,
        "issuer": format_dn(cert.issuer),
        "serial": format_serial(cert.serial_number),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "seconds_left": int((cert.not_valid_after_utc - now).total_seconds()),
        "key": key_name(cert.public_key()),
        "ca": _ca(cert),
        "key_usage": _ext(cert, x509.KeyUsage, _key_usage),
        "eku": _ext(cert, x509.ExtendedKeyUsage, lambda v: [eku_name(o) for o in v]),
        "san": [describe_san(n) for n in general_names(cert)],
        "crl_dp": _ext(cert, x509.CRLDistributionPoints, _crl_dps),
        "sha256": fingerprint(cert),
        "policy_regex": re.escape(dn),
    }


def describe_cert(cert: x509.Certificate, *, now: datetime.datetime) -> list[str]:
    facts = cert_facts(cert, now=now)
    left = days_left(cert.not_valid_after_utc, now)
    rows = [
        ("subject DN", facts["subject"]),
        ("issuer DN", facts["issuer"]),
        ("serial", facts["serial"]),
        ("not before", format_time(cert.not_valid_before_utc)),
        ("not after", format_time(cert.not_valid_after_utc)),
        ("days left", f"{left}" if left >= 0 else f"{left} (expired)"),
        ("time left", time_left(cert.not_valid_after_utc, now)),
        *[(label, facts[key]) for label, key in _FACT_ROWS],
    ]
    return _rows(rows)


def crl_facts(crl: x509.CertificateRevocationList, *, now: datetime.datetime) -> dict[str, Any]:
    next_update = crl.next_update_utc
    number = crl_number(crl)
    return {
        "type": "crl",
        "issuer": format_dn(crl.issuer),
        "crl_number": number,
        "this_update": crl.last_update_utc.isoformat(),
        "next_update": next_update.isoformat() if next_update else None,
        "out_of_date": stale_crl(next_update, now) is not None,
        "revoked": [
            {
                "serial": format_serial(r.serial_number),
                "at": r.revocation_date_utc.isoformat(),
                "reason": reason_name(r),
            }
            for r in crl
        ],
    }


def describe_crl(crl: x509.CertificateRevocationList, *, now: datetime.datetime) -> list[str]:
    facts = crl_facts(crl, now=now)
    next_update = crl.next_update_utc
    lines = _rows(
        [
            ("issuer DN", facts["issuer"]),
            ("CRL number", "-" if facts["crl_number"] is None else str(facts["crl_number"])),
            ("this update", format_time(crl.last_update_utc)),
            (
                "next update",
                (format_time(next_update) if next_update else "-")
                + ("  (OUT OF DATE: run `pki crl`)" if facts["out_of_date"] else ""),
            ),
            ("revoked", str(len(crl))),
        ]
    )
    lines += [
        f"    {format_serial(r.serial_number)}  {format_time(r.revocation_date_utc)}  "
        f"{reason_name(r)}"
        for r in crl
    ]
    return lines


def csr_facts(request: x509.CertificateSigningRequest) -> dict[str, Any]:
    """What a CSR asks for. `pki sign` takes only part of it: see `pki.csr`."""
    return {
        "type": "csr",
        "subject": format_dn(request.subject),
        "san": [describe_san(n) for n in general_names(request)],
        "key": key_name(request.public_key()),
        "signature_valid": request.is_signature_valid,
        "extensions": [describe_extension(e) for e in request.extensions],
    }


def describe_csr(request: x509.CertificateSigningRequest) -> list[str]:
    facts = csr_facts(request)
    valid = "yes" if facts["signature_valid"] else "NO: altered or corrupted, `pki sign` refuses it"
    return _rows(
        [
            ("subject DN", facts["subject"] or "(empty)"),
            ("SAN", facts["san"]),
            ("key", facts["key"]),
            ("signature", valid),
            ("extensions", facts["extensions"]),
        ]
    )


def inspect_file(path: Path, *, now: datetime.datetime | None = None) -> dict[str, Any]:
    """`pki inspect --json`: the facts of the file's first object, plus ``file`` and ``chain``."""
    when = now or datetime.datetime.now(datetime.UTC)
    content = _load(path)
    if isinstance(content, x509.CertificateRevocationList):
        return {"file": str(path), **crl_facts(content, now=when)}
    if isinstance(content, x509.CertificateSigningRequest):
        return {"file": str(path), **csr_facts(content)}
    chain = [
        {
            "subject": format_dn(c.subject),
            "issuer": format_dn(c.issuer),
            "ca": _ca(c),
            "not_after": c.not_valid_after_utc.isoformat(),
        }
        for c in content[1:]
    ]
    return {"file": str(path), **cert_facts(content[0], now=when), "chain": chain}


def describe_file(path: Path, *, now: datetime.datetime | None = None) -> str:
    """A chain file shows its first certificate in full and the rest in a line each."""
    when = now or datetime.datetime.now(datetime.UTC)
    content = _load(path)
    if isinstance(content, x509.CertificateRevocationList):
        return "\n".join([f"{path}: CRL", *describe_crl(content, now=when)])
    if isinstance(content, x509.CertificateSigningRequest):
        return "\n".join([f"{path}: certificate signing request", *describe_csr(content)])
    certs = content
    head = f"{path}: certificate" + (f" 1 of {len(certs)}" if len(certs) > 1 else "")
    lines = [head, *describe_cert(certs[0], now=when)]
    for number, cert in enumerate(certs[1:], start=2):
        lines.append(
            f"  {f'cert {number}:':<14}{format_dn(cert.subject)} ({_ca(cert)}; issuer "
            f"{format_dn(cert.issuer)}; until {format_time(cert.not_valid_after_utc)})"
        )
    return "\n".join(lines)


def _load(
    path: Path,
) -> x509.CertificateRevocationList | x509.CertificateSigningRequest | list[x509.Certificate]:
    data = store.read_bytes(path, what="a certificate, CSR or CRL", fix="check the path")
    if b"-----BEGIN X509 CRL-----" in data:
        return store.load_crl(path)
    if b"CERTIFICATE REQUEST-----" in data:
        return store.load_csr(path)
    if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
        raise StoreError(f"{path} is a private key; inspect the matching .crt file instead")
    try:
        return store.load_certs(path)
    except StoreError:
        pass
    try:
        return store.load_csr(path)
    except StoreError:
        raise StoreError(
            f"{path} holds no PEM or DER certificate, CSR or CRL; check the path"
        ) from None


def _rows(rows: list[tuple[str, object]]) -> list[str]:
    """``  label:       value``; a list prints comma-separated, an empty one as ``-``."""
    lines = []
    for label, value in rows:
        text = (", ".join(value) or "-") if isinstance(value, list) else str(value)
        lines.append(f"  {label + ':':<14}{text}")
    return lines


_FACT_ROWS = (
    ("key", "key"),
    ("CA", "ca"),
    ("key usage", "key_usage"),
    ("EKU", "eku"),
    ("SAN", "san"),
    ("CRL DP", "crl_dp"),
    ("SHA-256", "sha256"),
    ("policy regex", "policy_regex"),
)


def key_name(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__.removeprefix("_")


def _ca(cert: x509.Certificate) -> str:
    bc = extension(cert, x509.BasicConstraints)
    if bc is None:
        return "no basicConstraints"
    if not bc.ca:
        return "CA:FALSE"
    return "CA:TRUE" + ("" if bc.path_length is None else f", pathlen {bc.path_length}")


def _ext(cert: x509.Certificate, kind: type[_E], show: Callable[[_E], list[str]]) -> list[str]:
    value = extension(cert, kind)
    return [] if value is None else show(value)


def _key_usage(usage: x509.KeyUsage) -> list[str]:
    return [name for attr, name in _USAGE_NAMES.items() if getattr(usage, attr)]


def _crl_dps(points: x509.CRLDistributionPoints) -> list[str]:
    return [str(n.value) for p in points for n in (p.full_name or [])]
