"""The master's metrics thread reads certificates only where no fork can start (mtls.forkquiet).

A worker forked while another master thread was inside cryptography
inherited pyo3's lock held and waited on it forever. The metrics server
(mtls.metricsserver) runs here in-process on a real socket, with the
served certificate wrapped so the test sees, and can slow down, every
read of it; the forks are real os.fork calls whose children must finish
within a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509

from mtls import forkquiet, metricsserver
from mtls.forkquiet import fork_quiet
from mtls.health import assess
from mtls.metrics import MULTIPROC_ENV
from mtls.reloadstatus import ReloadStatus
from mtls.serverstate import TlsState, load_tls_state
from mtls.settings import ServerSettings

PATHS = ("/healthz", "/metrics")
UNTIL = 10.0  # seconds for any one request or child; far above what either takes


class WatchedLeaf:
    """The real certificate, noting for each field read whether fork_quiet() was held.

    With ``hold`` set, the next read of serial_number also holds ``hold`` for
    ``hold_for`` seconds: a stand-in for the lock inside cryptography that a
    forked child must never inherit held.
    """

    def __init__(self, leaf: x509.Certificate) -> None:
        self._leaf = leaf
        self.reads: list[tuple[str, bool]] = []
        self.hold: threading.Lock | None = None
        self.hold_for = 0.0
        self.holding = threading.Event()

    def __getattr__(self, name: str) -> Any:
        self.reads.append((name, forkquiet._QUIET.locked()))
        if name == "serial_number" and self.hold is not None:
            inner, self.hold = self.hold, None
            with inner:
                self.holding.set()
                time.sleep(self.hold_for)  # the slow call a fork lands in
        return getattr(self._leaf, name)


@pytest.fixture
def state(demo_pki: Path) -> TlsState:
    return load_tls_state(
        ServerSettings.from_env(
            {
                "MTLS_CERTFILE": str(demo_pki / "userservice-chain.crt"),
                "MTLS_KEYFILE": str(demo_pki / "userservice.key"),
                "MTLS_CA_CERTS": str(demo_pki / "root.crt"),
            }
        )
    )


@pytest.fixture
def leaf(state: TlsState) -> WatchedLeaf:
    return WatchedLeaf(state.leaf)


@contextlib.contextmanager
def serving(source: metricsserver.Source, directory: Path) -> Iterator[int]:
    """The master's metrics server in this process, on a free port; its port."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MULTIPROC_ENV, str(directory))  # no worker files: only the master's facts
        server = metricsserver.serve(("127.0.0.1", 0), source, logging.getLogger(__name__))
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()


def fetch(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=UNTIL) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        with e:
            return e.code


def source_of(state: TlsState, leaf: WatchedLeaf, asked: threading.Event) -> metricsserver.Source:
    watched = dataclasses.replace(state, leaf=cast(x509.Certificate, leaf))
    reloads = ReloadStatus(time.time())

    def source() -> tuple[TlsState, ReloadStatus]:
        asked.set()
        return watched, reloads

    return source


def in_thread(target: Callable[[], int]) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(target()))
    thread.start()
    return thread, result


def exit_code(pid: int, timeout: float = UNTIL) -> int | None:
    """The child's exit code once it exits, or None (and it is killed) if not by ``timeout``."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if ready else None


def fork(child: Callable[[], bool]) -> int:
    """os.fork; the child runs ``child`` and exits at once (0 if it returned True)."""
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            code = 0 if child() else 1
        finally:
            os._exit(code)
    return pid


@pytest.mark.parametrize("path", PATHS)
def test_every_certificate_read_of_a_scrape_is_inside_fork_quiet(
    path: str, state: TlsState, leaf: WatchedLeaf, tmp_path: Path
) -> None:
    with serving(source_of(state, leaf, threading.Event()), tmp_path) as port:
        assert fetch(port, path) == 200
    assert leaf.reads, "the scrape read nothing of the certificate"
    assert all(held for _, held in leaf.reads), leaf.reads


@pytest.mark.parametrize("path", PATHS)
def test_a_scrape_waits_while_fork_quiet_is_held_and_answers_once_released(
    path: str, state: TlsState, leaf: WatchedLeaf, tmp_path: Path
) -> None:
    """The test holds the lock as a fork in progress does: the scrape's reads wait for it."""
    asked = threading.Event()
    with serving(source_of(state, leaf, asked), tmp_path) as port:
        with fork_quiet():
            thread, result = in_thread(lambda: fetch(port, path))
            assert asked.wait(UNTIL)  # the handler has the state and is on its way to read it
            thread.join(0.3)
            assert not result, "answered while a fork was in progress"
            assert thread.is_alive()
        thread.join(UNTIL)
    assert result == [200]


@pytest.mark.parametrize("path", PATHS)
def test_a_fork_during_a_scrapes_certificate_read_waits_for_it(
    path: str, state: TlsState, leaf: WatchedLeaf, tmp_path: Path
) -> None:
    """The deadlock, staged: the read holds a lock (cryptography's, in life) for 0.3 s and the
    test forks in the middle. The child must find that lock free, so the fork waited."""
    inner = threading.Lock()
    leaf.hold, leaf.hold_for = inner, 0.3
    with serving(source_of(state, leaf, threading.Event()), tmp_path) as port:
        thread, result = in_thread(lambda: fetch(port, path))
        assert leaf.holding.wait(UNTIL)
        pid = fork(lambda: inner.acquire(timeout=2.0))
        assert exit_code(pid) == 0, "the child inherited the scrape's lock held"
        thread.join(UNTIL)
    assert result == [200]


def test_workers_forked_throughout_a_scrape_loop_all_start(state: TlsState, tmp_path: Path) -> None:
    """Real cryptography: forks land anywhere in back-to-back scrapes, and every child reads
    the certificate (as a new worker's first handshake does) and exits within the deadline."""
    reloads = ReloadStatus(time.time())
    stop = threading.Event()
    statuses: list[int] = []

    def now() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    def child() -> bool:
        return assess(state, None, now()).status == "ok" and state.leaf.serial_number > 0

    with serving(lambda: (state, reloads), tmp_path) as port:

        def scrape_loop() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and len(statuses) < 5000:
                statuses.append(fetch(port, PATHS[len(statuses) % 2]))

        scraper = threading.Thread(target=scrape_loop)
        scraper.start()
        try:
            for n in range(30):
                assert exit_code(fork(child)) == 0, f"fork {n} after {len(statuses)} scrapes"
        finally:
            stop.set()
            scraper.join(UNTIL)
    assert statuses
    assert set(statuses) == {200}, statuses


# A fresh interpreter imports mtls.forkquiet before logging, then forks from its main
# thread while a second thread, inside fork_quiet(), logs (as the watcher does when a
# reload is refused). ``go`` is set by a fork handler that runs, in the forking
# thread, after logging's (module lock taken) and before fork_quiet's where
# mtls.forkquiet registered first: the forking thread then holds logging's lock and
# waits for fork_quiet(), whose holder waits for logging's lock.
_LOG_IN_A_SECTION = """
import os, sys, threading
assert "logging" not in sys.modules, "the race needs mtls.forkquiet imported first"
from mtls.forkquiet import fork_quiet
go = threading.Event()
os.register_at_fork(before=go.set)
import logging
held = threading.Event()
def section():
    with fork_quiet():
        held.set()
        go.wait(5)
        logging.getLogger("mtls.test").error("in a section")  # takes logging's module lock
threading.Thread(target=section, daemon=True).start()
held.wait(5)
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("forked")
"""


def test_a_section_that_logs_never_deadlocks_a_fork_whoever_imported_logging_first() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LOG_IN_A_SECTION],
            capture_output=True,
            text=True,
            timeout=UNTIL,
            cwd=Path(__file__).resolve().parent.parent,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the fork and the section that logs deadlocked (at-fork lock order)")
    assert (done.returncode, done.stdout) == (0, "forked\n"), done.stderr
