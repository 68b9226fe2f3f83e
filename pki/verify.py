"""Would our servers accept this certificate, and if not, why?

The rules are mtls.x509rules', the very ones the server applies at start-up:
the strict verifier (`verify_chain`) decides, and on a no we name the likely
cause ourselves, since its message is terse: out of its validity period, the
wrong purpose, a hostname it does not cover, then what OpenSSL would refuse
in the path (an issuer not found, a CA:FALSE "intermediate"...), else the
strict verifier's own reason. Only the first cause found is reported. A
certificate OpenSSL accepts but the strict verifier refuses (an Ed25519 CA,
say) is REFUSED here: this command reports the strict verdict, while the
server only warns about it (see mtls.x509rules).

Revocation is checked too: the verifier has no CRL support. We trust a CRL
only if the leaf's issuer signed it and it is not past its nextUpdate
(mtls.x509rules.crl_problems), which is what OpenSSL's CRL check demands.

Deliberately NOT checked: OCSP, CRL Distribution Points (we read the CRL
file we are given), and the root's own revocation.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls import x509rules
from mtls.dn import format_dn
from mtls.errors import ChainRefused
from mtls.identity import format_serial
from mtls.x509rules import Purpose, day
from pki import names
from pki.errors import CertificateRefused
from pki.inspect import eku_name, reason_name

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
    subject = _subject(hostname) if hostname else None
    try:
        return x509rules.verify_chain(
            leaf, roots=roots, intermediates=intermediates, purpose=purpose, now=when,
            subject=subject,
        )  # fmt: skip
    except ChainRefused as exc:
        why = _diagnose(leaf, purpose, when, hostname) or _untrusted(
            leaf, roots, intermediates, when, str(exc)
        )
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
    signed_by = f"the leaf's issuer {format_dn(issuer.subject)}"
    problems = x509rules.crl_problems(crl, [issuer], when, signed_by=signed_by)
    if problems:
        raise CertificateRefused(problems[0])
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    if entry is not None:
        raise CertificateRefused(
            f"revoked on {day(entry.revocation_date_utc)} ({reason_name(entry)}), "
            f"serial {format_serial(leaf.serial_number)}"
        )
    number = x509rules.crl_number(crl)
    shown = "?" if number is None else number
    return f"not revoked (CRL number {shown}, next update {day(crl.next_update_utc)})"


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
    checks = [f"valid for {purpose} use until {day(leaf.not_valid_after_utc)}"]
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
    invalid = x509rules.validity_problem(leaf, when)
    if invalid is not None:
        return invalid
    ekus = x509rules.extension(leaf, x509.ExtendedKeyUsage)
    if ekus is not None and _EKU[purpose] not in ekus:
        has = ", ".join(eku_name(o) for o in ekus) or "none"
        return f"wrong purpose: not valid for {purpose} use (extended key usage: {has})"
    if host and not _covers(leaf, host):
        return f"hostname {host} is not in the certificate's subjectAltName"
    return None


def _untrusted(
    leaf: x509.Certificate,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    when: datetime.datetime,
    strict: str,
) -> str:
    """What OpenSSL would refuse too, when there is such a thing; else the strict reason."""
    found = x509rules.handshake_problems(leaf, intermediates=intermediates, roots=roots, now=when)
    return found[0] if found else strict


def _covers(leaf: x509.Certificate, host: str) -> bool:
    return _subject(host) in x509rules.general_names(leaf)


def _subject(host: str) -> x509.DNSName | x509.IPAddress:
    """The verifier's subject types are the general-name classes, so one value serves both."""
    if names.is_ip_address(host):
        return x509.IPAddress(names.parse_ip(host))
    return x509.DNSName(host.lower())
