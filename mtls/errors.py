"""Exceptions of the mTLS runtime: one root, messages a person can act on."""

from __future__ import annotations


class MtlsError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(MtlsError):
    """A setting (env var) is missing, malformed or contradicts another."""


class CertificateFileError(MtlsError):
    """A certificate, key, bundle or CRL file cannot serve: names the file and the fix."""


class PolicyError(MtlsError):
    """A DN policy cannot be compiled or a blueprint has none where one is required."""


class ProxyHeaderError(MtlsError):
    """A PROXY protocol header is malformed, truncated, oversized or not allowed."""
