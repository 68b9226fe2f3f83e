"""No fork of the master while another of its threads may hold a lock the child would need.

gunicorn's arbiter forks a worker from its main thread whenever it likes,
while the master's other threads (the watcher, mtls.hooks; the metrics
server, mtls.metricsserver) keep running. A child inherits every lock as
it was at the fork, held by a thread it does not have, and waits on it
forever the first time it needs it. Seen: a worker stuck at boot in its
first Certificate.serial_number, because the watcher was making one of
cryptography's lazily made interned names (pyo3's once-lock) at the fork.

The rule, in one place: a master thread other than the arbiter's does its
cryptography and OpenSSL calls (loading the files; reading a Certificate's
fields) inside ``with fork_quiet():``; every fork of this process waits for
such a section to end, and no section starts during a fork
(os.register_at_fork). The warm-up in mtls.hooks.on_starting makes the
once-made names before any thread starts, but cannot cover every call:
pyo3 also takes a process-wide mutex whenever a thread re-attaches with
references dropped while detached, and OpenSSL has locks of its own.

Sections are kept short, since a fork (a new worker, a reload's new
workers) waits for one in progress: only the calls into cryptography or
OpenSSL go inside, not the work around them. What does not need it, so
stays outside:
- prometheus_client's reading of the workers' files (open, mmap, struct):
  no lock at all; its registry's lock is on a per-scrape registry the
  child never touches; its modules are imported before the first fork
  (mtls.metrics.start_multiprocess_dir), so no import lock either.
- logging: CPython takes its module lock around every fork and
  re-creates each handler's lock in the child. Sections log (a refused
  reload), and a log call can take that module lock, so a fork must take
  fork_quiet() first and logging's lock second, never the other way round:
  fork handlers registered later run first, so logging is imported (its
  handler registered) before ours, whoever imports this module first.

The same lock also keeps the master's two reload paths (the watcher's and
SIGHUP's, mtls.hooks) from interleaving. Not reentrant: never fork, and
never enter it again, inside a section.
"""

from __future__ import annotations

import logging  # noqa: F401  # before register_at_fork below: the lock order (docstring)
import os
import threading
from contextlib import AbstractContextManager

_QUIET = threading.Lock()
os.register_at_fork(
    before=_QUIET.acquire, after_in_parent=_QUIET.release, after_in_child=_QUIET.release
)


def fork_quiet() -> AbstractContextManager[bool]:
    """``with fork_quiet():`` no fork of this process starts until the block ends."""
    return _QUIET
