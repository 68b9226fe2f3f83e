"""Would our servers accept this certificate, and if not, why?

`verify_chain` is the only code that touches ``cryptography.x509.verification``
(its API is marked unstable; when it changes, only that function does). The
verifier answers yes or no with a terse message, so on a no we look at the
leaf ourselves to name the likely cause: out of its validity period, the
wrong purpose, a hostname it does not cover; otherwise the chain does not
lead to a trusted root. Only the first cause found is reported.

Revocation is ours too: the verifier has no CRL support. We trust a CRL only
if it is signed by the leaf's issuer and not past its nextUpdate, which is
what OpenSSL's CRL check (and so our servers) demand.

Deliberately NOT checked: OCSP, CRL Distribution Points (we read the CRL
file we are given), and the root's own revocation.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls.identity import format_dn, format_serial
from pki import names
from pki.errors import CertificateRefused
from pki.inspect import eku_name, reason_name

Purpose = Literal["client", "server"]

_EKU = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}

#: The ``--json`` section of the command's help: every key, documented once.
JSON_HELP = """\
--json prints one object: cert, purpose, accepted (true/false), subject, chain
(subject DNs, leaf first), checks (what passed), reason (why refused, or null),
revocation_checked. The exit status is the same as without --json."""


@dataclass(frozen=True)
class Verdict:
    """An accepted certificate: the verified chain (leaf first, root last) and what was checked."""

    chain: tuple[x509.Certificate, ...]
    checks: tuple[str, ...]


def verify_chain(
    leaf: x509.Certificate,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    purpose: Purpose = "client",
    now: datetime.datetime | None = None,
    hostname: str | None = None,
) -> tuple[x509.Certificate, ...]:
    """The verified chain, leaf first; `CertificateRefused` saying why when there is none.

    For the server purpose without a hostname, the leaf's own first DNS or IP
    SAN stands in: the chain and purpose are checked, the hostname is not.
    """
    when = now or datetime.datetime.now(datetime.UTC)
    if not roots:
        raise CertificateRefused("untrusted chain: no trusted root given")
    builder = verification.PolicyBuilder().store(verification.Store(list(roots))).time(when)
    try:
        if purpose == "client":
            verified = builder.build_client_verifier().verify(leaf, list(intermediates))
            return tuple(verified.chain)
        subject = _subject(hostname) if hostname else _own_subject(leaf)
        return tuple(builder.build_server_verifier(subject).verify(leaf, list(intermediates)))
    except verification.VerificationError as exc:
        why = _diagnose(leaf, purpose, when, hostname) or _untrusted(leaf, roots, str(exc))
        raise CertificateRefused(why) from None


def check_revocation(
    leaf: x509.Certificate,
    issuer: x509.Certificate,
    crl: x509.CertificateRevocationList,
    *,
    now: datetime.datetime | None = None,
) -> str:
    """Raise if ``crl`` lists the leaf, or cannot be trusted to say; else describe the CRL."""
    when = now or datetime.datetime.now(datetime.UTC)
    key = issuer.public_key()
    signers = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    if (
        crl.issuer != issuer.subject
        or not isinstance(key, signers)
        or not crl.is_signature_valid(key)
    ):
        raise CertificateRefused(
            f"the CRL is not signed by the leaf's issuer {format_dn(issuer.subject)} "
            f"(CRL issuer {format_dn(crl.issuer)}); revocation cannot be checked"
        )
    next_update = crl.next_update_utc
    if next_update is None or next_update < when:
        raise CertificateRefused(
            f"the CRL is out of date (nextUpdate {_day(next_update)}); servers refuse every "
            "client until it is re-signed: run `pki crl --dir DIR`"
        )
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    if entry is not None:
        raise CertificateRefused(
            f"revoked on {_day(entry.revocation_date_utc)} ({reason_name(entry)}), "
            f"serial {format_serial(leaf.serial_number)}"
        )
    return f"not revoked (CRL number {_crl_number(crl)}, next update {_day(next_update)})"


def check_certificate(
    leaf: x509.Certificate,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    purpose: Purpose = "client",
    now: datetime.datetime | None = None,
    hostname: str | None = None,
    crl: x509.CertificateRevocationList | None = None,
    policy: re.Pattern[str] | None = None,
) -> Verdict:
    """Everything our server does with a peer certificate, in the order it does it."""
    chain = verify_chain(
        leaf,
        roots=roots,
        intermediates=intermediates,
        purpose=purpose,
        now=now,
        hostname=hostname,
    )
    checks = [f"valid for {purpose} use until {_day(leaf.not_valid_after_utc)}"]
    if hostname:
        checks.append(f"covers hostname {hostname}")
    elif purpose == "server":
        checks.append("hostname not checked (pass --hostname)")
    if crl is not None:
        issuer = chain[1] if len(chain) > 1 else chain[0]
        checks.append(check_revocation(leaf, issuer, crl, now=now))
    if policy is not None:
        dn = format_dn(leaf.subject)
        if not policy.fullmatch(dn):
            raise CertificateRefused(f"DN {dn} does not match policy {policy.pattern!r}")
        checks.append(f"DN matches policy {policy.pattern!r}")
    return Verdict(chain, tuple(checks))


def _diagnose(
    leaf: x509.Certificate, purpose: Purpose, when: datetime.datetime, host: str | None
) -> str | None:
    if leaf.not_valid_after_utc < when:
        return f"expired on {_day(leaf.not_valid_after_utc)}"
    if leaf.not_valid_before_utc > when:
        return f"not yet valid: valid from {_day(leaf.not_valid_before_utc)}"
    ekus = _ekus(leaf)
    if ekus is not None and _EKU[purpose] not in ekus:
        has = ", ".join(eku_name(o) for o in ekus) or "none"
        return f"wrong purpose: not valid for {purpose} use (extended key usage: {has})"
    if host and not _covers(leaf, host):
        return f"hostname {host} is not in the certificate's subjectAltName"
    return None


def _untrusted(leaf: x509.Certificate, roots: Sequence[x509.Certificate], why: str) -> str:
    trusted = "; ".join(format_dn(r.subject) for r in roots)
    return (
        f"untrusted chain: issuer {format_dn(leaf.issuer)} does not lead to a trusted root "
        f"({trusted}) [{why}]"
    )


def _ekus(leaf: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    try:
        return list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def _sans(leaf: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _covers(leaf: x509.Certificate, host: str) -> bool:
    return _subject(host) in _sans(leaf)


def _subject(host: str) -> verification.Subject:
    """The verifier's subject types are the general-name classes, so one value serves both."""
    if names.is_ip_address(host):
        return x509.IPAddress(names.parse_ip(host))
    return x509.DNSName(host.lower())


def _own_subject(leaf: x509.Certificate) -> verification.Subject:
    for san in _sans(leaf):
        if isinstance(san, x509.DNSName) and not san.value.startswith("*."):
            return san
        if isinstance(san, x509.IPAddress):
            return san
    raise CertificateRefused("not usable by a server: no DNS name or IP address in its SAN")


def _crl_number(crl: x509.CertificateRevocationList) -> int | str:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return "?"


def _day(moment: datetime.datetime | None) -> str:
    return "never" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"
