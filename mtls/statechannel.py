"""The TLS files the master validated, handed to every running worker (shared memory).

A worker cannot be handed an SSLContext across a fork that already
happened, so after a reload it builds its own from the files. It must build
it from the very bytes the master validated: read from disk a moment later,
the files could be the next rotation's, or half written, and one worker
would serve a set the others do not. So the master, having accepted a
changed set, publishes the bytes here with a new generation number; each
worker polls the number once a second (one unpack of 16 bytes) and, when
it moves, copies the bytes out and validates them itself
(mtls.serverstate.load_tls_state) before it swaps them in.

An anonymous MAP_SHARED mapping made before the first fork, as
mtls.reloadstatus: only this master and its children see it, and the
private key in it is the one each of them holds in memory anyway. One
writer (the master, under its reload lock); readers retry while a write is
in progress (a seqlock), so no lock is shared across processes. Pages are
only allocated once written: the capacity costs address space, not memory.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence

from mtls.errors import ConfigError

_HEADER = struct.Struct("<QQI")  # sequence (odd while writing), generation, number of files
_LENGTH = struct.Struct("<Q")
#: Every file of a set together (the CRLs are most of it: about 40 bytes per revoked serial).
#: Each worker validates a set on its event loop: a 2 MB CRL (50,000 serials) took 0.3 s,
#: so a larger set takes the SIGHUP path (new workers, loaded once in the master).
CAPACITY = 4 * 1024 * 1024


class TooLarge(ConfigError):
    """The set does not fit: the master replaces the workers instead (they load it at fork)."""


class StateChannel:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._map = mmap.mmap(-1, capacity)
        self._sequence = 0
        self._generation = 0

    @property
    def generation(self) -> int:
        """The last published generation; 0 before the first. Cheap: polled once a second."""
        return int(_HEADER.unpack_from(self._map, 0)[1])

    def publish(self, files: Sequence[bytes]) -> int:
        """Make ``files`` the current set (in ServerSettings.files order); the new generation."""
        size = _HEADER.size + _LENGTH.size * len(files) + sum(map(len, files))
        if size > len(self._map):
            raise TooLarge(
                f"the TLS files take {size:,} bytes, more than the {len(self._map):,} a "
                "running worker can be handed"
            )
        self._sequence += 1  # odd: readers wait
        _HEADER.pack_into(self._map, 0, self._sequence, self._generation, len(files))
        offset = _HEADER.size
        for data in files:
            _LENGTH.pack_into(self._map, offset, len(data))
            offset += _LENGTH.size
        for data in files:
            self._map[offset : offset + len(data)] = data
            offset += len(data)
        self._generation += 1
        self._sequence += 1
        _HEADER.pack_into(self._map, 0, self._sequence, self._generation, len(files))
        return self._generation

    def read(self) -> tuple[int, tuple[bytes, ...]] | None:
        """(generation, files) as last published; None if a write kept overlapping the read."""
        for _ in range(10):
            sequence, generation, count = _HEADER.unpack_from(self._map, 0)
            if sequence % 2:
                continue
            offset = _HEADER.size
            lengths = []
            for _ in range(count):
                lengths.append(_LENGTH.unpack_from(self._map, offset)[0])
                offset += _LENGTH.size
            if offset + sum(lengths) > len(self._map):
                continue  # torn lengths: read again
            files = []
            for length in lengths:
                files.append(self._map[offset : offset + length])
                offset += length
            if _HEADER.unpack_from(self._map, 0)[0] == sequence:
                return generation, tuple(files)
        return None
