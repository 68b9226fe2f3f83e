"""Start-up checks of the server's TLS files (the seed's ``validateCerts``), over bytes.

Pure: given the files' contents and the time, return what they hold and every
problem found, each naming the file, the reason and the fix, so an operator
fixes a deployment in one round trip. mtls.serverstate does the reading and builds
the SSLContext from exactly the bytes checked here.

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
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls.identity import format_dn
from mtls.revocation import crl_info, parse_crl_file
from mtls.settings import ServerSettings

EXPIRY_WARNING = datetime.timedelta(days=30)
_MAX_CHAIN_DEPTH = 8


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
        _check_chain(settings, chain, bundle, now, problems)
    if bundle:
        _check_bundle(settings, bundle, problems, warnings)
    if key is not None:
        _check_ciphers(settings, key, problems)
    if chain:
        for crl in crls:
            _check_crl(settings, crl, chain + bundle, now, problems)
    return CheckedFiles(chain, key, bundle, crls, problems, warnings)


def variable_for(settings: ServerSettings, path: Path) -> str:
    names = {
        settings.certfile: "MTLS_CERTFILE",
        settings.keyfile: "MTLS_KEYFILE",
        settings.ca_certs: "MTLS_CA_CERTS",
        settings.crlfile: "MTLS_CRLFILE",
    }
    return names.get(path, "?")


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
    if key is not None and _spki(key.public_key()) != _spki(leaf.public_key()):
        problems.append(
            f"{settings.keyfile} does not match the certificate in {name} ({subject}): "
            "was one of them replaced without the other?"
        )
    if now < leaf.not_valid_before_utc:
        problems.append(
            f"{name} ({subject}) is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    elif now > leaf.not_valid_after_utc:
        problems.append(
            f"{name} ({subject}) expired on {leaf.not_valid_after_utc:%Y-%m-%d}; "
            "issue a new one with `pki issue NAME --server ...`"
        )
    elif leaf.not_valid_after_utc - now < EXPIRY_WARNING:
        days = (leaf.not_valid_after_utc - now).days
        warnings.append(
            f"{name} ({subject}) expires in {days} days, on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
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
) -> None:
    """Follow issuers the way OpenSSL will: up to a self-signed root in the bundle.

    Without X509_V_FLAG_PARTIAL_CHAIN (we never set it) an intermediate in
    the bundle is not an anchor; it only helps build the path to the root.
    """
    anchors = [c for c in bundle if _is_root(c)]
    pool = chain[1:] + [c for c in bundle if not _is_root(c)]
    current = chain[0]
    for _depth in range(_MAX_CHAIN_DEPTH):
        if any(_issued_by(current, anchor) for anchor in anchors):
            return
        parent = next((c for c in pool if _issued_by(current, c)), None)
        if parent is None:
            problems.append(
                f"{settings.certfile}: the chain stops at '{format_dn(current.subject)}', whose "
                f"issuer '{format_dn(current.issuer)}' is neither in that file nor a root in "
                f"{settings.ca_certs}: append the intermediate to the chain file, or trust its root"
            )
            return
        if not parent.not_valid_before_utc <= now <= parent.not_valid_after_utc:
            problems.append(
                f"{settings.certfile}: intermediate '{format_dn(parent.subject)}' is outside "
                f"its validity ({parent.not_valid_before_utc:%Y-%m-%d} to "
                f"{parent.not_valid_after_utc:%Y-%m-%d})"
            )
        current = parent
    problems.append(f"{settings.certfile}: chain longer than {_MAX_CHAIN_DEPTH} certificates")


def _check_bundle(
    settings: ServerSettings,
    bundle: list[x509.Certificate],
    problems: list[str],
    warnings: list[str],
) -> None:
    cas = [c for c in bundle if _is_ca(c)]
    if not cas:
        problems.append(
            f"{settings.ca_certs} holds no CA certificate: MTLS_CA_CERTS must be the root "
            "(pki/out/root.crt), not a leaf"
        )
    elif not any(_is_root(c) for c in cas):
        problems.append(
            f"{settings.ca_certs} holds no root (self-signed) CA: OpenSSL anchors trust only at "
            "a root here, so every client would be refused; use the root (pki/out/root.crt)"
        )
    for cert in cas:
        if not _is_root(cert):
            warnings.append(
                f"{settings.ca_certs} holds '{format_dn(cert.subject)}', which is not a root: "
                "it only helps build paths to a root in the same file; the seed trusts the "
                "root only"
            )


def _check_crl(
    settings: ServerSettings,
    crl: x509.CertificateRevocationList,
    certs: list[x509.Certificate],
    now: datetime.datetime,
    problems: list[str],
) -> None:
    """The CRL must be signed by a CA (basicConstraints cA) of our chain or bundle.

    Never by a leaf: a CRL "issued" by the server's own certificate, or by a
    root nobody trusts, would satisfy VERIFY_CRL_CHECK_LEAF for nothing.
    """
    issuer = crl_info(crl).issuer_dn
    signers = [c for c in certs if c.subject == crl.issuer and _is_ca(c)]
    if not any(_signed(crl, c) for c in signers):
        problems.append(
            f"{settings.crlfile}: not signed by a CA of this chain (issuer '{issuer}'); "
            "write it with `pki crl --dir DIR`"
        )
    next_update = crl.next_update_utc
    if next_update is None:
        problems.append(f"{settings.crlfile}: has no nextUpdate; write it with `pki crl --dir DIR`")
    elif now > next_update:
        problems.append(
            f"{settings.crlfile}: past its nextUpdate ({next_update:%Y-%m-%d %H:%M} UTC); "
            "refresh it with `pki crl --dir DIR`"
        )


def _signed(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False  # a key type that cannot sign (X25519...) or an unknown algorithm


def _check_ciphers(settings: ServerSettings, key: PrivateKeyTypes, problems: list[str]) -> None:
    """A TLS 1.2 suite list that cannot use our key type would refuse every TLS 1.2 client.

    The seed's suite (ECDHE-RSA-AES256-GCM-SHA384) needs an RSA key; with the
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


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_root(cert: x509.Certificate) -> bool:
    return _is_ca(cert) and cert.issuer == cert.subject and _issued_by(cert, cert)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
