"""The server's TLS state: validate the files (the seed's ``validateCerts``), build one SSLContext.

Built once in the gunicorn master and inherited by the forked workers, so
they share one session-ticket key (resumption works across workers) and no
file is read on the connection path. Reloading builds a whole new state off
to the side; only a state that validates replaces the old one.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls.errors import CertificateFileError
from mtls.identity import format_dn
from mtls.settings import ServerSettings

log = logging.getLogger("mtls.context")

EXPIRY_WARNING = datetime.timedelta(days=30)
_MAX_CHAIN_DEPTH = 8


@dataclass(frozen=True)
class TlsState:
    """A validated set of files and the context built from exactly those bytes."""

    settings: ServerSettings
    context: ssl.SSLContext
    leaf: x509.Certificate
    revoked_serials: frozenset[int]
    crl_next_update: datetime.datetime | None
    fingerprint: str
    warnings: tuple[str, ...] = field(default=())

    def refuse_resumed_peer(self, cert: x509.Certificate, now: datetime.datetime) -> str | None:
        """Why a peer resuming a session must still be refused, or None.

        A resumed handshake skips chain and CRL verification: OpenSSL trusts
        the session. Expiry and revocation may have happened since, so they
        are checked again here before the application sees the connection.
        """
        if now > cert.not_valid_after_utc:
            expired = f"{cert.not_valid_after_utc:%Y-%m-%d}"
            return f"resumed session for a certificate that expired on {expired}"
        if cert.serial_number in self.revoked_serials:
            return "resumed session for a revoked certificate"
        return None


@dataclass(frozen=True)
class _Files:
    chain: list[x509.Certificate]
    key: PrivateKeyTypes | None
    bundle: list[x509.Certificate]
    crl: x509.CertificateRevocationList | None
    digest: str


def load_tls_state(settings: ServerSettings, now: datetime.datetime | None = None) -> TlsState:
    """Validate every file, then build the context; raise once with every problem found."""
    now = now or datetime.datetime.now(datetime.UTC)
    for _attempt in range(3):
        files, problems, warnings = _read_and_check(settings, now)
        if problems:
            raise CertificateFileError(
                "the server's TLS files cannot be used:\n  - " + "\n  - ".join(problems)
            )
        assert files.key is not None
        assert files.chain
        context = build_server_context(settings)
        # ssl reads the files itself; make sure it read what we validated
        # (a rotation may have renamed a file in between).
        if _read_and_check(settings, now)[0].digest == files.digest:
            crl = files.crl
            return TlsState(
                settings=settings,
                context=context,
                leaf=files.chain[0],
                revoked_serials=frozenset(r.serial_number for r in crl or ()),
                crl_next_update=crl.next_update_utc if crl else None,
                fingerprint=files.digest,
                warnings=tuple(warnings),
            )
    raise CertificateFileError("the TLS files kept changing while being loaded; retry the reload")


def build_server_context(settings: ServerSettings) -> ssl.SSLContext:
    """One context with every option carrying its reason."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = settings.min_version
    # Seed: allowRenegotiation false. Renegotiation lets a peer restart the
    # handshake mid-connection (CPU cost, and the old CVE-2009-3555 class).
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers(settings.ciphers)  # TLS 1.2 only; 1.3 suites are all AEAD
    ctx.load_cert_chain(str(settings.certfile), str(settings.keyfile))
    # The private root only: never load_default_certs(). A public CA must
    # not be able to mint a client identity for our services.
    ctx.load_verify_locations(cafile=str(settings.ca_certs))
    ctx.verify_mode = ssl.CERT_REQUIRED if settings.client_auth == "required" else ssl.CERT_OPTIONAL
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if settings.crlfile is not None:
        ctx.load_verify_locations(cafile=str(settings.crlfile))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.sni_callback = _remember_sni
    return ctx


def _remember_sni(
    sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext
) -> None:
    # Python exposes the client's SNI only through this callback (for SSL_TLS_SNI).
    sslobj.mtls_sni = name  # type: ignore[union-attr]


def files_fingerprint(settings: ServerSettings) -> tuple[tuple[str, int, int, int], ...]:
    """Cheap change detection for the reload watcher: inode, size, mtime per file."""
    stamp = []
    for path in settings.files:
        try:
            st = path.stat()
        except OSError:
            stamp.append((str(path), -1, -1, -1))
        else:
            stamp.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamp)


def _read_and_check(
    settings: ServerSettings, now: datetime.datetime
) -> tuple[_Files, list[str], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []
    digest = hashlib.sha256()
    raw: dict[Path, bytes] = {}
    for path in settings.files:
        try:
            raw[path] = path.read_bytes()
        except FileNotFoundError:
            problems.append(f"{path}: no such file ({_variable(settings, path)})")
        except OSError as e:
            problems.append(f"{path}: cannot be read: {e.strerror} ({_variable(settings, path)})")
        else:
            digest.update(raw[path])

    chain = _certs(settings.certfile, raw, problems)
    bundle = _certs(settings.ca_certs, raw, problems)
    key = _key(settings.keyfile, raw, problems)
    crl = _crl(settings.crlfile, raw, problems) if settings.crlfile else None

    if chain:
        _check_leaf(settings, chain[0], key, now, problems, warnings)
        _check_chain(settings, chain, bundle, now, problems)
    if bundle:
        _check_bundle(settings, bundle, problems, warnings)
    if crl is not None and chain:
        _check_crl(settings, crl, chain + bundle, now, problems)
    return _Files(chain, key, bundle, crl, digest.hexdigest()), problems, warnings


def _variable(settings: ServerSettings, path: Path) -> str:
    names = {
        settings.certfile: "MTLS_CERTFILE",
        settings.keyfile: "MTLS_KEYFILE",
        settings.ca_certs: "MTLS_CA_CERTS",
        settings.crlfile: "MTLS_CRLFILE",
    }
    return names.get(path, "?")


def _certs(path: Path, raw: dict[Path, bytes], problems: list[str]) -> list[x509.Certificate]:
    if path not in raw:
        return []
    try:
        certs = x509.load_pem_x509_certificates(raw[path])
    except ValueError:
        problems.append(f"{path}: no PEM certificate could be read from it")
        return []
    return certs


def _key(path: Path, raw: dict[Path, bytes], problems: list[str]) -> PrivateKeyTypes | None:
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


def _crl(
    path: Path, raw: dict[Path, bytes], problems: list[str]
) -> x509.CertificateRevocationList | None:
    if path not in raw:
        return None
    try:
        return x509.load_pem_x509_crl(raw[path])
    except ValueError:
        problems.append(f"{path}: not a PEM CRL; run `pki crl --dir DIR` to write one")
        return None


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
    current = chain[0]
    for _depth in range(_MAX_CHAIN_DEPTH):
        if any(_issued_by(current, anchor) for anchor in bundle):
            return
        parent = next((c for c in chain[1:] if _issued_by(current, c)), None)
        if parent is None:
            problems.append(
                f"{settings.certfile}: the chain stops at '{format_dn(current.subject)}', whose "
                f"issuer '{format_dn(current.issuer)}' is neither in that file nor in "
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
    for cert in cas:
        if cert.issuer != cert.subject:
            warnings.append(
                f"{settings.ca_certs} holds '{format_dn(cert.subject)}', which is not a root: "
                "it becomes a trust anchor of its own; the seed trusts the root only"
            )


def _check_crl(
    settings: ServerSettings,
    crl: x509.CertificateRevocationList,
    certs: list[x509.Certificate],
    now: datetime.datetime,
    problems: list[str],
) -> None:
    issuers = [c for c in certs if c.subject == crl.issuer]
    if not any(crl.is_signature_valid(c.public_key()) for c in issuers):  # type: ignore[arg-type]
        problems.append(
            f"{settings.crlfile}: not signed by a CA of this chain (issuer "
            f"'{format_dn(crl.issuer)}'); write it with `pki crl --dir DIR`"
        )
    next_update = crl.next_update_utc
    if next_update is None:
        problems.append(f"{settings.crlfile}: has no nextUpdate; write it with `pki crl --dir DIR`")
    elif now > next_update:
        problems.append(
            f"{settings.crlfile}: past its nextUpdate ({next_update:%Y-%m-%d %H:%M} UTC); "
            "refresh it with `pki crl --dir DIR`"
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
