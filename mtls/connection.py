"""The urllib3 HTTPS connection under ``mtls.client``: identity checks and TLS facts.

One connection object per pooled socket. After the handshake it checks the
server's subject DN (before any request byte leaves), records the TLS
version, cipher and server DN, and counts the requests it has carried, which
is how a response knows it rode on a reused (keep-alive) connection. It also
recognises the server refusing our certificate, which TLS 1.3 reports late.
Each (re)connect takes the session's current identity (``mtls.clientidentity``):
a renewed certificate reaches new connections. A pooled connection opened
with an identity that has since been superseded is not handed out again
(``is_connected``): urllib3 closes it and reconnects with the current one,
while a request already in flight on it finishes.
"""

from __future__ import annotations

import http.client
import logging
import re
import ssl
from typing import Any, ClassVar

from cryptography import x509
from urllib3.connection import HTTPSConnection

from mtls.clientidentity import ClientIdentity, IdentityFiles
from mtls.dn import format_dn
from mtls.errors import ClientCertificateRefusedError, UpstreamIdentityError
from mtls.rules import Rules, names_of_certificate

logger = logging.getLogger("mtls.client")

# Alerts (OpenSSL reason names) a server sends when it rejects the client's
# certificate. Not handshake_failure: that one also means "no shared cipher".
_REFUSAL_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)


class MtlsConnection(HTTPSConnection):
    """urllib3's HTTPS connection that checks the server's DN and remembers its TLS facts.

    Configured per session by a subclass (``peer_name``, ``required_dn``,
    ``identity``): urllib3 passes pool keyword arguments into its pool key,
    so extra settings cannot travel that way.
    """

    peer_name: ClassVar[str] = "the server"
    required_dn: ClassVar[re.Pattern[str] | None] = None
    required_rules: ClassVar[Rules | None] = None
    identity: ClassVar[IdentityFiles | None] = None

    client_dn = ""  # the subject DN this connection presented (its identity's)
    presenting: ClientIdentity | None = None  # the identity this TLS connection was opened with
    tls_version = ""
    cipher_name = ""
    server_dn = ""
    requests_sent = 0  # on the current TLS connection; 2+ means keep-alive reuse

    def connect(self) -> None:
        self.requests_sent = 0
        if self.identity is not None:
            # Read by urllib3's connect() below; swapped per connection, never
            # on a live one: a request in flight finishes on the set it began
            # with, and is_connected then keeps the connection from being reused.
            presenting = self.identity.current()
            self.ssl_context = presenting.context
            self.client_dn = presenting.dn
            self.presenting = presenting
        try:
            super().connect()
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamIdentityError(
                f"{self.peer_name} ({self.host}:{self.port}) could not prove its identity: "
                f"{exc.verify_message}; its chain must lead to our trust bundle and its "
                f"certificate must name {self.host}"
            ) from exc
        except ssl.SSLError as exc:
            self._raise_if_refused(exc)
            raise
        sock = self.sock
        if not isinstance(sock, ssl.SSLSocket):  # pragma: no cover - TLS-in-TLS proxies
            raise UpstreamIdentityError(f"{self.peer_name}: no TLS socket to check the DN on")
        der = sock.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der) if der else None
        self.server_dn = format_dn(cert.subject) if cert is not None else ""
        self.tls_version = sock.version() or ""
        cipher = sock.cipher()
        self.cipher_name = cipher[0] if cipher else ""
        if self.required_dn is not None and self.required_dn.fullmatch(self.server_dn) is None:
            self.close()
            raise UpstreamIdentityError(
                f"{self.peer_name} ({self.host}:{self.port}) presented {self.server_dn!r}, "
                f"which does not match the required DN {self.required_dn.pattern!r}; "
                "nothing was sent"
            )
        if self.required_rules is not None and cert is not None:
            self._check_rules(self.required_rules, cert)

    @property
    def is_connected(self) -> bool:
        """False for a pooled connection whose identity was superseded since it was opened.

        urllib3 asks this only when its pool hands a kept-alive connection to a
        new request (``HTTPConnectionPool._get_conn``); on False it closes the
        connection and the request reconnects (``connect`` above) with the
        current identity. Why drop it rather than let it run: with short-lived
        certificates a connection kept alive for longer than the renewal
        period would go on presenting a certificate past its expiry, and the
        server, which judges expiry per request, closes it under a request.
        A request in flight holds its connection outside the pool and never
        meets this check: it finishes. The cost is ``IdentityFiles.current()``,
        a stat of three files (about 7 microseconds, measured, against the 1.2
        ms of a keep-alive GET over loopback with requests); a refused set or
        unchanged files return the identity in use, so nothing is dropped then.
        """
        if self.identity is not None and self.presenting is not None:
            current = self.identity.current()
            if current is not self.presenting:
                logger.debug(
                    "pooled connection to %s:%s presented serial %s, superseded by %s: "
                    "closed, the request reconnects",
                    self.host,
                    self.port,
                    self.presenting.serial,
                    current.serial,
                )
                return False
        return bool(super().is_connected)

    def _check_rules(self, rules: Rules, cert: x509.Certificate) -> None:
        """The server's names against ``rules``, as ``require_peer`` judges a client's."""
        failure = rules.failure(names_of_certificate(cert))
        if failure is None:
            return
        where = f"{self.peer_name} ({self.host}:{self.port}) presented {self.server_dn!r}"
        if rules.mode == "report":
            logger.warning(
                "report mode, went on with what enforce would refuse: %s: %s", where, failure
            )
            return
        self.close()
        raise UpstreamIdentityError(
            f"{where}, which fails {rules.setting} ({failure}); nothing was sent"
        )

    def request(self, *args: Any, **kwargs: Any) -> None:
        self.requests_sent += 1
        try:
            super().request(*args, **kwargs)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
            self._raise_if_refused(self._pending_alert() or exc)
            raise

    def getresponse(self) -> Any:
        try:
            return super().getresponse()
        except (ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected) as exc:
            self._raise_if_refused(exc)
            raise

    def _pending_alert(self) -> ssl.SSLError | None:
        """The alert a server sent before our first write failed, if it is still readable.

        TLS 1.3: the server refuses our certificate and closes; our request
        then meets a dead socket, but its alert still waits in our buffer.
        """
        sock = self.sock
        if self.requests_sent > 1 or not isinstance(sock, ssl.SSLSocket):
            return None
        try:
            sock.settimeout(0.2)
            sock.recv(1)
        except ssl.SSLError as alert:
            return alert
        except OSError:
            return None
        return None

    def _raise_if_refused(self, exc: BaseException) -> None:
        """Turn the signs of a refused client certificate into one clear error.

        Only on the first request of a connection: a reused connection's
        handshake was accepted long ago. With TLS 1.3 the server judges our
        certificate after our handshake has returned, and when it closes the
        socket with our request still unread the kernel sends a reset that can
        overtake its alert; a reset or EOF before any answer is then that
        refusal in all likelihood, and the message says so.
        """
        if self.requests_sent > 1:
            return
        reason = getattr(exc, "reason", None)
        if isinstance(exc, ssl.SSLError) and reason in _REFUSAL_ALERTS:
            detail = str(reason).lower().replace("_", " ")
        elif self.tls_version == "TLSv1.3" and isinstance(
            exc, (ConnectionResetError, http.client.RemoteDisconnected, ssl.SSLEOFError)
        ):
            detail = "connection closed right after the TLS 1.3 handshake, before any answer"
        else:
            return
        self.close()
        raise ClientCertificateRefusedError(
            f"{self.peer_name} refused our client certificate ({detail}); "
            f"we presented {self.client_dn!r} to {self.host}:{self.port}"
        ) from exc
