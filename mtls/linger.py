"""Graceful close on the event loop: FIN, then drain what the peer still sends.

RFC 9112 section 9.6: a server closing a connection should first half-close
and read until the peer closes, or the peer's unread request bytes turn our
close into a RST that can destroy the response it has not read yet. gunicorn
drains inline for up to 2 s in the thread that closes; here the main thread
runs every handshake, so the drain is a poller callback bounded in time and
bytes, and a peer that never closes costs nothing but one descriptor.

A refused TLS handshake closes the same way: under TLS 1.3 a client writes
its request before it learns that its certificate was refused, and a plain
close would answer those bytes with a RST that destroys our alert; the
client would see "connection reset" instead of "certificate required".
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from functools import partial

from gunicorn import util

LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
# Sockets drained at once; past it the oldest is closed outright, so a flood
# of refused connections cannot pin descriptors for LINGER_SECONDS each.
LINGER_MAX = 1024


class Lingerer:
    """The sockets being drained; ``expire`` is called from the worker's once-a-second tick."""

    def __init__(self, poller: Callable[[], selectors.BaseSelector]) -> None:
        self._poller = poller
        # socket -> (deadline, bytes read); insertion order is deadline order.
        self._draining: collections.OrderedDict[socket.socket, tuple[float, int]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._draining)

    def close_gracefully(self, sock: socket.socket) -> None:
        if len(self._draining) >= LINGER_MAX:
            self._end(next(iter(self._draining)))
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self._poller().register(sock, selectors.EVENT_READ, partial(self._drain, sock))
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self._draining[sock] = (time.monotonic() + LINGER_SECONDS, 0)

    def expire(self, now: float) -> None:
        while self._draining:
            sock, (deadline, _read) = next(iter(self._draining.items()))
            if deadline > now:
                break
            self._end(sock)

    def drop_oldest(self) -> None:
        """Out of descriptors: the oldest drain ends now (its peer had its answer)."""
        if self._draining:
            self._end(next(iter(self._draining)))

    def close_all(self) -> None:
        for sock in list(self._draining):
            self._end(sock)

    def _drain(self, sock: socket.socket, _fileobj: object = None) -> None:
        deadline, read = self._draining.get(sock, (0.0, 0))
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        read += len(data)
        if not data or read >= LINGER_BYTES:
            self._end(sock)
        else:
            self._draining[sock] = (deadline, read)

    def _end(self, sock: socket.socket) -> None:
        self._draining.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._poller().unregister(sock)
        util.close(sock)
