"""Certificates `pki` would never make, as another CA (or a mistake) makes them.

`pki.authority` builds only what the strictest consumers accept; these are
the others: an "intermediate" that is no CA (basicConstraints CA:FALSE, no
keyUsage, as a sloppy `openssl x509 -req` makes one) and an Ed25519
intermediate, which OpenSSL accepts and cryptography's verifier refuses.
Built with cryptography directly, signed by the demo root.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki import authority
from pki.authority import Issued
from tests.pkifiles import write_issued

Key = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def foreign_intermediate(root: Issued, *, ca: bool, ed25519_key: bool = False) -> Issued:
    """CA:TRUE with keyCertSign, or CA:FALSE with no keyUsage; SKI and AKI either way."""
    key: Key = ed25519.Ed25519PrivateKey.generate() if ed25519_key else _ec()
    builder = _base(authority.make_name("Foreign Intermediate"), root, key.public_key())
    builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    return Issued(builder.sign(root.key, hashes.SHA256()), key, (root.cert,))


def server_leaf_under(issuer: Issued) -> Issued:
    """A server leaf for localhost and 127.0.0.1, signed by ``issuer`` (any key type)."""
    key = _ec()
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        _base(authority.make_name("foreign.internal", ou="Services"), issuer, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(issuer.key, _digest(issuer.key))
    )
    return Issued(cert, key, (issuer.cert, *issuer.chain))


def write_server_files(directory: Path, issued: Issued) -> tuple[Path, Path]:
    """foreign-chain.crt (leaf and intermediate, not the root) and the unencrypted 0600 key."""
    return write_issued(directory, "foreign", Issued(issued.cert, issued.key, issued.chain[:-1]))


def _digest(key: object) -> hashes.SHA256 | None:
    """Ed25519 signs without a separate digest (RFC 8410); everything else with SHA-256."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _base(subject: x509.Name, issuer: Issued, public: object) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=60))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)  # type: ignore[arg-type]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
