"""Why a connection was refused: one label for the metric, one phrase for the log (pure).

The guide debugs with ``-Djavax.net.debug=SSL``; this is that view without the
noise: one line per refused connection, naming the peer, the reason label
(exactly the ``reason`` of ``mtls_handshakes_total``) and what happened. The
log level follows from the label (``LEVELS``, documented in the README):
a certificate we refuse is WARNING (a misconfigured client, or someone
trying), the routine noise of a public port is INFO, probes are DEBUG.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from mtls.dn import format_dn

Reason = Literal[
    "none",
    "no_cert",
    "unknown_ca",
    "chain_incomplete",
    "expired",
    "not_yet_valid",
    "revoked",
    "crl_stale",
    "bad_purpose",
    "bad_version",
    "plaintext",
    "timeout",
    "proxy_header",
    "probe",
    "other",
]

LEVELS: dict[Reason, int] = {
    "unknown_ca": logging.WARNING,
    "chain_incomplete": logging.WARNING,
    "expired": logging.WARNING,
    "not_yet_valid": logging.WARNING,
    "revoked": logging.WARNING,
    "crl_stale": logging.WARNING,  # our CRL ran out: every client is refused (SECURITY.md)
    "bad_purpose": logging.WARNING,
    "no_cert": logging.INFO,
    "bad_version": logging.INFO,
    "plaintext": logging.INFO,
    "timeout": logging.INFO,
    "proxy_header": logging.INFO,
    "other": logging.INFO,
    "probe": logging.DEBUG,  # a load balancer's TCP check: connect, close
}


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    detail: str

    @property
    def level(self) -> int:
        return LEVELS.get(self.reason, logging.INFO)

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})"


# X509_V_ERR_* codes (openssl/x509_vfy.h) that users meet in practice.
_VERIFY_CODES: dict[int, tuple[Reason, str]] = {
    2: ("unknown_ca", "issuer certificate not found"),
    3: ("crl_stale", "no CRL for the issuer"),
    9: ("not_yet_valid", "client certificate not yet valid"),
    10: ("expired", "client certificate expired"),
    11: ("crl_stale", "CRL not yet valid"),
    12: ("crl_stale", "CRL expired: refresh it with `pki crl`"),
    18: ("unknown_ca", "self-signed client certificate"),
    19: ("unknown_ca", "self-signed certificate in the client chain"),
    20: ("unknown_ca", "issuer not in the trust bundle"),
    21: ("unknown_ca", "unable to verify the first certificate"),
    23: ("revoked", "client certificate revoked"),
    24: ("unknown_ca", "invalid CA certificate in the client chain"),
    26: ("bad_purpose", "client certificate lacks clientAuth"),
}
_UNKNOWN_ISSUER = {2, 20, 21}

_REASONS: dict[str, tuple[Reason, str]] = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": ("no_cert", "no client certificate"),
    "HTTP_REQUEST": ("plaintext", "plaintext HTTP on the TLS port"),
    "HTTPS_PROXY_REQUEST": ("plaintext", "plaintext HTTP proxy request on the TLS port"),
    "WRONG_VERSION_NUMBER": ("plaintext", "not TLS (wrong version number)"),
    "UNSUPPORTED_PROTOCOL": ("bad_version", "TLS version below the minimum"),
    "NO_PROTOCOLS_AVAILABLE": ("bad_version", "no common TLS version"),
    "VERSION_TOO_LOW": ("bad_version", "TLS version below the minimum"),
    "TLSV1_ALERT_PROTOCOL_VERSION": ("bad_version", "the client refused our TLS version"),
    "NO_SHARED_CIPHER": ("other", "no shared cipher"),
    "NO_RENEGOTIATION": ("other", "renegotiation refused"),
    "UNSAFE_LEGACY_RENEGOTIATION_DISABLED": ("other", "renegotiation refused"),
    "UNEXPECTED_EOF_WHILE_READING": ("other", "the client closed the connection mid-handshake"),
    # The client refused OUR certificate (an alert it sent): say so, and what to check.
    "TLSV1_ALERT_UNKNOWN_CA": (
        "other",
        "the client refused our certificate: it does not trust our CA (check its CA bundle)",
    ),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": (
        "other",
        "the client refused our certificate: it has expired (renew MTLS_CERTFILE)",
    ),
    "SSLV3_ALERT_BAD_CERTIFICATE": ("other", "the client refused our certificate"),
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": (
        "other",
        "the client refused our certificate (a name or purpose it does not accept?)",
    ),
    "SSLV3_ALERT_CERTIFICATE_REVOKED": (
        "other",
        "the client refused our certificate: revoked (issue a new one)",
    ),
}


def describe_handshake_error(
    error: BaseException,
    peer_chain: Iterable[x509.Certificate] = (),
    known_issuers: frozenset[x509.Name] = frozenset(),
) -> Refusal:
    """The refusal for a failed server-side handshake.

    ``peer_chain`` is what the client sent, when it could be captured
    (mtls.tls); with it an unknown issuer is told apart from a client that
    sent its leaf without the intermediate (``known_issuers``: the CA names
    of our own chain and bundle), which OpenSSL reports alike.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code in _UNKNOWN_ISSUER:
            return _unknown_issuer(list(peer_chain), known_issuers)
        reason, detail = _VERIFY_CODES.get(code, ("other", f"rejected: {error.verify_message}"))
        return Refusal(reason, detail)
    if isinstance(error, ssl.SSLEOFError):
        return Refusal("other", "the client closed the connection mid-handshake")
    if isinstance(error, ssl.SSLError):
        name = getattr(error, "reason", None)
        if name in _REASONS:
            return Refusal(*_REASONS[name])
        return Refusal("other", f"TLS error ({name or error})")
    if isinstance(error, ConnectionResetError):
        return Refusal("other", "the client reset the connection mid-handshake")
    if isinstance(error, TimeoutError):
        return Refusal("timeout", "timeout")
    if isinstance(error, OSError):
        return Refusal("other", f"socket error ({error.strerror or error})")
    return Refusal("other", f"unexpected error ({type(error).__name__}: {error})")


def _unknown_issuer(chain: list[x509.Certificate], known: frozenset[x509.Name]) -> Refusal:
    if not chain:
        return Refusal("unknown_ca", "issuer not in the trust bundle")
    leaf = chain[0]
    subject, issuer = _dn(leaf.subject), _dn(leaf.issuer)
    if len(chain) == 1 and leaf.issuer in known:
        return Refusal(
            "chain_incomplete",
            f"the client sent '{subject}' without its issuer '{issuer}': it must send its "
            "chain (NAME-chain.crt, leaf + intermediate), not the leaf alone",
        )
    return Refusal(
        "unknown_ca", f"'{subject}' is issued by '{issuer}', which is not in the trust bundle"
    )


def _dn(name: x509.Name) -> str:
    try:
        return format_dn(name)
    except ValueError:
        return "?"


def parse_certificate_message(data: bytes, tls13: bool) -> list[x509.Certificate]:
    """The certificates of a TLS Certificate handshake message; [] if it cannot be read.

    RFC 8446 4.4.2 (TLS 1.3: a request context, then entries with
    extensions) and RFC 5246 7.4.2 (TLS 1.2: a plain list). ``data`` may
    start with the 4-byte handshake header (type 11, length).
    """
    try:
        if len(data) >= 4 and data[0] == 11 and int.from_bytes(data[1:4], "big") == len(data) - 4:
            data = data[4:]
        pos = 1 + data[0] if tls13 else 0
        end = pos + 3 + int.from_bytes(data[pos : pos + 3], "big")
        pos += 3
        certs: list[x509.Certificate] = []
        while pos < end and len(certs) < 10:
            length = int.from_bytes(data[pos : pos + 3], "big")
            certs.append(x509.load_der_x509_certificate(data[pos + 3 : pos + 3 + length]))
            pos += 3 + length
            if tls13:
                pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        return certs
    except (ValueError, IndexError):
        return []
