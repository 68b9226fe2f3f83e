"""The client's identity files -> the SSLContext new connections use, rebuilt when they change.

Certificates are renewed under a running client (``pki renew``, a timer,
cert-manager, a Kubernetes secret): a session that loaded its files once
keeps presenting the old certificate, and once that one is revoked or
expired every new connection is refused until the process restarts.

So each new connection asks :meth:`IdentityFiles.current`, which stats the
certificate, key and CA bundle (``os.stat``: device, inode, size, mtime and
ctime in nanoseconds; about 7 microseconds for the three, measured, against
the milliseconds of the handshake it precedes) and reloads them only when that
fingerprint moved. The pool asks too, each time it hands a kept-alive
connection to a new request (``MtlsConnection.is_connected``). ``os.stat``
follows symlinks, so a Kubernetes secret's ``..data`` swap shows up as the
target's new inode; an atomic rename (how ``pki`` writes) shows up the same way.

Fails closed and keeps serving, as the server's reload does (and, as its
watcher, gives a set SETTLE_S to become whole before it reports it): a set that
cannot serve (a new certificate with the old key, half a file, a bundle that
is not PEM) is refused with one WARNING naming the file, the reason and the
fix; new connections keep the last good set and the reload is tried again as
soon as any of the files changes again. A context replaces nothing in a
live connection: a request in flight finishes on the identity its connection
was opened with, and that connection is then closed rather than reused
(``mtls.connection``), so a short-lived certificate is not kept presented past
its expiry on a keep-alive connection.

Deliberately NOT done: re-reading a password file (``key_password`` is the
bytes the session was built with, so a renewed encrypted key or PKCS#12 must
keep its password), checking a new certificate's validity dates or chain
(the server judges those; OpenSSL checks that the key matches), and watching
the files in a thread: a session that opens no connection needs no reload.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from mtls.credentials import build_client_context
from mtls.dn import format_dn
from mtls.errors import CertificateFileError
from mtls.identity import format_serial

log = logging.getLogger("mtls.client")

#: Seconds a changed set that cannot serve gets to become whole before the WARNING.
SETTLE_S = 2.0

#: Per file: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns), None when it cannot be statted.
Stamp = tuple[tuple[int, int, int, int, int] | None, ...]


def stamp_of(paths: tuple[str, ...]) -> Stamp:
    """What changes when one of ``paths`` is replaced, rewritten, removed or chmod-ed.

    ctime too: a rename or a chmod that fixes a file's permissions changes
    it, and either is a reason to try a refused set again. ``str`` paths:
    ``os.stat`` of a ``Path`` costs half as much again (its ``__fspath__``).
    """
    stamps: list[tuple[int, int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


@dataclass(frozen=True)
class ClientIdentity:
    """One loaded set: the context to connect with and the leaf it presents."""

    context: ssl.SSLContext
    leaf: x509.Certificate
    dn: str
    stamp: Stamp

    @property
    def serial(self) -> str:
        return format_serial(self.leaf.serial_number)


class IdentityFiles:
    """cert + key + CA bundle, loaded now and again whenever their stat fingerprint changes.

    The constructor raises CertificateFileError like ``build_client_context``:
    a client that cannot start with its files must not start. Later reloads
    never raise (see the module docstring). Thread-safe: one thread reloads
    while the others keep connecting with the current set rather than wait.
    """

    def __init__(
        self,
        cert: Path,
        key: Path | None,
        ca_certs: Path,
        password: bytes | None,
        *,
        settle: float = SETTLE_S,
    ) -> None:
        self.cert, self.key, self.ca_certs, self._password = cert, key, ca_certs, password
        self.paths = tuple(p for p in (cert, key, ca_certs) if p is not None)
        self._watched = tuple(map(str, self.paths))
        self._current = self._load(stamp_of(self._watched))
        self._refused: Stamp | None = None  # the fingerprint of the last set that failed
        self._settle = settle
        # A refused set changed less than ``settle`` seconds before: maybe a
        # renewal half way (a new key, its certificate a rename later). It is
        # tried once more after ``settle`` before the WARNING, which a
        # renewal's intermediate state would otherwise raise every time.
        self._refused_young = False
        self._reloading = threading.Lock()

    def current(self) -> ClientIdentity:
        """The set new connections use: reloaded first if a file changed since."""
        current = self._current
        stamp = stamp_of(self._watched)
        if stamp == current.stamp:
            return current
        if stamp == self._refused and not (self._refused_young and self._settled(stamp)):
            return current
        if not self._reloading.acquire(blocking=False):
            return current  # another thread is loading the new files right now
        try:
            return self._reload(stamp)
        finally:
            self._reloading.release()

    def _settled(self, stamp: Stamp) -> bool:
        changes = [entry[4] for entry in stamp if entry is not None]
        return time.time_ns() - max(changes, default=0) >= self._settle * 1e9

    def _reload(self, stamp: Stamp) -> ClientIdentity:
        old = self._current
        if stamp == old.stamp or (stamp == self._refused and not self._refused_young):
            return old  # another thread got here first
        try:
            new = self._load(stamp)
        except CertificateFileError as exc:
            self._refused, self._refused_young = stamp, not self._settled(stamp)
            if self._refused_young:
                log.debug("client identity files changed but cannot serve yet: %s", exc)
                return old
            log.warning(
                "client identity files changed but cannot serve, not reloaded: %s. New "
                "connections keep presenting %s (serial %s) and trusting the bundle loaded "
                "with it; the files are tried again as soon as one of %s changes",
                exc,
                old.dn,
                old.serial,
                ", ".join(map(str, self.paths)),
            )
            return old
        self._current, self._refused, self._refused_young = new, None, False
        log.info(
            "client identity reloaded for new connections: cert=%s (%s, serial %s -> %s, "
            "until %s) trust=%s; requests in flight finish on the old one, whose pooled "
            "connections are then closed, not reused",
            self.cert,
            new.dn,
            old.serial,
            new.serial,
            f"{new.leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
            self.ca_certs,
        )
        return new

    def _load(self, stamp: Stamp) -> ClientIdentity:
        """Build from the files; ``stamp`` was taken before reading them.

        A file replaced while it is read then differs from ``stamp``, so the
        next connection loads it again: what is kept under a stamp is never
        older than the files that stamp describes. (A refused mix of old and
        new files is retried the same way.)
        """
        context, leaf = build_client_context(self.cert, self.key, self.ca_certs, self._password)
        return ClientIdentity(context, leaf, format_dn(leaf.subject), stamp)
