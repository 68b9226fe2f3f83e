"""Hand bytes to OpenSSL by path without writing them where anyone else can read them.

Python's ssl loads a certificate chain, a private key and CRLs from paths
only, but we never let OpenSSL read an operator's file as it is (the server
loads what it validated, re-serialised) and never put a clear private key on
disk (the client's PKCS#12). Both go through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def private_file(data: bytes, name: str, *, memfd: bool = True) -> Iterator[str]:
    """A path that only this process can open, holding ``data``; gone on exit.

    Linux: a memfd (memfd_create(2)), anonymous memory with no directory
    entry, opened by OpenSSL through /proc/self/fd/N. Elsewhere, or where a
    sandbox refuses memfd_create (ENOSYS under seccomp): a 0600 file in a
    fresh 0700 tempfile.mkdtemp() directory, removed as soon as OpenSSL has
    read it. Callers that can should hand over only encrypted key material
    (the client does), so even that short-lived file holds no clear key.
    """
    fd = _memfd(name) if memfd else None
    if fd is not None:
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    directory = tempfile.mkdtemp(prefix="mtls-")
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.rmdir(directory)


def _memfd(name: str) -> int | None:
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.memfd_create(f"mtls-{name}", os.MFD_CLOEXEC)
    except OSError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
