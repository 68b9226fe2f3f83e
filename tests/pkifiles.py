"""Certificates and keys as files, for tests that build PKI material beyond `pki demo`'s.

Readers and writers of the demo PKI's layout (NAME.crt / NAME-chain.crt /
NAME.key) and the forged PEM that hostile-file tests feed to the server.
Shared by test_startup_validation.py and the end-to-end tests, so that no
test module imports another.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import authority


def load_issued(pki: Path, name: str) -> authority.Issued:
    """pki/NAME.crt and pki/NAME.key (unencrypted) as an Issued, e.g. to sign with a demo CA."""
    cert = x509.load_pem_x509_certificate((pki / f"{name}.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / f"{name}.key").read_bytes(), None)
    return authority.Issued(cert=cert, key=key)  # type: ignore[arg-type]


def write_issued(directory: Path, name: str, issued: authority.Issued) -> tuple[Path, Path]:
    """DIRECTORY/NAME-chain.crt (leaf first) and DIRECTORY/NAME.key (0600); returns both paths."""
    chain = directory / f"{name}-chain.crt"
    key = directory / f"{name}.key"
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (issued.cert, *issued.chain))
    chain.write_bytes(pem)
    key.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    return chain, key


def hidden(pem: bytes) -> bytes:
    """``pem`` with BEGIN/END lines ending in whitespace: OpenSSL still reads such a block."""
    return pem.replace(b"-----\n", b"----- \t\r\n")


def crl_pem(issuer: authority.Issued, **kwargs: object) -> bytes:
    """An empty CRL signed by ``issuer`` (authority.build_crl's keywords), as PEM."""
    crl = authority.build_crl(issuer, [], **kwargs)  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM)


def attacker_root() -> authority.Issued:
    """A self-signed root nobody trusts: the issuer of the forgeries."""
    return authority.build_root(name=authority.make_name("Attacker Root CA"))
