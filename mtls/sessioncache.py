"""OpenSSL's server-side session cache, turned off on our server contexts.

A TLS 1.2 client that does not use session tickets (OP_NO_TICKET) leaves
its session, with its certificate, in the server context's built-in cache:
some 12 KiB each, up to OpenSSL's default of 20,480 sessions for 300 s. Stock
gunicorn makes a context per socket, so its caches die with the socket; our
listener context (mtls.tls.ListenerContexts) lives as long as the worker, so
its cache grew 40 -> 160 MiB per worker over 20k such connections (measured),
and could reach ~240 MiB. Any holder of a trusted certificate can do that,
and in MTLS_CLIENT_AUTH=optional mode anyone (a session without a client
certificate is cached too).

Off, not capped: the cache only serves TLS 1.2 resumption by session ID,
which works only when the client lands on the same worker again (each
worker's cache is its own, 1 in N with N workers) and only for clients that
refuse tickets. Every other resumption is by ticket (TLS 1.3, and TLS 1.2
with tickets), stateless: the ticket key is shared by all workers and the
cache plays no part. A cap of any size would keep memory that buys almost
nothing, and one more number to defend; off is 0 bytes.

Python's ssl module has no setter for it (SSL_CTX_set_session_cache_mode is
a macro over SSL_CTX_ctrl), so this goes through ctypes into the libssl that
_ssl itself is linked to. Before writing through the context's SSL_CTX
pointer, it checks that the pointer is one (CPython, the OpenSSL version
ssl reports; then its options match ssl's view, the cache reads OpenSSL's
defaults). When anything does not check out, it fails open: a WARNING,
once per process, and the cache stays at OpenSSL's default. The failure mode is bounded memory
(20,480 sessions per worker, ~240 MiB), not a hole in authentication, and
refusing to start on an unusual Python build (OpenSSL linked statically into
the interpreter, a changed object layout) would turn that bounded risk into
an outage of every service on it. Guessing, by writing through a pointer
that failed a check, could corrupt memory: never done.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl
import sys
from dataclasses import dataclass

logger = logging.getLogger("mtls.tls")

# openssl/ssl.h: SSL_CTX_ctrl commands and cache modes.
SSL_CTRL_SET_SESS_CACHE_SIZE = 42
SSL_CTRL_GET_SESS_CACHE_SIZE = 43
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_CTRL_GET_SESS_CACHE_MODE = 45
SSL_SESS_CACHE_OFF = 0
SSL_SESS_CACHE_SERVER = 2
#: SSL_SESSION_CACHE_MAX_SIZE_DEFAULT: what a fresh SSL_CTX's cache holds at most.
DEFAULT_CACHE_SIZE = 1024 * 20

RISK = (
    "OpenSSL's server session cache stays at its default (20,480 TLS 1.2 sessions, "
    "~12 KiB each, per worker): clients that refuse session tickets can grow each "
    "worker's memory by up to ~240 MiB"
)


@dataclass(frozen=True)
class Observed:
    """What OpenSSL, reached through the pointer, says about the context."""

    options: int  # SSL_CTX_get_options(ptr)
    cache_size: int  # SSL_CTRL_GET_SESS_CACHE_SIZE
    cache_mode: int  # SSL_CTRL_GET_SESS_CACHE_MODE


def wrong_library(implementation: str, version: int) -> str | None:
    """Why the pointer must not even be read, or None: checked before any dereference.

    The layout (SSL_CTX* first after the header) is CPython's, and the
    functions must come from the libssl that ssl itself uses.
    """
    if implementation != "cpython":
        return f"{implementation} is not CPython: the SSLContext layout is unknown"
    if version != ssl.OPENSSL_VERSION_NUMBER:
        return f"libssl found is {version:#x}, ssl uses {ssl.OPENSSL_VERSION_NUMBER:#x}"
    return None


def mismatch(seen: Observed, ctx_options: int) -> str | None:
    """Why the pointer is not (provably) ``ctx``'s fresh SSL_CTX, or None when it is.

    The same options as ``ctx.options`` (a 64-bit word that no other object
    at that address is likely to share), and OpenSSL's defaults for a
    context nobody has touched. Pure: the ctypes reads are in _observe.
    """
    if seen.options != ctx_options:
        return f"SSL_CTX_get_options gave {seen.options:#x}, ctx.options is {ctx_options:#x}"
    if (seen.cache_size, seen.cache_mode) != (DEFAULT_CACHE_SIZE, SSL_SESS_CACHE_SERVER):
        return (
            f"session cache size/mode read {seen.cache_size}/{seen.cache_mode}, "
            f"not OpenSSL's defaults {DEFAULT_CACHE_SIZE}/{SSL_SESS_CACHE_SERVER}"
        )
    return None


class _LibSsl:
    """The three libssl functions needed, found through _ssl's own handle."""

    def __init__(self) -> None:
        # dlsym on _ssl's handle searches its dependencies: the libssl it
        # was linked with, already loaded, not some other one on the path.
        lib = ctypes.CDLL(_ssl.__file__)
        self.ctrl = lib.SSL_CTX_ctrl
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options = lib.SSL_CTX_get_options  # a function since OpenSSL 3.0
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.version = lib.OpenSSL_version_num
        self.version.argtypes = []
        self.version.restype = ctypes.c_ulong


_warned = False


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    # PySSLContext: PyObject_HEAD, then SSL_CTX *ctx (Modules/_ssl.c).
    return ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value


def _observe(lib: _LibSsl, ptr: int) -> Observed:
    return Observed(
        options=lib.get_options(ptr),
        cache_size=lib.ctrl(ptr, SSL_CTRL_GET_SESS_CACHE_SIZE, 0, None),
        cache_mode=lib.ctrl(ptr, SSL_CTRL_GET_SESS_CACHE_MODE, 0, None),
    )


def disable_session_cache(ctx: ssl.SSLContext) -> bool:
    """Turn off ``ctx``'s server-side session cache (a fresh server context); True if done.

    Session tickets are untouched (they need no cache). On any doubt about
    the pointer, a WARNING once per process and False (fail open, see the
    module docstring).
    """
    try:
        why = _disable(_LibSsl(), ctx)
    except (OSError, AttributeError, TypeError) as e:  # no shared _ssl, a missing symbol
        why = f"{type(e).__name__}: {e}"
    if why is None:
        return True
    _warn_once(why)
    return False


def _disable(lib: _LibSsl, ctx: ssl.SSLContext) -> str | None:
    why = wrong_library(sys.implementation.name, lib.version())
    if why is not None:
        return why
    ptr = _ssl_ctx_pointer(ctx)
    if not ptr:
        return "the context has no SSL_CTX pointer"
    why = mismatch(_observe(lib, ptr), ctx.options)
    if why is not None:
        return why
    lib.ctrl(ptr, SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF, None)
    # A bound too, should anything turn it back on (0 would mean unbounded).
    lib.ctrl(ptr, SSL_CTRL_SET_SESS_CACHE_SIZE, 1, None)
    if lib.ctrl(ptr, SSL_CTRL_GET_SESS_CACHE_MODE, 0, None) != SSL_SESS_CACHE_OFF:
        return "the cache mode did not read back as off"
    return None


def _warn_once(why: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning("%s (could not turn it off: %s)", RISK, why)
