"""The server's TLS state: validate the files (the seed's ``validateCerts``), build one SSLContext.

Built once in the gunicorn master and inherited by the forked workers, so
they share one session-ticket key (resumption works across workers) and no
file is read on the connection path. Reloading builds a whole new state off
to the side; only a state that validates replaces the old one.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from mtls.errors import CertificateFileError
from mtls.settings import ServerSettings
from mtls.validation import check_files, variable_for


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

    def refuse_peer(
        self, cert: x509.Certificate, now: datetime.datetime, *, what: str
    ) -> str | None:
        """Why a peer verified earlier must now be refused, or None.

        Used where OpenSSL does not verify again: a resumed handshake (it
        trusts the session) and every request on a kept-alive connection.
        Expiry and revocation may have happened since; ``what`` names the
        situation in the reason ("resumed session", "kept-alive connection").
        """
        if now > cert.not_valid_after_utc:
            expired = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}"
            return f"{what} for a certificate that expired on {expired} UTC"
        if cert.serial_number in self.revoked_serials:
            return f"{what} for a revoked certificate"
        if self.crl_next_update is not None and now > self.crl_next_update:
            # OpenSSL refuses every full handshake once the CRL is stale
            # (fail closed); an earlier verification must not be the way around it.
            return f"{what}, but the CRL is past its nextUpdate (refresh it: `pki crl`)"
        return None


def load_tls_state(settings: ServerSettings, now: datetime.datetime | None = None) -> TlsState:
    """Validate every file, then build the context; raise once with every problem found."""
    now = now or datetime.datetime.now(datetime.UTC)
    for _attempt in range(3):
        raw, digest, problems = _read(settings)
        checked = check_files(settings, raw, now)
        problems += checked.problems
        if problems:
            raise CertificateFileError(
                "the server's TLS files cannot be used:\n  - " + "\n  - ".join(problems)
            )
        context = build_server_context(settings)
        # ssl reads the files itself; make sure it read what we validated
        # (a rotation may have renamed a file in between).
        if _read(settings)[1] == digest:
            next_updates = [c.next_update_utc for c in checked.crls if c.next_update_utc]
            return TlsState(
                settings=settings,
                context=context,
                leaf=checked.chain[0],
                revoked_serials=frozenset(r.serial_number for c in checked.crls for r in c),
                crl_next_update=min(next_updates, default=None),
                fingerprint=digest,
                warnings=tuple(checked.warnings),
            )
    raise CertificateFileError("the TLS files kept changing while being loaded; retry the reload")


def _read(settings: ServerSettings) -> tuple[dict[Path, bytes], str, list[str]]:
    raw: dict[Path, bytes] = {}
    problems: list[str] = []
    digest = hashlib.sha256()
    for path in settings.files:
        try:
            raw[path] = path.read_bytes()
        except FileNotFoundError:
            problems.append(f"{path}: no such file ({variable_for(settings, path)})")
        except OSError as e:
            problems.append(
                f"{path}: cannot be read: {e.strerror} ({variable_for(settings, path)})"
            )
        else:
            digest.update(raw[path])
    return raw, digest.hexdigest(), problems


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
