"""Start-up checks of the server's TLS files (the guide's ``validateCerts``), over bytes.

Pure: given the files' contents and the time, return what they hold and every
problem found, each naming the file, the reason and the fix, so an operator
fixes a deployment in one round trip. mtls.serverstate does the reading and builds
the SSLContext from exactly the bytes checked here. The X.509 rules themselves
(chains, CA flags, key match, CRL trust) and their wording are mtls.x509rules';
this module applies them to the server's files and says which file is at fault.

What is deliberately NOT checked: the server's own revocation status, OCSP,
and name constraints; OpenSSL enforces the rest of RFC 5280 at each handshake.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls import envconfig, x509rules
from mtls.dn import format_dn
from mtls.errors import ChainRefused
from mtls.revocation import parse_crl_file
from mtls.settings import CERT_WARN_DEFAULT, ServerSettings

EXPIRY_WARNING = datetime.timedelta(days=30)


def _expiry_warning(settings: ServerSettings) -> datetime.timedelta:
    """30 days, or MTLS_CERT_WARN once set: a 24 h certificate would warn at every reload."""
    if settings.cert_warn == CERT_WARN_DEFAULT:
        return EXPIRY_WARNING
    return datetime.timedelta(seconds=settings.cert_warn)


@dataclass(frozen=True)
class CheckedFiles:
    """What the files hold, and what is wrong with them (empty problems: usable)."""

    chain: list[x509.Certificate]
    key: PrivateKeyTypes | None
    bundle: list[x509.Certificate]
    crls: list[x509.CertificateRevocationList]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_files(
    settings: ServerSettings, raw: Mapping[Path, bytes], now: datetime.datetime
) -> CheckedFiles:
    """Check the files in ``raw`` (path -> contents); a path missing from it was unreadable."""
    problems: list[str] = []
    warnings: list[str] = []
    chain = _certs(settings.certfile, raw, problems)
    bundle = _certs(settings.ca_certs, raw, problems)
    key = _key(settings.keyfile, raw, problems)
    crls = _crls(settings.crlfile, raw, problems) if settings.crlfile else []
    if chain:
        _check_leaf(settings, chain[0], key, now, problems, warnings)
        _check_chain(settings, chain, bundle, now, problems, warnings)
    if bundle:
        _check_bundle(settings, bundle, problems, warnings)
    if key is not None:
        _check_ciphers(settings, key, problems)
    if chain:
        for crl in crls:
            problems += [
                f"{settings.crlfile}: {p}" for p in x509rules.crl_problems(crl, chain + bundle, now)
            ]
    return CheckedFiles(chain, key, bundle, crls, problems, warnings)


def variable_for(settings: ServerSettings, path: Path) -> str:
    return envconfig.variable_for(settings, path) or "?"


def _certs(path: Path, raw: Mapping[Path, bytes], problems: list[str]) -> list[x509.Certificate]:
    if path not in raw:
        return []
    try:
        certs = x509.load_pem_x509_certificates(raw[path])
    except ValueError:
        problems.append(f"{path}: no PEM certificate could be read from it")
        return []
    return certs


def _key(path: Path, raw: Mapping[Path, bytes], problems: list[str]) -> PrivateKeyTypes | None:
    if path not in raw:
        return None
    try:
        return serialization.load_pem_private_key(raw[path], password=None)
    except TypeError:
        problems.append(
            f"{path}: the key is encrypted; the server needs it unencrypted (mode 0600)"
        )
    except ValueError:
        problems.append(f"{path}: not a PEM private key")
    return None


def _crls(
    path: Path, raw: Mapping[Path, bytes], problems: list[str]
) -> list[x509.CertificateRevocationList]:
    """Every CRL in the file, and nothing else (see mtls.revocation).

    ssl's load_verify_locations() trusts any certificate it finds in a CRL
    file as a CA; mtls.serverstate never hands it this file, only the CRLs parsed
    here, re-serialised. A file with anything else in it is refused all the
    same: it is either a mistake or an attack, and either way worth saying.
    """
    return parse_crl_file(path, raw[path], problems) if path in raw else []


def _check_leaf(
    settings: ServerSettings,
    leaf: x509.Certificate,
    key: PrivateKeyTypes | None,
    now: datetime.datetime,
    problems: list[str],
    warnings: list[str],
) -> None:
    name = settings.certfile
    subject = format_dn(leaf.subject)
    if key is not None and not x509rules.key_matches(key, leaf):
        problems.append(x509rules.key_mismatch(settings.keyfile, name, leaf, x509rules.KEY_FIX))
    invalid = x509rules.validity_problem(leaf, now)
    if invalid is not None:
        fix = "; issue a new one with `pki issue NAME --server ...`"
        problems.append(f"{name} ({subject}) {invalid}{fix}")
    elif leaf.not_valid_after_utc - now < _expiry_warning(settings):
        days = (leaf.not_valid_after_utc - now).days
        warnings.append(
            f"{name} ({subject}) expires in {days} days, on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    eku = x509rules.extension(leaf, x509.ExtendedKeyUsage)
    if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        problems.append(
            f"{name} ({subject}) lacks the serverAuth extended key usage; "
            "issue it with `pki issue NAME --server` (or --both)"
        )


def _check_chain(
    settings: ServerSettings,
    chain: list[x509.Certificate],
    bundle: list[x509.Certificate],
    now: datetime.datetime,
    problems: list[str],
    warnings: list[str],
) -> None:
    """What OpenSSL would refuse is a problem; what only the strict verifier refuses, a warning.

    The reasoning is in mtls.x509rules. Without X509_V_FLAG_PARTIAL_CHAIN (we
    never set it) an intermediate in the bundle is not an anchor; it only
    helps build the path to the root.
    """
    roots = [c for c in bundle if x509rules.is_root(c)]
    pool = chain[1:] + [c for c in bundle if not x509rules.is_root(c)]
    found = x509rules.handshake_problems(
        chain[0],
        intermediates=pool,
        roots=roots,
        now=now,
        chain_from=str(settings.certfile),
        roots_from=str(settings.ca_certs),
    )
    problems += [f"{settings.certfile}: {p}" for p in found]
    if problems or not roots:
        return  # refused already, and said why
    try:
        x509rules.verify_chain(chain[0], roots=roots, intermediates=pool, purpose="server", now=now)
    except ChainRefused as exc:
        warnings.append(
            f"{settings.certfile} ({format_dn(chain[0].subject)}): {exc}; OpenSSL clients accept "
            "it, stricter ones (`pki verify`, Go, rustls) may not: issue it with `pki issue`"
        )


def _check_bundle(
    settings: ServerSettings,
    bundle: list[x509.Certificate],
    problems: list[str],
    warnings: list[str],
) -> None:
    cas = [c for c in bundle if x509rules.is_ca(c)]
    if not cas:
        problems.append(
            f"{settings.ca_certs} holds no CA certificate: MTLS_CA_CERTS must be the root "
            "(pki/out/root.crt), not a leaf"
        )
    elif not any(x509rules.is_root(c) for c in cas):
        problems.append(
            f"{settings.ca_certs} holds no root (self-signed) CA: OpenSSL anchors trust only at "
            "a root here, so every client would be refused; use the root (pki/out/root.crt)"
        )
    for cert in cas:
        if not x509rules.is_root(cert):
            warnings.append(
                f"{settings.ca_certs} holds '{format_dn(cert.subject)}', which is not a root: "
                "it only helps build paths to a root in the same file; the guide trusts the "
                "root only"
            )


def _check_ciphers(settings: ServerSettings, key: PrivateKeyTypes, problems: list[str]) -> None:
    """A TLS 1.2 suite list that cannot use our key type would refuse every TLS 1.2 client.

    The guide's suite (ECDHE-RSA-AES256-GCM-SHA384) needs an RSA key; with the
    default EC keys the equivalent is ECDHE-ECDSA-AES256-GCM-SHA384.
    """
    if settings.min_version != ssl.TLSVersion.TLSv1_2:
        return
    needed = {rsa.RSAPrivateKey: "auth-rsa", ec.EllipticCurvePrivateKey: "auth-ecdsa"}
    auth = next((a for kind, a in needed.items() if isinstance(key, kind)), None)
    if auth is None:
        return
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    probe.set_ciphers(settings.ciphers)
    if not any(c["protocol"] == "TLSv1.2" and c.get("auth") == auth for c in probe.get_ciphers()):
        kind = "RSA" if auth == "auth-rsa" else "EC"
        problems.append(
            f"MTLS_CIPHERS={settings.ciphers!r} offers no TLS 1.2 suite for the {kind} key in "
            f"{settings.keyfile}, so no TLS 1.2 client could connect: pick suites for that key "
            "(e.g. ECDHE-ECDSA-AES256-GCM-SHA384 for EC, ECDHE-RSA-AES256-GCM-SHA384 for RSA), "
            "or set MTLS_MIN_VERSION=TLSv1.3"
        )
