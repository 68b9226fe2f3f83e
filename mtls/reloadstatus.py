"""The last reload's result, written by the master, read by every worker (shared memory).

A refused reload keeps the old workers serving the old state, so a worker
cannot know from its own state that the last reload failed; its /healthz
must say so anyway. The master creates this anonymous shared mapping before
the first fork (MAP_SHARED: every worker forked later sees its writes); a
fixed layout of a sequence number, two times, a counter and a message,
written under the sequence number and read until it is stable (a seqlock),
so no lock is shared across processes.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

_HEADER = struct.Struct("<QddQ?")  # sequence, last attempt, last success, failures, last ok
_MESSAGE_SIZE = 512
_SIZE = _HEADER.size + 2 + _MESSAGE_SIZE


@dataclass(frozen=True)
class ReloadSnapshot:
    last_attempt: float  # Unix time; the start-up load counts as the first
    last_success: float
    failures: int
    last_ok: bool
    message: str  # why the last reload was refused ("" when it succeeded)


class ReloadStatus:
    def __init__(self, loaded_at: float) -> None:
        self._map = mmap.mmap(-1, _SIZE)  # anonymous, shared with children on Linux/BSD
        self._sequence = 0
        self._write(loaded_at, loaded_at, 0, True, "")

    def succeeded(self, at: float) -> None:
        snap = self.snapshot()
        self._write(at, at, snap.failures, True, "")

    def failed(self, at: float, message: str) -> None:
        snap = self.snapshot()
        self._write(at, snap.last_success, snap.failures + 1, False, message)

    def snapshot(self) -> ReloadSnapshot:
        for _ in range(100):
            before = _HEADER.unpack_from(self._map, 0)
            length = int.from_bytes(self._map[_HEADER.size : _HEADER.size + 2], "little")
            raw = self._map[_HEADER.size + 2 : _HEADER.size + 2 + length]
            after = _HEADER.unpack_from(self._map, 0)
            if before == after and before[0] % 2 == 0:
                _, attempt, success, failures, ok = before
                message = raw.decode("utf-8", "replace")
                return ReloadSnapshot(attempt, success, failures, ok, message)
        raise RuntimeError("reload status kept changing while being read")

    def _write(self, attempt: float, success: float, failures: int, ok: bool, message: str) -> None:
        data = message.encode("utf-8", "replace")[:_MESSAGE_SIZE]
        self._sequence += 1  # odd: a write in progress
        _HEADER.pack_into(self._map, 0, self._sequence, attempt, success, failures, ok)
        self._map[_HEADER.size : _HEADER.size + 2] = len(data).to_bytes(2, "little")
        self._map[_HEADER.size + 2 : _HEADER.size + 2 + len(data)] = data
        self._sequence += 1
        _HEADER.pack_into(self._map, 0, self._sequence, attempt, success, failures, ok)
