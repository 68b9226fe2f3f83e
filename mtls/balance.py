"""Kept-alive connections spread over the workers: who holds how many (shared memory).

Every worker polls the same listening socket; the kernel wakes them all and
whichever runs first accepts. A kept-alive connection then stays with that
worker for its whole life (the Home Page's pooled client keeps one for
minutes), so an uneven accept is an uneven load for as long as the
connections live: in one bench round one of 2 workers took all 8.
``SO_REUSEPORT`` would not fix it: the kernel hashes each connection to a
socket, so 8 connections land on 2 workers like coin flips (one of them
gets 5 or more 73 % of the time).

The rule: a worker that holds more connections than another one that is
accepting lets that one accept, for as long as it is taking connections.
Each worker writes its own slot (connections held, connections accepted);
the others only read it. A worker passed a connection watches the other's
accept counter: if it has not moved for ``WAIT`` (that worker is stuck,
blocked, out of descriptors, or gone without its slot cleared yet), this
worker accepts after all. So balancing can delay a connection by ``WAIT``
at most, and never refuses one.

An anonymous MAP_SHARED mapping made by the master before the first fork,
as mtls.reloadstatus; slots are assigned by the master (pre_fork), joined
by the worker when it starts accepting, cleared when it stops and again by
the master when it exits. Single writer per slot and 8-byte aligned values;
a reader that sees a value mid-write makes one wrong choice, which the
``WAIT`` rule bounds.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass

#: Workers that take part; one started beyond them (TTIN) accepts as gunicorn does.
SLOTS = 128
#: How long a worker waits on another's accept counter before accepting anyway.
WAIT = 0.05
#: A worker holding fewer never defers: a client that connects, closes and connects again
#: stays on one worker instead of bouncing between them (its closing connection may not be
#: counted out yet). Not a measured saving: balancing on and off read alike (bench/findings.py).
MIN_HELD = 2
#: How long a worker that passed a connection keeps its listener off its poller.
PAUSE = 0.001

_HEADER = struct.Struct("<Q")  # slots handed out so far (the high-water mark)
# pid (0: not accepting), held, accepted so far, handshaking, paused until (CLOCK_MONOTONIC,
# one clock for every process of the machine)
_SLOT = struct.Struct("<qqQqd")
# One field of a slot, written alone by its worker: (struct, offset in the slot).
_PID = (struct.Struct("<q"), 0)
_HELD = (struct.Struct("<q"), 8)
_ACCEPTED = (struct.Struct("<Q"), 16)
_HANDSHAKING = (struct.Struct("<q"), 24)
_PAUSED = (struct.Struct("<d"), 32)
_STRIDE = 40


@dataclass(frozen=True)
class Peer:
    slot: int
    held: int
    accepted: int
    handshaking: int = 0
    paused_until: float = 0.0


class ConnectionTable:
    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, _HEADER.size + slots * _STRIDE)

    # -- the master ---------------------------------------------------------

    def assign(self, taken: Iterable[int | None]) -> int | None:
        """The lowest slot no live worker has, emptied for a new one; None when all are taken."""
        busy = {slot for slot in taken if slot is not None}
        for slot in range(self.slots):
            if slot not in busy:
                self.clear(slot)
                if slot >= self._high():
                    _HEADER.pack_into(self._map, 0, slot + 1)
                return slot
        return None

    def clear(self, slot: int) -> None:
        _SLOT.pack_into(self._map, self._offset(slot), 0, 0, 0, 0, 0.0)

    # -- a worker, its own slot ------------------------------------------------

    def join(self, slot: int, pid: int, held: int) -> None:
        _SLOT.pack_into(self._map, self._offset(slot), pid, held, 0, 0, 0.0)

    def leave(self, slot: int) -> None:
        """Stopped accepting: others no longer wait on it (the master clears the rest at exit)."""
        self._set(slot, _PID, 0)

    def set_held(self, slot: int, held: int) -> None:
        self._set(slot, _HELD, held)

    def set_handshaking(self, slot: int, handshaking: int) -> None:
        self._set(slot, _HANDSHAKING, handshaking)

    def set_paused(self, slot: int, until: float) -> None:
        self._set(slot, _PAUSED, until)

    def count_accept(self, slot: int) -> None:
        field, at = _ACCEPTED
        offset = self._offset(slot) + at
        field.pack_into(self._map, offset, field.unpack_from(self._map, offset)[0] + 1)

    # -- a worker, the others' slots ---------------------------------------------

    def others(self, slot: int) -> list[Peer]:
        """The workers accepting now, except ``slot``'s."""
        peers = []
        for other in range(min(self._high(), self.slots)):
            if other == slot:
                continue
            pid, held, accepted, handshaking, paused = _SLOT.unpack_from(
                self._map, self._offset(other)
            )
            if pid > 0:
                peers.append(Peer(other, held, accepted, handshaking, paused))
        return peers

    def _set(self, slot: int, field: tuple[struct.Struct, int], value: float) -> None:
        layout, at = field
        layout.pack_into(self._map, self._offset(slot) + at, value)

    def _high(self) -> int:
        return int(_HEADER.unpack_from(self._map, 0)[0])

    def _offset(self, slot: int) -> int:
        if not 0 <= slot < self.slots:
            raise IndexError(f"balance slot {slot} is not in 0..{self.slots - 1}")
        return _HEADER.size + slot * _STRIDE


class AcceptGate:
    """One worker's slot, and its choice each time its listener is readable: accept, or not yet."""

    def __init__(self, table: ConnectionTable, slot: int, wait: float = WAIT) -> None:
        self.table = table
        self.slot = slot
        self.wait = wait
        # Per other slot: its accept counter when last seen moving, and since
        # when this worker has been deferring to it without seeing it move.
        self._watch: dict[int, tuple[int, float | None]] = {}

    def join(self, pid: int, held: int) -> None:
        self.table.join(self.slot, pid, held)

    def leave(self) -> None:
        self.table.leave(self.slot)

    def held(self, held: int) -> None:
        self.table.set_held(self.slot, held)

    def accepted(self) -> None:
        self.table.count_accept(self.slot)

    def pause(self, until: float) -> None:
        """This worker left a connection to another: until then, nobody waits on this one."""
        self.table.set_paused(self.slot, until)

    def handshaking(self, handshaking: int) -> None:
        self.table.set_handshaking(self.slot, handshaking)

    def should_accept(self, held: int, now: float, handshaking: int = 0) -> bool:
        """Accept unless a lighter worker is taking connections (its counter moved within WAIT).

        Judged per worker: one that is stuck stays passed over until its
        counter moves again, so every later connection is accepted at once,
        not held back WAIT each (a stopped worker would otherwise cap the
        whole server at one new connection per WAIT); and a busy heavier
        worker's accepts do not restart the wait on a stuck lighter one.

        Never to one with more handshakes in progress than this worker: with
        many short connections (which never pile up as held ones) the worker
        holding fewer kept-alive ones would otherwise do every handshake of
        the server alone while this one idles. Equal handshake counts still
        defer, so a burst of new connections (a pool opening 8 at once: each
        worker is mid-handshake on its first) splits evenly.

        Never to one that is itself deferring (its listener off its poller
        for PAUSE): two workers each waiting out the other's pause left a
        flood of new connections with nobody accepting, a PAUSE at a time
        (1,000 connections at once: the last one accepted 1.6 s later).
        """
        if held < MIN_HELD:
            self._watch.clear()
            return True
        defer = False
        seen = set()
        for peer in self.table.others(self.slot):
            seen.add(peer.slot)
            accepted, since = self._watch.get(peer.slot, (-1, None))
            if accepted != peer.accepted:
                since = None  # it moved: whatever it did before no longer counts
            if peer.held < held and peer.handshaking <= handshaking and peer.paused_until <= now:
                if since is None:
                    since = now  # a lighter worker, taking connections: its turn
                if now - since < self.wait:
                    defer = True
                # else: nothing taken for WAIT (stuck, stopped, gone): passed over
            self._watch[peer.slot] = (peer.accepted, since)
        for slot in self._watch.keys() - seen:
            del self._watch[slot]  # left the table
        return not defer
