"""Exceptions of the mTLS runtime: one root, messages a person can act on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class MtlsError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(MtlsError):
    """A setting (env var) is missing, malformed or contradicts another."""


class CertificateFileError(MtlsError):
    """A certificate, key, bundle or CRL file cannot serve: names the file and the fix.

    ``files`` lists the files at fault where the raiser knows them, so that a
    caller can name the setting that pointed there (the Home Page does).
    """

    def __init__(self, message: str, *, files: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.files = tuple(files)


class PolicyError(MtlsError):
    """Identity rules cannot be compiled, or an endpoint has no policy where one is required."""


class ProxyHeaderError(MtlsError):
    """A PROXY protocol header is malformed, truncated, oversized or not allowed."""


class UpstreamError(MtlsError):
    """A call to another service over mTLS failed on identity or trust (not on HTTP)."""


class UpstreamIdentityError(UpstreamError):
    """The server could not prove it is the one we require.

    Its chain does not lead to our trust bundle, its certificate does not name
    the host we dialled, or its subject DN does not match the required regex.
    Raised before a single request byte is sent.
    """


class UpstreamRedirectError(UpstreamError):
    """The server redirected us to another origin (scheme, host or port).

    Following it would present our client certificate, and send the request,
    to a server we were never configured to call. Raised before a single byte
    goes to the other origin; ``origin`` and ``target`` are both named.
    """

    def __init__(self, message: str, *, origin: str, target: str) -> None:
        super().__init__(message)
        self.origin = origin
        self.target = target


class ClientCertificateRefusedError(UpstreamError):
    """The server refused our client certificate.

    With TLS 1.2 this happens inside the handshake; with TLS 1.3 the client
    considers the handshake done before the server has judged our certificate,
    so the refusal arrives as an alert (or a reset) on the first read.
    """


class ChainRefused(MtlsError):
    """The strict chain verifier (mtls.x509rules.verify_chain) found no chain; says why."""
