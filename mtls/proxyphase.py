"""Reading a PROXY header off a raw, non-blocking socket before its ClientHello.

mtls.proxyproto parses bytes; this is the thin I/O around it that the
worker's event loop calls each time the socket is readable. It peeks, so the
bytes after the header (the ClientHello) stay in the socket for OpenSSL,
and consumes exactly the header once it is whole. Each step says what to do
next: wait for more bytes, refuse the peer (with the reason for the log),
or go on to the TLS handshake (with the client address the header named).

Strict, as Envoy: a peer in MTLS_PROXY_ALLOW_FROM must send a valid header;
any other peer is refused if it sends one.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from mtls.errors import ProxyHeaderError
from mtls.proxyproto import Accept, Incomplete, looks_like_proxy_header, parse_proxy_header

# Enough for any PROXY v1 line and a v2 header with the TLVs HAProxy sends.
MAX_HEADER = 16 + 1024 + 64


@dataclass(frozen=True)
class Wait:
    """Nothing decided yet: call again when the socket is readable."""


@dataclass(frozen=True)
class Refuse:
    reason: str


@dataclass(frozen=True)
class Proceed:
    """Go on to the handshake; ``client`` is the address the header named, if any."""

    client: Any = None


Step = Wait | Refuse | Proceed


class ProxyHeaderReader:
    """One connection's PROXY header, read across as many readable events as it takes."""

    def __init__(self, mode: Accept) -> None:
        self.mode = mode
        self.consumed = b""  # header bytes already taken off the socket

    def step(self, raw: socket.socket) -> Step:
        try:
            peeked = raw.recv(MAX_HEADER, socket.MSG_PEEK)
        except BlockingIOError:
            return Wait()
        if not peeked:
            return Refuse("closed before sending its PROXY header")
        data = self.consumed + peeked
        try:
            info = parse_proxy_header(data, accept=self.mode)
        except Incomplete:
            if len(data) >= MAX_HEADER:
                return Refuse(f"PROXY header longer than {MAX_HEADER} bytes")
            # Every byte so far belongs to the header: take them off the
            # socket, or a level-triggered poll would spin on them.
            self.consumed += raw.recv(len(peeked))
            return Wait()
        except ProxyHeaderError as e:
            return Refuse(f"bad PROXY header: {e}")
        # Consume exactly the header: the ClientHello stays in the socket.
        remaining = info.header_length - len(self.consumed)
        while remaining > 0:  # the bytes were peeked: they are in the socket already
            chunk = raw.recv(remaining)
            if not chunk:
                return Refuse("closed inside its PROXY header")
            remaining -= len(chunk)
        self.consumed = b""
        if info.command == "PROXY" and info.source is not None:
            return Proceed(info.source)
        return Proceed()  # LOCAL (the balancer's own health check): its own address


def refuse_unexpected_header(raw: socket.socket) -> Step:
    """For a peer NOT allowed to send a PROXY header: refuse it if it sends one anyway."""
    try:
        peeked = raw.recv(16, socket.MSG_PEEK)
    except BlockingIOError:
        return Wait()
    if not peeked:
        return Refuse("the client closed the connection during the handshake")
    if looks_like_proxy_header(peeked):
        return Refuse("sent a PROXY header but is not in MTLS_PROXY_ALLOW_FROM")
    return Proceed()
