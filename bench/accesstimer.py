"""Target 2b measured where it is spent: the CPU each access-log call takes inside the workers.

Why not the whole-server difference (ours + policy + log minus ours +
policy)? Two instances of the SAME server, started the same way, differ by
more than the access log costs: in 5 interleaved rounds on one machine, two
ours + policy servers read 1,394 and 1,223 us per keep-alive request, the
first higher in every round (bench/findings.py has the run). A 15 us target
cannot be read off a difference whose noise is ~170 us between instances.

So the bench times the call itself, in the running worker under the same
load: gunicorn's worker calls ``self.log.access(...)`` once per request
(gthread's handle_request), and this wraps that bound method with the
thread's CPU clock (CLOCK_THREAD_CPUTIME_ID: the time this thread ran, not
the time it waited for the GIL or the CPU). Both the server with the access
log and the one without carry the wrapper, so the clock's own cost and the
no-log call's early return cancel out in the difference.

Each worker adds its totals (calls, nanoseconds) to a 16-byte file of its
own, mapped into memory: no syscall per request beyond the two clock reads.
The bench reads the files before and after each slice (``read``).
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: where a worker's totals go; set only on the servers the bench times
DIR_ENV = "BENCH_ACCESS_TIMER_DIR"
_TOTALS = struct.Struct("<QQ")  # calls, thread CPU ns


class Totals:
    """A worker's running (calls, ns) in a shared mapping; the wrapper's one writer."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _TOTALS.size)
            self._map = mmap.mmap(fd, _TOTALS.size)
        finally:
            os.close(fd)
        self._lock = threading.Lock()  # gthread runs handle_request on several threads
        self._calls = 0
        self._ns = 0

    def add(self, ns: int) -> None:
        with self._lock:
            self._calls += 1
            self._ns += ns
            _TOTALS.pack_into(self._map, 0, self._calls, self._ns)


def timed(call: Callable[..., Any], totals: Totals) -> Callable[..., Any]:
    """``call`` with its thread CPU time added to ``totals``, even when it raises."""
    clock = time.thread_time_ns

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return call(*args, **kwargs)
        finally:
            totals.add(clock() - started)

    return wrapper


def install(worker: Any) -> None:
    """gunicorn's post_worker_init: time this worker's access-log calls if the bench asked."""
    where = os.environ.get(DIR_ENV)
    if not where:
        return
    totals = Totals(Path(where) / str(os.getpid()))
    worker.log.access = timed(worker.log.access, totals)


def read(where: Path) -> tuple[int, int]:
    """All workers' (calls, ns) so far; a worker that has not written yet counts as 0."""
    calls = ns = 0
    for path in where.iterdir() if where.is_dir() else ():
        data = path.read_bytes()
        if len(data) >= _TOTALS.size:
            c, n = _TOTALS.unpack_from(data)
            calls, ns = calls + c, ns + n
    return calls, ns
