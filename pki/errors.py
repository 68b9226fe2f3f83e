"""Exceptions of the certificate authority: one root, messages a person can act on.

Every message names the file, argument or certificate at fault and, where
there is one, the command that fixes it. `pki.cli` turns any `PkiError` into
one ``pki: <message>`` line and exit status 2; nothing else does.
"""

from __future__ import annotations


class PkiError(Exception):
    """Root of every error this package raises on purpose."""


class UsageError(PkiError):
    """A command line argument is missing, malformed or contradicts another."""


class InvalidNameError(PkiError):
    """A subject name, file stem or SAN entry is not acceptable in a certificate."""


class ValidityError(PkiError):
    """A requested lifetime is empty or would outlive the issuing CA."""


class InvalidCsrError(PkiError):
    """A certificate signing request is forged, garbled, or asks for what pki will not give."""


class KeyTypeError(PkiError):
    """A key type, size or curve pki will not put into a certificate (or sign with)."""


class StoreError(PkiError):
    """A file of the CA directory is missing, unreadable, garbled or already there."""


class PasswordError(PkiError):
    """A PKCS#12 export has no usable password (none given, or the file is unusable)."""


class UnknownCertificateError(PkiError):
    """A name or serial is not in the CA's index, or is already revoked."""


class CertificateRefused(PkiError):
    """A certificate would be refused by our servers; the message says why.

    `pki verify` reports this with exit status 1, not 2: the input was fine,
    the certificate is not.
    """
