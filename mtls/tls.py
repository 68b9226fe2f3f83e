"""Both TLS contexts, side by side: the listener's and the client session's.

Only the options live here, each with its reason, so that every asymmetry
between the two sides is a visible choice (urllib3's ``util/ssl_.py`` is the
model). What each side loads into its context lives with the loading code:
the server's validated files in mtls.serverstate, the client's identity in
mtls.credentials.

Option by option, server (listener) / client (session), and why:
- protocol: TLS_SERVER / TLS_CLIENT (CERT_REQUIRED, check_hostname). The
  client checks the server's name; the server checks no client name, its
  policy matches the DN after the handshake.
- minimum version: MTLS_MIN_VERSION (TLS 1.2) / TLS 1.2. The client talks
  to our own servers only.
- client certificate: CERT_REQUIRED, or CERT_OPTIONAL for listeners that
  browsers use (MTLS_CLIENT_AUTH) / always presented.
- trust: the private root only on both sides, never load_default_certs().
- X.509 strictness: VERIFY_X509_STRICT on both: our CA issues RFC
  5280-clean certificates.
- CRL: VERIFY_CRL_CHECK_LEAF when MTLS_CRLFILE is set / none: the server
  is pinned by DN and its certificates are renewed, the client has no CRL
  setting (a gap worth closing with short-lived server certificates).
- renegotiation: refused on both (the guide's allowRenegotiation=false).
- compression: off on both (CRIME); OpenSSL's default, set explicitly.
- TLS 1.2 ciphers: MTLS_CIPHERS with server preference / OpenSSL's
  defaults: the server decides, and the client offers every safe suite so
  that any server profile finds one.
- ALPN: http/1.1 / left to urllib3 (it offers http/1.1): the worker speaks
  HTTP/1.1 only, so a client offering h2 must not get it.
- SNI: read by a callback for SSL_TLS_SNI / sent (the hostname). On the
  server that callback also moves each handshake onto the current context
  (ListenerContexts below: certificate rotation without new workers).
- the peer's Certificate message: kept by a message callback for the
  refusal's diagnosis (mtls.failures) / not kept.
- TLS 1.3 session tickets: 1 per full handshake, not OpenSSL's 2 / whatever
  the server sends (urllib3 never resumes a session).
- server-side session cache: off (mtls.sessioncache; resumption is by
  ticket only) / OpenSSL's default (a client caches its own sessions).
"""

from __future__ import annotations

import _ssl
import ssl
from collections.abc import Callable
from typing import Any

from mtls.sessioncache import disable_session_cache
from mtls.settings import ServerSettings

#: TLS 1.3 tickets sent after a full handshake (OpenSSL's default is 2, nginx keeps it).
SESSION_TICKETS = 1


class ListenerContexts:
    """The context every connection starts on, and the one each handshake moves to.

    Certificates rotate under running workers (mtls.worker follows the
    master's reloads), but a worker that wrapped new sockets in a context of
    its own making would issue session tickets under a key of its own: no
    client could resume on another worker, nor on this one with a ticket
    from before. So every socket is wrapped in ``session``, built once in
    the master before the first fork: its ticket key (OpenSSL keeps it in
    the SSL's ``session_ctx``, which SSL_set_SSL_CTX leaves alone) is shared
    by every worker for the master's life. The SNI callback, which OpenSSL
    calls for every ClientHello, with or without a server_name (RFC 6066
    section 3; ``final_server_name`` runs either way), then moves the
    handshake to ``current``: its certificate, key and trust store (with
    its CRLs) are the ones used, from the ClientHello on.

    ``session`` itself holds no certificate and no trust anchor: a handshake
    the callback did not move fails ("no shared cipher"), it cannot fall
    back to stale credentials. Verification flags and the verify mode stay
    those of ``session`` (OpenSSL copies them at SSL_new): the settings,
    which do not change without new workers (mtls.serverstate.needs_new_workers).
    """

    def __init__(self, settings: ServerSettings, current: ssl.SSLContext) -> None:
        self.session = new_server_context(settings)
        self.session.sni_callback = self._switch
        self.current = current

    def _switch(self, sslobj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        _remember_sni(sslobj, name, _ctx)
        sslobj.context = self.current


def new_server_context(settings: ServerSettings) -> ssl.SSLContext:
    """The listener's context with every option set; no certificate, key or CA loaded yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = settings.min_version
    # Seed: allowRenegotiation false. Renegotiation lets a peer restart the
    # handshake mid-connection (CPU cost, and the old CVE-2009-3555 class).
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers(settings.ciphers)  # TLS 1.2 only; 1.3 suites are all AEAD
    ctx.verify_mode = ssl.CERT_REQUIRED if settings.client_auth == "required" else ssl.CERT_OPTIONAL
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if settings.crlfile is not None:
        # The leaf only: the intermediate is ours, and a CRL for the root's
        # own signatures would have to be re-signed by the offline root key.
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.set_alpn_protocols(["http/1.1"])
    # Each ticket costs the server 125 us of OpenSSL (the session with the
    # client's certificate, encrypted; bench/RESULTS.md, notes), about a tenth
    # of a full handshake. One is what a client needs to resume its next
    # connection, which then gets a fresh one (OpenSSL sends one on every
    # resumption whatever this says); our own client (urllib3) never resumes,
    # so it would throw both away. The price: a client that opens several
    # connections at once after one full handshake can resume one of them
    # unless it reuses the ticket (OpenSSL's and Go's clients do).
    ctx.num_tickets = SESSION_TICKETS
    # No server-side session cache: it would keep every TLS 1.2 session of a
    # client without tickets for the worker's life (mtls.sessioncache).
    disable_session_cache(ctx)
    ctx.sni_callback = _remember_sni
    # Diagnostics only: keep the client's Certificate message, so a refused
    # handshake can say whose certificate it was and whether only its
    # intermediate was missing (OpenSSL reports both as "unknown issuer").
    # CPython's _msg_callback is a debugging hook; without it the reasons
    # are less precise, never wrong.
    _install_msg_callback(ctx, _keep_peer_certificates)
    return ctx


def new_client_context() -> ssl.SSLContext:
    """The client session's context with every option set; no identity or CA loaded yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Our CA issues RFC 5280-clean certificates; refuse sloppy ones (the
    # default of Python 3.13's create_default_context).
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return ctx


_HANDSHAKE = 22  # ContentType handshake (RFC 8446 5.1)
_CERTIFICATE = 11  # HandshakeType certificate (RFC 8446 4)
_TLS1_3 = 0x0304  # ProtocolVersion (RFC 8446 4.2.1)


def _install_msg_callback(ctx: ssl.SSLContext, callback: Callable[..., None]) -> None:
    """Install ``callback`` at the C level, without ssl.py's wrapper around it.

    OpenSSL calls it for every message and record header, some 40 times per
    handshake and request. ssl.py's ``SSLContext._msg_callback`` setter
    wraps it in a function that turns version, content type and message
    type into enums on each call: 85 us per handshake, 10 % of the
    handshake's CPU, against 15 us for the bare callback taking the ints
    OpenSSL passes (bench/RESULTS.md, notes). No-op where the C attribute
    is missing (it is a debugging hook, not API).
    """
    descriptor = getattr(_ssl._SSLContext, "_msg_callback", None)
    if descriptor is not None:
        descriptor.__set__(ctx, callback)


def _keep_peer_certificates(
    conn: Any, direction: str, version: int, content_type: int, msg_type: int, data: bytes
) -> None:
    # Raw OpenSSL ints (_install_msg_callback): the peer's Certificate handshake message only.
    if msg_type == _CERTIFICATE and content_type == _HANDSHAKE and direction == "read":
        conn.mtls_peer_certificates = (data, version == _TLS1_3)


def _remember_sni(sslobj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
    # Python exposes the client's SNI only through this callback (for SSL_TLS_SNI).
    sslobj.mtls_sni = name
