"""Why a handshake failed, in one short phrase for the log.

The guide debugs with ``-Djavax.net.debug=SSL``; this is that view without the
noise: one INFO line per refused connection, naming the peer and the reason.
Pure: maps exceptions to phrases, so it is tested without sockets.
"""

from __future__ import annotations

import ssl

# X509_V_ERR_* codes (openssl/x509_vfy.h) that users meet in practice.
_VERIFY_CODES = {
    2: "unknown CA (issuer certificate not found)",
    3: "revocation unknown (no CRL for the issuer)",
    9: "client certificate not yet valid",
    10: "client certificate expired",
    11: "CRL not yet valid",
    12: "CRL expired (refresh it with `pki crl`)",
    18: "unknown CA (self-signed client certificate)",
    19: "unknown CA (self-signed certificate in chain)",
    20: "unknown CA (issuer not in the trust bundle)",
    21: "unknown CA (unable to verify the first certificate)",
    23: "client certificate revoked",
    24: "invalid CA certificate in the client chain",
    26: "bad purpose (client certificate lacks clientAuth)",
}

_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "HTTP_REQUEST": "plaintext HTTP on the TLS port",
    "HTTPS_PROXY_REQUEST": "plaintext HTTP proxy request on the TLS port",
    "WRONG_VERSION_NUMBER": "not TLS (wrong version number)",
    "UNSUPPORTED_PROTOCOL": "wrong version (TLS version below the minimum)",
    "NO_PROTOCOLS_AVAILABLE": "wrong version (no common TLS version)",
    "VERSION_TOO_LOW": "wrong version (TLS version below the minimum)",
    "NO_SHARED_CIPHER": "no shared cipher",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust our certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client rejected our certificate",
    "TLSV1_ALERT_PROTOCOL_VERSION": "wrong version (client refused our TLS version)",
    "UNEXPECTED_EOF_WHILE_READING": "the client closed the connection during the handshake",
    "NO_RENEGOTIATION": "renegotiation refused",
    "UNSAFE_LEGACY_RENEGOTIATION_DISABLED": "renegotiation refused",
}


def describe_handshake_error(error: BaseException) -> str:
    """A short, stable phrase for a failed server-side handshake."""
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        return _VERIFY_CODES.get(code, f"client certificate rejected ({error.verify_message})")
    if isinstance(error, ssl.SSLEOFError):
        return "the client closed the connection during the handshake"
    if isinstance(error, ssl.SSLError):
        reason = getattr(error, "reason", None)
        if reason in _REASONS:
            return _REASONS[reason]
        return f"TLS error ({reason or error})"
    if isinstance(error, ConnectionResetError):
        return "the client reset the connection during the handshake"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, OSError):
        return f"socket error ({error.strerror or error})"
    return f"unexpected error ({type(error).__name__}: {error})"
