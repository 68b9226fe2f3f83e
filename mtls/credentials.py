"""The client side's SSLContext: our identity (PEM or PKCS#12) and the root, nothing else.

A private key never reaches the disk in the clear. An encrypted PEM key is
decrypted by OpenSSL itself (``load_cert_chain(password=...)``). A PKCS#12 is
opened with ``cryptography``; since ``ssl`` loads keys only from a path, its
key is re-encrypted with a random one-time password and handed over through
an anonymous in-memory file (``memfd_create``, read back via
``/proc/self/fd``). Where that does not exist, a 0600 temp file holds the
same re-encrypted bytes for the duration of the load and is then removed.
"""

from __future__ import annotations

import re
import secrets
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from mtls.errors import CertificateFileError
from mtls.privatefile import private_file
from mtls.tls import new_client_context
from mtls.x509rules import KEY_FIX, key_mismatch

_FIX = "run `make demo` (or `pki demo --dir pki/out`), or point the setting at your own file"
_PEM_KEY = re.compile(rb"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----")


def build_client_context(
    cert: Path, key: Path | None, ca_certs: Path, password: bytes | None
) -> tuple[ssl.SSLContext, x509.Certificate]:
    """A client context presenting ``cert`` (+ ``key``) and trusting ``ca_certs`` only.

    Returns the context and our leaf certificate (the identity we present).
    Every file that is missing, not a file or unreadable is reported at once;
    then the first one whose content cannot serve. Each CertificateFileError
    names the file (also in its ``files``) and the fix; no OSError, SSLError
    or ValueError gets out of here.
    """
    _check_readable([p for p in (cert, key, ca_certs) if p is not None])
    context = new_client_context()  # the options, with their reasons: mtls.tls
    try:
        context.load_verify_locations(cafile=str(ca_certs))  # no load_default_certs(): root only
    except ssl.SSLError as exc:
        raise CertificateFileError(
            f"{ca_certs}: not a PEM certificate bundle ({exc.reason}): {_FIX}", files=[ca_certs]
        ) from exc
    except OSError as exc:
        raise _unreadable(ca_certs, exc) from exc
    if key is None:
        leaf = _load_pkcs12(context, cert, password)
    else:
        leaf = _load_pem(context, cert, key, password)
    return context, leaf


def _check_readable(paths: list[Path]) -> None:
    """Every path must be a regular file we may open: all problems in one error."""
    missing: list[Path] = []
    locked: dict[Path, str] = {}
    for path in paths:
        if not path.is_file():
            missing.append(path)
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            locked[path] = exc.strerror or str(exc)
    problems = [
        f"{p} is a directory, not a file" if p.is_dir() else f"{p} does not exist or is not a file"
        for p in missing
    ]
    if missing:
        problems[-1] += f": {_FIX}"
    problems += [
        f"{p} cannot be read ({why}): let this service's user read it" for p, why in locked.items()
    ]
    if problems:
        raise CertificateFileError("; ".join(problems), files=[*missing, *locked])


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: OSError) -> CertificateFileError:
    """A file that passed _check_readable and then failed (replaced, removed, permissions)."""
    return CertificateFileError(
        f"{path} cannot be read ({exc.strerror or exc}): check that it exists and that this "
        "service's user may read it",
        files=[path],
    )


def _load_pem(
    context: ssl.SSLContext, cert: Path, key: Path, password: bytes | None
) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(_read(cert))
    except ValueError as exc:
        raise CertificateFileError(
            f"{cert}: no PEM certificate in it ({exc}): {_FIX}", files=[cert]
        ) from exc
    if not _PEM_KEY.search(_read(key)):
        raise CertificateFileError(
            f"{key}: no PEM private key in it (a -----BEGIN PRIVATE KEY----- block): {_FIX}",
            files=[key],
        )
    asked: list[bool] = []

    def give_password() -> bytes:
        # A callable, never None: with None, OpenSSL would prompt on the
        # terminal and hang a server that has no terminal.
        asked.append(True)
        return password or b""

    try:
        context.load_cert_chain(str(cert), str(key), password=give_password)
    except ssl.SSLError as exc:
        if asked and password is None:
            problem = "the key is encrypted and no password was given; give its password file"
        elif asked:
            problem = (
                f"cannot decrypt the key with the password given ({exc.reason}); "
                "check the password file"
            )
        elif exc.reason == "KEY_VALUES_MISMATCH":  # X509_check_private_key: x509rules.key_matches
            mismatch = key_mismatch(key, cert, certs[0], KEY_FIX)
            raise CertificateFileError(mismatch, files=[key]) from exc
        elif exc.reason is None:  # OpenSSL's "PEM lib": the PEM block does not decode
            problem = f"the private key in it is damaged (OpenSSL: {exc}): {_FIX}"
        else:
            problem = f"OpenSSL cannot load the chain and key ({exc.reason}): {_FIX}"
        raise CertificateFileError(f"{key}: {problem}", files=[key]) from exc
    except OSError as exc:  # replaced or removed since they were read above
        raise CertificateFileError(
            f"{cert} and {key} cannot be read ({exc.strerror or exc}): check that they exist "
            "and that this service's user may read them",
            files=[cert, key],
        ) from exc
    return certs[0]


def _load_pkcs12(context: ssl.SSLContext, path: Path, password: bytes | None) -> x509.Certificate:
    try:
        key, leaf, extra = pkcs12.load_key_and_certificates(_read(path), password)
    except ValueError as exc:
        raise CertificateFileError(
            f"{path}: cannot open the PKCS#12 file ({exc}); check the password and that it "
            "is a .p12 file",
            files=[path],
        ) from exc
    if key is None or leaf is None:
        raise CertificateFileError(
            f"{path}: the PKCS#12 file must hold a key and its certificate", files=[path]
        )
    one_time = secrets.token_urlsafe(32).encode()
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [leaf, *extra])
    pem += key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(one_time),
    )
    try:
        # The key stays encrypted under a one-time password on its way to OpenSSL.
        with private_file(pem, "client-identity") as loadable:
            context.load_cert_chain(loadable, password=one_time)
    except ssl.SSLError as exc:
        raise CertificateFileError(
            f"{path}: OpenSSL cannot use its key and certificate ({exc.reason or exc})",
            files=[path],
        ) from exc
    except OSError as exc:
        raise CertificateFileError(
            f"{path}: cannot hand its key to OpenSSL through a memory or temp file "
            f"({exc.strerror or exc}); set TMPDIR to a writable directory",
            files=[path],
        ) from exc
    return leaf
