"""An mTLS ``requests.Session``: how one of our services calls another.

``make_session(settings)`` returns a session that
- presents our chain + key, from PEM (the key may be encrypted) or PKCS#12;
- trusts ``settings.ca_certs`` only: never the system store, never certifi,
  never ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` nor proxies from the
  environment (``trust_env = False``, and requests' own per-connection CA
  bundle is kept out of our context);
- verifies the hostname (OpenSSL, in the handshake) and, optionally, the
  server's subject DN right after the handshake, before a request byte is sent;
- pools connections (keep-alive) and tells, per response, whether one was reused;
- applies the connect/read timeouts to every request that sets none;
- retries an idempotent request once when its connection drops (the
  keep-alive race: the server closed a pooled connection as we reused it),
  never after a timeout, never a POST/PATCH;
- follows a redirect only within the origin it was sent to (scheme, host,
  port: RFC 6454 section 4), at most ``MAX_REDIRECTS`` times; a redirect to
  another origin raises ``UpstreamRedirectError`` before a byte goes there;
- names TLS 1.3's late refusal of our certificate instead of a bare reset;
- picks up renewed cert, key or CA files (a stat of the three whenever a
  connection is opened or taken from the pool, ``mtls.clientidentity``): new
  connections present the new certificate, a pooled connection opened with
  the superseded one is closed instead of reused (a request in flight on it
  finishes), so no connection outlives its certificate by keep-alive; a
  half-replaced set is refused with a WARNING while the last good one stays
  in use.

Deliberately NOT done: revocation checks of the server's certificate (no CRL
or OCSP on this side); plain ``http://`` (no adapter is mounted for it);
per-request ``verify=``/``cert=`` (refused: trust is fixed at construction).
"""

from __future__ import annotations

import re
import ssl
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import requests
from cryptography import x509
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from mtls.clientidentity import SETTLE_S, IdentityFiles
from mtls.connection import MtlsConnection
from mtls.errors import UpstreamRedirectError
from mtls.rules import Rules

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Same-origin redirects followed per request (requests' default is 30).
MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class ClientSettings:
    """One client identity and one trust bundle; generic (env parsing lives with each service).

    cert: our chain, leaf + intermediates (``homepage-chain.crt``), or a PKCS#12 file;
    key: its PEM key (may be encrypted), None when ``cert`` is a PKCS#12;
    ca_certs: the trust bundle, the private root only;
    key_password: for the encrypted key or the PKCS#12 file;
    server_dn: fullmatch on the server's subject DN (``mtls.identity.format_dn``);
    server_rules: identity rules the server's certificate must satisfy, the
      same as ``require_peer``'s (``mtls.rules.compile_rules``), checked
      with ``server_dn`` after the handshake, before a request byte is sent;
    peer_name: how messages name the server ("the User Service");
    identity_settle: seconds a replaced identity set that does not load yet
      gets to become whole (a renewal renames key and certificate one after
      the other) before it is reported with a WARNING (mtls.clientidentity).
    """

    cert: Path
    key: Path | None
    ca_certs: Path
    key_password: bytes | None = None
    server_dn: re.Pattern[str] | None = None
    server_rules: Rules | None = None
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    peer_name: str = "the server"
    pool_maxsize: int = 10
    identity_settle: float = SETTLE_S


@dataclass(frozen=True)
class TlsFacts:
    """What one response's connection proved and cost; the Home Page shows these.

    latency: seconds from sending the request to its response headers,
    including connect + handshake when the connection was new.
    """

    version: str
    cipher: str
    server_dn: str
    client_dn: str
    reused: bool
    latency: float


class MtlsSession(requests.Session):
    """A ``requests.Session`` bound to one client identity and one trust bundle."""

    def __init__(self, settings: ClientSettings) -> None:
        super().__init__()
        self.identity = IdentityFiles(
            settings.cert,
            settings.key,
            settings.ca_certs,
            settings.key_password,
            settle=settings.identity_settle,
        )
        self.trust_env = False  # env CA bundles and proxies must not widen trust or reroute
        self.max_redirects = MAX_REDIRECTS  # TooManyRedirects beyond, same origin only
        self.settings = settings
        self.adapters.clear()  # no http:// adapter: plain HTTP fails with InvalidSchema
        self.mount("https://", MtlsAdapter(settings, self.identity))

    # What new connections use now (files replaced since are loaded first).
    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self.identity.current().context

    @property
    def client_certificate(self) -> x509.Certificate:
        return self.identity.current().leaf

    @property
    def client_dn(self) -> str:
        return self.identity.current().dn

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        """Refuse a redirect that leaves the origin, before anything is sent there.

        requests' Session follows redirects itself (urllib3's ``Retry``, whose
        ``redirect=0`` we set, never sees them) and would hand our client
        certificate, and the request, to whatever server a ``Location`` names.
        requests strips an ``Authorization`` header on a host change
        (``should_strip_auth``); a certificate cannot be stripped from a
        handshake, so the redirect is refused instead. This is the hook
        requests calls on every hop once the next URL is final (relative and
        scheme-relative ``Location`` resolved) and right before it is sent.
        """
        source = str(response.url)
        target = str(prepared_request.url)
        origin = _origin(source)
        if origin is None or _origin(target) != origin:
            raise UpstreamRedirectError(
                f"{self.settings.peer_name} at {origin or source} redirected "
                f"{response.request.method} {urlsplit(source).path or '/'} to {target}: "
                "another origin (scheme, host and port must stay the same), not followed, "
                "nothing was sent there; point the URL at the server's final address "
                "or fix its redirect",
                origin=origin or source,
                target=target,
            )
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]  # stubs


def make_session(settings: ClientSettings) -> MtlsSession:
    """Build the session; raises CertificateFileError when a file cannot serve."""
    return MtlsSession(settings)


def tls_facts(response: requests.Response) -> TlsFacts:
    """The TLS facts of the connection that carried ``response``."""
    try:
        return _FACTS[response]
    except KeyError:
        raise ValueError(
            "no TLS facts for this response: it did not come through a make_session() session"
        ) from None


# Keyed by the response object, so the facts live exactly as long as it does.
_FACTS: weakref.WeakKeyDictionary[requests.Response, TlsFacts] = weakref.WeakKeyDictionary()


def _origin(url: str) -> str | None:
    """``scheme://host:port`` with the default port filled in; None for an unparsable URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number in 0-65535, a bad [IPv6] host
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = port or _DEFAULT_PORTS.get(scheme)
    if not host or port is None:
        return None
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class _RetryDroppedConnection(Retry):
    """urllib3's Retry, except that a read timeout is final.

    A timed-out server is slow, not gone: asking again would double the wait
    the caller configured. Dropped connections (``ProtocolError``) stay
    retryable as ``read`` errors, for the methods in ``allowed_methods``.
    """

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Self:
        if isinstance(error, ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _retry_policy() -> Retry:
    # other=0: certificate and handshake errors are final; connect=0: a
    # refused port will refuse again; read=1: one fresh connection after a drop.
    return _RetryDroppedConnection(
        total=1,
        connect=0,
        read=1,
        redirect=0,
        status=0,
        other=0,
        allowed_methods=IDEMPOTENT_METHODS,
        raise_on_redirect=False,
        raise_on_status=False,
    )


class MtlsAdapter(HTTPAdapter):
    """Transport for ``https://``: our context, our connections, our timeouts and retries."""

    def __init__(self, settings: ClientSettings, identity: IdentityFiles) -> None:
        # Set before super().__init__(), which calls init_poolmanager().
        self._settings = settings
        self._identity = identity

        class _Connection(MtlsConnection):
            peer_name = settings.peer_name
            required_dn = settings.server_dn
            required_rules = settings.server_rules
            identity = self._identity  # each connect() takes identity.current()

        class _Pool(HTTPSConnectionPool):
            ConnectionCls = _Connection

        self._pool_cls = _Pool
        super().__init__(
            pool_connections=4, pool_maxsize=settings.pool_maxsize, max_retries=_retry_policy()
        )

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        # The pools' context only seeds urllib3's settings (verify_mode);
        # MtlsConnection.connect() replaces it with the current one.
        context = self._identity.current().context
        super().init_poolmanager(connections, maxsize, block, ssl_context=context, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"https": self._pool_cls}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Do nothing: requests would point the connection at certifi's bundle,
        which urllib3 then loads INTO our context, widening trust to public CAs.
        Our context already verifies against ``ca_certs`` (send() refuses overrides)."""

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        if verify is not True or cert is not None:
            raise ValueError(
                "an mTLS session's trust and identity come from ClientSettings; "
                f"per-request verify={verify!r} / cert={cert!r} are refused"
            )
        if timeout is None:
            timeout = (self._settings.connect_timeout, self._settings.read_timeout)
        started = time.perf_counter()
        response = super().send(request, stream, timeout, True, None, proxies)
        latency = time.perf_counter() - started
        conn = getattr(response.raw, "connection", None)
        if isinstance(conn, MtlsConnection):
            _FACTS[response] = TlsFacts(
                version=conn.tls_version,
                cipher=conn.cipher_name,
                server_dn=conn.server_dn,
                client_dn=conn.client_dn,
                reused=conn.requests_sent > 1,
                latency=latency,
            )
        return response
