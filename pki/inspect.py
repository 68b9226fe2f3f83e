"""Describe certificates and CRLs the way our servers will see them.

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
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls.identity import format_dn, format_serial, format_time
from pki import store
from pki.errors import StoreError

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
_SAN_PREFIX: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "DNS",
    x509.IPAddress: "IP",
    x509.UniformResourceIdentifier: "URI",
    x509.RFC822Name: "email",
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


def eku_name(oid: x509.ObjectIdentifier) -> str:
    return _EKU_NAMES.get(oid, oid.dotted_string)


def reason_name(entry: x509.RevokedCertificate) -> str:
    """The CRL reason as OpenSSL and `pki revoke --reason` spell it; no extension is unspecified."""
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return "unspecified"
    return _REASON_NAMES.get(flag, flag.value)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def days_left(not_after: datetime.datetime, now: datetime.datetime) -> int:
    return (not_after - now) // datetime.timedelta(days=1)


def describe_cert(cert: x509.Certificate, *, now: datetime.datetime) -> list[str]:
    dn = format_dn(cert.subject)
    left = days_left(cert.not_valid_after_utc, now)
    rows = [
        ("subject DN", dn),
        ("issuer DN", format_dn(cert.issuer)),
        ("serial", format_serial(cert.serial_number)),
        ("not before", format_time(cert.not_valid_before_utc)),
        ("not after", format_time(cert.not_valid_after_utc)),
        ("days left", f"{left}" if left >= 0 else f"{left} (expired)"),
        ("key", _key(cert)),
        ("CA", _ca(cert)),
        ("key usage", _ext(cert, x509.KeyUsage, _key_usage)),
        ("EKU", _ext(cert, x509.ExtendedKeyUsage, lambda v: ", ".join(map(eku_name, v)))),
        ("SAN", _ext(cert, x509.SubjectAlternativeName, _sans)),
        ("CRL DP", _ext(cert, x509.CRLDistributionPoints, _crl_dps)),
        ("SHA-256", fingerprint(cert)),
        ("policy regex", re.escape(dn)),
    ]
    return [f"  {label + ':':<14}{value}" for label, value in rows]


def describe_crl(crl: x509.CertificateRevocationList, *, now: datetime.datetime) -> list[str]:
    next_update = crl.next_update_utc
    try:
        number = str(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = "-"
    stale = next_update is None or next_update < now
    lines = [
        f"  {'issuer DN:':<14}{format_dn(crl.issuer)}",
        f"  {'CRL number:':<14}{number}",
        f"  {'this update:':<14}{format_time(crl.last_update_utc)}",
        f"  {'next update:':<14}{format_time(next_update) if next_update else '-'}"
        + ("  (OUT OF DATE: run `pki crl`)" if stale else ""),
        f"  {'revoked:':<14}{len(crl)}",
    ]
    lines += [
        f"    {format_serial(r.serial_number)}  {format_time(r.revocation_date_utc)}  "
        f"{reason_name(r)}"
        for r in crl
    ]
    return lines


def describe_file(path: Path, *, now: datetime.datetime | None = None) -> str:
    """A chain file shows its first certificate in full and the rest in a line each."""
    when = now or datetime.datetime.now(datetime.UTC)
    data = store.read_bytes(path, what="a certificate or CRL", fix="check the path")
    if b"-----BEGIN X509 CRL-----" in data:
        return "\n".join([f"{path}: CRL", *describe_crl(store.load_crl(path), now=when)])
    if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
        raise StoreError(f"{path} is a private key; inspect the matching .crt file instead")
    certs = store.load_certs(path)
    head = f"{path}: certificate" + (f" 1 of {len(certs)}" if len(certs) > 1 else "")
    lines = [head, *describe_cert(certs[0], now=when)]
    for number, cert in enumerate(certs[1:], start=2):
        lines.append(
            f"  {f'cert {number}:':<14}{format_dn(cert.subject)} ({_ca(cert)}; issuer "
            f"{format_dn(cert.issuer)}; until {format_time(cert.not_valid_after_utc)})"
        )
    return "\n".join(lines)


def _key(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    return type(key).__name__


def _ca(cert: x509.Certificate) -> str:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "no basicConstraints"
    if not bc.ca:
        return "CA:FALSE"
    return "CA:TRUE" + ("" if bc.path_length is None else f", pathlen {bc.path_length}")


def _ext(cert: x509.Certificate, kind: type[_E], show: Callable[[_E], str]) -> str:
    try:
        return show(cert.extensions.get_extension_for_class(kind).value)
    except x509.ExtensionNotFound:
        return "-"


def _key_usage(usage: x509.KeyUsage) -> str:
    return ", ".join(name for attr, name in _USAGE_NAMES.items() if getattr(usage, attr))


def _sans(sans: x509.SubjectAlternativeName) -> str:
    return ", ".join(f"{_SAN_PREFIX.get(type(n), type(n).__name__)}:{n.value}" for n in sans)


def _crl_dps(points: x509.CRLDistributionPoints) -> str:
    return ", ".join(str(n.value) for p in points for n in (p.full_name or []))
