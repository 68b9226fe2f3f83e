"""Files of a CA directory: read them with errors that name the file, write them atomically.

Every write goes to a temporary file in the target's own directory, is
fsynced, then renamed over the target: a server that reloads its
certificate, key or CRL at any moment sees the old file or the new one,
never half of either. Keys are created 0600 and never pass through a more
permissive mode.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from mtls.x509rules import key_matches, key_mismatch
from pki.authority import Issued
from pki.errors import StoreError
from pki.index import Index, dump_index, parse_index
from pki.keys import PrivateKey

KEY_MODE = 0o600
PUBLIC_MODE = 0o644


def write_atomic(path: Path, data: bytes, *, mode: int = PUBLIC_MODE) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; some filesystems refuse fsync on a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def encode_key(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8: servers read it unattended; file mode is what protects it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def encode_certs(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def encode_crl(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def read_bytes(path: Path, *, what: str, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist ({what}); {fix}") from None
    except IsADirectoryError:
        raise StoreError(f"{path} is a directory, not {what}") from None
    except OSError as exc:
        raise StoreError(f"cannot read {path} ({what}): {exc.strerror or exc}") from None


def load_certs(path: Path, *, fix: str = "check the path") -> list[x509.Certificate]:
    data = read_bytes(path, what="a certificate file", fix=fix)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise StoreError(f"{path} holds no PEM or DER certificate") from None
    return certs


def load_csr(path: Path) -> x509.CertificateSigningRequest:
    """A PKCS#10 request, PEM or DER; its signature is checked by `pki.csr`, not here."""
    data = read_bytes(path, what="a certificate signing request", fix="check the CSR's path")
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        try:
            return x509.load_der_x509_csr(data)
        except ValueError:
            raise StoreError(
                f"{path} holds no PEM or DER certificate signing request; make one with "
                "`openssl req -new -key KEY -out REQ.csr`"
            ) from None


def load_cert(path: Path, *, fix: str = "check the path") -> x509.Certificate:
    return load_certs(path, fix=fix)[0]


def load_key(path: Path, *, fix: str = "check the path") -> PrivateKey:
    data = read_bytes(path, what="a private key", fix=fix)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise StoreError(f"{path} is encrypted; pki needs an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise StoreError(f"{path} is not a readable PEM private key; {fix}") from None
    if not isinstance(key, PrivateKey):
        raise StoreError(
            f"{path} holds a {type(key).__name__}; pki works with EC, RSA and Ed25519 keys"
        )
    return key


def load_crl(path: Path, *, fix: str = "run `pki crl --dir DIR`") -> x509.CertificateRevocationList:
    data = read_bytes(path, what="a CRL", fix=fix)
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError:
        raise StoreError(f"{path} is not a PEM CRL; {fix}") from None


def load_issued(cert_path: Path, key_path: Path, *, fix: str) -> Issued:
    """A certificate, its key and its chain, refusing a key that does not belong to it."""
    certs = load_certs(cert_path, fix=fix)
    key = load_key(key_path, fix=fix)
    if not key_matches(key, certs[0]):
        raise StoreError(key_mismatch(key_path, cert_path, certs[0], fix))
    return Issued(certs[0], key, tuple(certs[1:]))


def load_index(path: Path) -> Index:
    if not path.exists():
        return Index()
    return parse_index(read_bytes(path, what="the CA index", fix=""), source=str(path))


def write_index(path: Path, index: Index) -> None:
    write_atomic(path, dump_index(index))


@dataclass
class Plan:
    """Everything a command will write, built before the first byte hits the disk.

    Commands check all their input while filling a plan; only a complete
    plan is committed, so bad input never leaves a half-written directory.
    """

    writes: list[tuple[Path, bytes, int]] = field(default_factory=list)
    report: list[str] = field(default_factory=list)

    def add(self, path: Path, data: bytes, *, mode: int = PUBLIC_MODE) -> None:
        self.writes.append((path, data, mode))

    def commit(self) -> None:
        for path, data, mode in self.writes:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
            write_atomic(path, data, mode=mode)
