"""The server's TLS state: validated files and the one SSLContext built from them.

The guide's ``validateCerts`` (mtls.validation), then the context's options
(mtls.tls) and what is loaded into it.

Built once in the gunicorn master and inherited by the forked workers; no
file is read on the connection path. Reloading builds a whole new state off
to the side; only a state that validates replaces the old one. The master
reads and validates a changed set and hands the same bytes to the running
workers (mtls.statechannel), which build the state again from them and
swap it in; only a change that :func:`needs_new_workers` names replaces
the workers instead.

OpenSSL never reads the operator's files: each is read once, parsed and
checked (mtls.validation), and the context is built from those objects
re-serialised. Whatever else a file holds (a certificate hidden in the CRL
file, say) cannot reach the trust store, and a file renamed or rewritten
between the check and the load cannot be loaded unchecked.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls.dn import format_dn
from mtls.errors import CertificateFileError
from mtls.failures import Refusal
from mtls.privatefile import private_file
from mtls.revocation import CrlInfo, crl_info, refuse_older_crls
from mtls.settings import ServerSettings
from mtls.tls import new_server_context
from mtls.validation import CheckedFiles, check_files, variable_for
from mtls.x509rules import day, stale_crl

_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER


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
    # Per CRL loaded: its issuer, number and thisUpdate, so that a reload can
    # refuse a CRL older than the one in use (mtls.revocation.refuse_older_crls).
    crls: tuple[CrlInfo, ...] = field(default=())
    # The CRL that runs out first: its thisUpdate, for /healthz's "a quarter
    # of its lifetime left" (mtls.health).
    crl_last_update: datetime.datetime | None = None
    # CA names of our chain and bundle: a client whose leaf names one of them
    # but who sent no intermediate sent an incomplete chain (mtls.failures).
    known_issuers: frozenset[x509.Name] = field(default=frozenset())
    subject_dn: str = ""
    # The trust anchors (DER) from MTLS_CA_CERTS: see needs_new_workers.
    trust: frozenset[bytes] = field(default=frozenset())

    @functools.cached_property
    def leaf_serial(self) -> int:
        """``leaf.serial_number``, read once: compared on every kept-alive request."""
        return int(self.leaf.serial_number)

    def refuse_peer(
        self, cert: x509.Certificate, now: datetime.datetime, *, what: str
    ) -> Refusal | None:
        """Why a peer verified earlier must now be refused, or None.

        Used where OpenSSL does not verify again: a resumed handshake (it
        trusts the session) and every request on a kept-alive connection.
        Expiry and revocation may have happened since; ``what`` names the
        situation in the reason ("resumed session", "kept-alive connection").
        """
        return self.refuse_known(cert.serial_number, cert.not_valid_after_utc, now, what=what)

    def refuse_known(
        self, serial: int, not_after: datetime.datetime, now: datetime.datetime, *, what: str
    ) -> Refusal | None:
        """``refuse_peer`` for a certificate whose serial and notAfter were read before.

        Every request on a kept-alive connection is re-checked: reading both
        from the certificate again costs ~2 us (cryptography builds a new int
        and datetime each time), the check itself 0.2 us.
        """
        if now > not_after:
            expired = day(not_after)
            return Refusal("expired", f"{what} for a certificate that expired on {expired}")
        if serial in self.revoked_serials:
            return Refusal("revoked", f"{what} for a revoked certificate")
        stale = stale_crl(self.crl_next_update, now) if self.crl_next_update else None
        if stale is not None:
            # OpenSSL refuses every full handshake once the CRL is stale
            # (fail closed); an earlier verification must not be the way around it.
            return Refusal("crl_stale", f"{what}, but {stale}")
        return None


def needs_new_workers(old: TlsState, new: TlsState) -> str | None:
    """Why ``new`` cannot be swapped into running workers, or None when it can.

    A running worker keeps its session-ticket key across a swap
    (mtls.tls.ListenerContexts), and a resumed session is not verified
    again by OpenSSL: it was verified against the trust anchors of its
    first handshake. Our re-check (TlsState.refuse_peer) covers expiry,
    revocation and a stale CRL, not the anchors. So a trust bundle that
    changed in any way (a root removed, most of all) takes new workers,
    whose new context has a new ticket key: every old session ends with
    them. The settings fix the verify mode and flags that a swap cannot
    change (OpenSSL copies them per connection from the listener context).
    Certificate, key and CRL changes, the frequent ones, swap in place.
    """
    if new.settings != old.settings:
        return "the settings changed"
    if new.trust != old.trust:
        return (
            f"{new.settings.ca_certs} changed: sessions verified against the old trust "
            "bundle must not resume, so the workers and their session-ticket key are replaced"
        )
    return None


class FileSet(NamedTuple):
    """The bytes of a set of files as read once, and what could not be read (with its variable)."""

    raw: dict[Path, bytes]
    problems: list[str]

    def ordered(self, settings: ServerSettings) -> tuple[bytes, ...]:
        """The bytes in ``settings.files`` order (mtls.statechannel carries them so)."""
        return tuple(self.raw[path] for path in settings.files)

    @classmethod
    def from_ordered(cls, settings: ServerSettings, files: tuple[bytes, ...]) -> FileSet:
        return cls(dict(zip(settings.files, files, strict=True)), [])


def read_files(settings: ServerSettings) -> FileSet:
    """Every file of ``settings`` read once: OpenSSL is only ever given these bytes."""
    raw: dict[Path, bytes] = {}
    problems: list[str] = []
    for path in settings.files:
        try:
            raw[path] = path.read_bytes()
        except FileNotFoundError:
            problems.append(f"{path}: no such file ({variable_for(settings, path)})")
        except OSError as e:
            problems.append(
                f"{path}: cannot be read: {e.strerror} ({variable_for(settings, path)})"
            )
    return FileSet(raw, problems)


def load_tls_state(
    settings: ServerSettings,
    now: datetime.datetime | None = None,
    *,
    previous: TlsState | None = None,
    files: FileSet | None = None,
) -> TlsState:
    """Validate every file, then build the context; raise once with every problem found.

    ``previous`` is the state in use when reloading: a CRL older than its
    CRL from the same issuer is refused. Each file is read once and nothing
    is retried: the context is built from the bytes validated here, so a
    rotation in progress can only fail validation (the watcher sees the next
    change and reloads again), never slip unchecked bytes into OpenSSL.
    ``files`` is those bytes already read (:func:`read_files`, or what the
    master handed a worker): they are validated here all the same.
    """
    raw, problems = files if files is not None else read_files(settings)
    checked, digest = _check(settings, raw, problems, now or datetime.datetime.now(datetime.UTC))
    crls = tuple(crl_info(c) for c in checked.crls)
    if previous is not None and settings.crlfile is not None:
        _refuse(refuse_older_crls(settings.crlfile, previous.crls, crls), settings)
    context = build_server_context(settings, checked)
    soonest = min(
        (c for c in checked.crls if c.next_update_utc),
        key=lambda c: c.next_update_utc,  # type: ignore[arg-type, return-value]
        default=None,
    )
    return TlsState(
        settings=settings,
        context=context,
        leaf=checked.chain[0],
        revoked_serials=frozenset(r.serial_number for c in checked.crls for r in c),
        crl_next_update=soonest.next_update_utc if soonest is not None else None,
        crl_last_update=soonest.last_update_utc if soonest is not None else None,
        known_issuers=frozenset(c.subject for c in [*checked.chain[1:], *checked.bundle]),
        subject_dn=format_dn(checked.chain[0].subject),
        trust=frozenset(c.public_bytes(_DER) for c in checked.bundle),
        fingerprint=digest,
        warnings=tuple(checked.warnings),
        crls=crls,
    )


def _check(
    settings: ServerSettings, raw: dict[Path, bytes], problems: list[str], now: datetime.datetime
) -> tuple[CheckedFiles, str]:
    checked = check_files(settings, raw, now)
    _refuse(problems + checked.problems, settings)
    digest = hashlib.sha256()
    for path in settings.files:  # length-prefixed: no two sets of files hash alike
        data = raw.get(path, b"")
        digest.update(len(data).to_bytes(8, "big") + data)
    return checked, digest.hexdigest()


def _refuse(problems: list[str], settings: ServerSettings) -> None:
    if problems:
        raise CertificateFileError(
            "the server's TLS files cannot be used:\n  - " + "\n  - ".join(problems),
            files=[p for p in settings.files if any(str(p) in problem for problem in problems)],
        )


def build_server_context(
    settings: ServerSettings, files: CheckedFiles | None = None
) -> ssl.SSLContext:
    """The listener's context (options: mtls.tls), loaded from validated objects only.

    ``files`` is what mtls.validation parsed and accepted; without it the
    files are read and checked here first (raising CertificateFileError).
    """
    if files is None:
        raw, problems = read_files(settings)
        files, _ = _check(settings, raw, problems, datetime.datetime.now(datetime.UTC))
    _refuse(files.problems, settings)
    if files.key is None or not files.chain:  # check_files says why as a problem
        raise CertificateFileError(f"{settings.certfile}, {settings.keyfile}: nothing usable")
    ctx = new_server_context(settings)
    key = files.key.private_bytes(
        _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # ssl takes a chain and a key by path only: private in-memory files, so
    # the unencrypted key is never written anywhere else.
    with _openssl_loading(settings.certfile, settings.keyfile):
        with private_file(_pem(files.chain), "chain") as chain, private_file(key, "key") as keyfile:
            ctx.load_cert_chain(chain, keyfile)
    # The private root only: never load_default_certs(). A public CA must
    # not be able to mint a client identity for our services. cadata loads
    # certificates only, never a CRL or anything else.
    with _openssl_loading(settings.ca_certs):
        ctx.load_verify_locations(cadata=b"".join(c.public_bytes(_DER) for c in files.bundle))
    if settings.crlfile is not None:
        # ssl loads CRLs from a file only; this one holds the validated CRLs
        # and nothing else, whatever the operator's file held besides.
        with _openssl_loading(settings.crlfile), private_file(_pem(files.crls), "crl") as crls:
            ctx.load_verify_locations(cafile=crls)
    check_trust_store(settings, ctx, files)
    return ctx


def check_trust_store(settings: ServerSettings, ctx: ssl.SSLContext, files: CheckedFiles) -> None:
    """Refuse a context whose store is not exactly MTLS_CA_CERTS plus the validated CRLs.

    True by construction today; checked anyway because a trust store that
    differs from the operator's bundle is an authentication bypass, and the
    next change to the loading code must not be able to make one silently.
    get_ca_certs() lists the CA certificates only, cert_store_stats() counts
    them all (OpenSSL drops exact duplicates, so distinct DER is compared).
    """
    bundle = {c.public_bytes(_DER) for c in files.bundle}
    crls = {c.public_bytes(_DER) for c in files.crls}
    stats = ctx.cert_store_stats()
    cas = set(ctx.get_ca_certs(binary_form=True))
    problems = []
    if stats["x509"] != len(bundle) or not cas <= bundle:
        problems.append(
            f"the trust store holds {stats['x509']} certificates, {len(cas - bundle)} of them "
            f"not in {settings.ca_certs} (which holds {len(bundle)}): refusing a trust store "
            "that differs from MTLS_CA_CERTS"
        )
    if stats["crl"] != len(crls):
        problems.append(
            f"the trust store holds {stats['crl']} CRLs, not the {len(crls)} validated from "
            f"{settings.crlfile}: refusing to check revocation against unvalidated CRLs"
        )
    _refuse(problems, settings)


@contextlib.contextmanager
def _openssl_loading(*paths: Path | None) -> Iterator[None]:
    """OpenSSL refusing what our checks accepted is still a file problem, not a crash."""
    try:
        yield
    except ssl.SSLError as e:
        names = " and ".join(str(p) for p in paths if p is not None)
        raise CertificateFileError(
            f"{names}: OpenSSL refused what passed the checks ({e.reason or e}); rewrite the "
            "file with `pki` (issue, crl), or report it if `pki verify` accepts it",
            files=[p for p in paths if p is not None],
        ) from None


def _pem(objects: list[x509.Certificate] | list[x509.CertificateRevocationList]) -> bytes:
    return b"".join(o.public_bytes(_PEM) for o in objects)


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
