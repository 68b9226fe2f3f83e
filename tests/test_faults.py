"""Faults a running deployment meets, on real gunicorn servers over loopback mTLS.

- a worker SIGKILLed under a request: the other keeps serving, the arbiter
  replaces it, and the replacement serves;
- the User Service restarted under Home Page load: the Home Page answers
  its friendly 503 (or 502) page while it is down, never a 500, and recovers
  by itself once it is back on the same port;
- a bounded soak, over one keep-alive connection and over many short ones:
  the worker's open file descriptors stay flat, its RSS grows by less than a
  generous bound (a leak per request or per connection would show as
  thousands of fds or tens of MiB; nothing here measures time).

Each test prints its counts (cases tried, refused as expected, requests
served under the fault, errors) and repeats them in its assertion messages,
for the fault suite's summary (issue 8).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devserver.services import service_envs
from tests.clients import LoopbackHTTPS, get
from tests.echo_app import slow_request_started
from tests.servers import (
    ECHO,
    Server,
    client_context,
    free_port,
    running,
    server_env,
    worker_pids,
)


def fetch(
    conn: http.client.HTTPConnection, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, bytes, bool]:
    """One GET on ``conn``: status, body, and whether the server will close after it."""
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    return response.status, body, response.will_close


def wait_for_workers(
    server: Server, count: int, *, gone: int = 0, timeout: float = 30.0
) -> set[int]:
    """Poll until the master has ``count`` live workers, none of them ``gone``."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while time.monotonic() < deadline:
        pids = worker_pids(server.process.pid)
        if len(pids) == count and gone not in pids:
            return pids
        time.sleep(0.05)
    raise AssertionError(
        f"master {server.process.pid} has workers {sorted(pids)} after {timeout}s, "
        f"expected {count} without {gone}:\n{server.log()[-3000:]}"
    )


@dataclass(frozen=True)
class Usage:
    """What one process holds: resident memory and open file descriptors (proc(5))."""

    rss_kib: int
    fds: int


def usage(pid: int) -> Usage:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return Usage(rss_kib=int(rss.split()[1]), fds=len(os.listdir(f"/proc/{pid}/fd")))


def settled_fds(pid: int, *, at_most: int | None = None, timeout: float = 15.0) -> int:
    """The worker's fd count once it stops falling (or reaches ``at_most``), within ``timeout``.

    A closed connection leaves the worker asynchronously (keep-alive wait,
    the close's linger), so a count taken at once could hold a few of them.
    """
    deadline = time.monotonic() + timeout
    previous = usage(pid).fds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = usage(pid).fds
        if (at_most is not None and current <= at_most) or (
            at_most is None and current == previous
        ):
            return current
        previous = current
    return previous


# -- a worker killed mid-request ------------------------------------------------


def test_a_worker_killed_mid_request_is_replaced_and_the_other_keeps_serving(
    demo_pki: Path, tmp_path: Path
) -> None:
    ctx = client_context(demo_pki, "homepage")
    env = server_env(demo_pki, "userservice")  # two workers: tests.servers' default
    with running(ECHO, env, tmp_path / "kill.log", ctx) as server:
        before = wait_for_workers(server, 2)
        # One keep-alive connection: its first answer names the worker that
        # holds it, and its second request is the slow one, on that worker.
        victim_conn = LoopbackHTTPS(server, ctx)
        try:
            status, body, _ = fetch(victim_conn)
            victim = int(json.loads(body)["worker_pid"])
            assert status == 200
            assert victim in before
            victim_conn.request("GET", "/slow?s=20")
            server.wait_for_log(slow_request_started(victim))
            os.kill(victim, signal.SIGKILL)
            with pytest.raises((http.client.HTTPException, OSError)) as died:
                victim_conn.getresponse().read()  # the request died with its worker
            assert not isinstance(died.value, TimeoutError), "the victim was not killed"
        finally:
            victim_conn.close()
        (survivor,) = before - {victim}

        during: collections.Counter[int] = collections.Counter()
        for _ in range(30):  # at once, while the arbiter replaces the victim (it may be quick)
            environ, _ = get(server, ctx)  # each must be a 200
            during[int(environ["worker_pid"])] += 1
        assert victim not in during, during

        (replacement,) = wait_for_workers(server, 2, gone=victim) - {survivor}
        after: collections.Counter[int] = collections.Counter()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(after.values()) < 400:
            environ, _ = get(server, ctx)
            after[int(environ["worker_pid"])] += 1
            if after[replacement] and after[survivor]:
                break  # both have answered
        counts = (
            f"victim={victim} survivor={survivor} replacement={replacement}; served while "
            f"replacing={dict(during)}, after={dict(after)}; killed requests=1, errors=0"
        )
        print(f"worker killed mid-request: {counts}")
        assert set(after) == {survivor, replacement}, counts
        log = server.log()
        assert f"Worker (pid:{victim}) was sent SIGKILL!" in log
        assert f"Booting worker with pid: {replacement}" in log


# -- the User Service restarted under Home Page load ------------------------------


def demo_envs(pki: Path, tmp: Path) -> tuple[int, dict[str, str], dict[str, str]]:
    """The demo pair's environments, the User Service on a port of its own and a fresh DB."""
    user_port = free_port()
    user_env, home_env = service_envs(pki, f"https://localhost:{user_port}")
    user_env["USERSERVICE_DATABASE_URL"] = f"sqlite:///{tmp / 'users.db'}"
    return user_port, user_env, home_env


class HomePageLoad:
    """Client threads looping ``GET /`` on the Home Page, each answer counted by phase.

    Bounded: each thread stops at ``per_thread`` requests or after 60 s. A
    request counts in the phase it STARTED in (a few straddle each change).
    A status other than 200 must be the friendly error page of a 502 or 503;
    anything else (a 500, a traceback, no answer at all) is recorded as bad.
    """

    def __init__(
        self, home: Server, ctx: ssl.SSLContext, *, threads: int = 4, per_thread: int = 3000
    ) -> None:
        self.home, self.ctx, self.per_thread = home, ctx, per_thread
        self.phase = "up"
        self.counts: collections.Counter[tuple[str, int]] = collections.Counter()
        self.bad: list[str] = []
        self.sample: dict[int, str] = {}  # the first page seen for each status
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        deadline = time.monotonic() + 60
        for _ in range(self.per_thread):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            phase = self.phase
            conn = LoopbackHTTPS(self.home, self.ctx)
            try:
                status, body, _ = fetch(conn)
            except (http.client.HTTPException, OSError) as e:
                status, body = 0, repr(e).encode()
            finally:
                conn.close()
            problem = self._problem(status, body.decode(errors="replace"))
            with self.lock:
                self.counts[phase, status] += 1
                self.sample.setdefault(status, body.decode(errors="replace"))
                if problem:
                    self.bad.append(f"{phase}: {problem}")

    @staticmethod
    def _problem(status: int, page: str) -> str | None:
        if "Traceback" in page:
            return f"{status} with a traceback: {page[:300]!r}"
        if status == 200:
            return None if "Ada Lovelace" in page else f"200 without the user: {page[:300]!r}"
        if status in (502, 503) and f'data-status="{status}"' in page:
            return None  # homepage/templates/error.html, the friendly page
        return f"{status}: {page[:300]!r}"

    def seen(self, phase: str, status: int) -> int:
        with self.lock:
            return self.counts[phase, status]

    def wait_for(self, phase: str, status: int, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.seen(phase, status) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.seen(phase, status) >= count, (
            f"{count} x {status} in phase {phase!r} not seen within {timeout}s: {self.summary()}"
        )

    def summary(self) -> str:
        with self.lock:
            by_status: collections.Counter[int] = collections.Counter()
            for (_, status), n in self.counts.items():
                by_status[status] += n
            phases = ", ".join(f"{p}/{s}={n}" for (p, s), n in sorted(self.counts.items()))
            total = sum(by_status.values())
            return f"requests={total} {dict(by_status)} [{phases}] bad={len(self.bad)}"

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            if t.is_alive():
                t.join(timeout=30)

    @contextlib.contextmanager
    def running(self) -> Iterator[HomePageLoad]:
        for t in self.threads:
            t.start()
        try:
            yield self
        finally:
            self.finish()


def test_the_home_page_says_503_while_the_user_service_restarts_and_recovers_by_itself(
    demo_pki: Path, tmp_path: Path
) -> None:
    user_port, user_env, home_env = demo_envs(demo_pki, tmp_path)
    us_ctx = client_context(demo_pki, "homepage")
    browser = client_context(demo_pki, None)
    with contextlib.ExitStack() as stack:
        home = stack.enter_context(
            running("wsgi:homepage", home_env, tmp_path / "home.log", browser)
        )
        user = stack.enter_context(
            running("wsgi:userservice", user_env, tmp_path / "user.log", us_ctx, port=user_port)
        )
        load = stack.enter_context(HomePageLoad(home, browser).running())
        load.wait_for("up", 200, 20)
        load.phase = "down"
        user.stop()  # SIGTERM: gunicorn's graceful stop
        load.wait_for("down", 503, 20)
        stack.enter_context(
            running("wsgi:userservice", user_env, tmp_path / "again.log", us_ctx, port=user_port)
        )
        load.phase = "back"  # the Home Page is neither restarted nor told
        load.wait_for("back", 200, 20)
        load.finish()
        summary = load.summary()
    print(f"User Service restarted under Home Page load: {summary}")
    assert load.bad == [], f"{summary}\n" + "\n".join(load.bad[:20])
    statuses = {status for _, status in load.counts}
    assert statuses <= {200, 502, 503}, summary
    assert f"The User Service is not reachable at https://localhost:{user_port}" in load.sample[503]
    log = home.log()
    assert "Traceback" not in log, log[-3000:]
    assert '" 500 ' not in log


# -- a bounded soak: fds and RSS stay flat --------------------------------------

SOAK_REQUESTS = 3000
SOAK_WARMUP = 300
SOAK_SECONDS = 60.0
RSS_GROWTH_BOUND_KIB = 8 * 1024
FD_SLACK = 2
RECONNECTS = 500


CALLER_DN = b"CN=homepage.internal,OU=Services,O=Example"


@dataclass(frozen=True)
class LoneWorker:
    """A server on ONE worker (every connection lands where we measure) and a path to soak."""

    server: Server
    pid: int
    path: str


@pytest.fixture(params=["echo app", "User Service"])
def lone_worker(
    request: pytest.FixtureRequest, demo_pki: Path, tmp_path: Path
) -> Iterator[LoneWorker]:
    """The echo app (the worker alone) or the User Service's /whoami (worker, Flask, policy)."""
    env = server_env(demo_pki, "userservice", GUNICORN_CMD_ARGS="--workers 1 --threads 4")
    if request.param == "echo app":
        app, path = ECHO, "/"
    else:
        app, path = "wsgi:userservice", "/whoami"
        env["USERSERVICE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'users.db'}"
    with running(app, env, tmp_path / "soak.log", client_context(demo_pki, "homepage")) as server:
        (pid,) = wait_for_workers(server, 1)
        yield LoneWorker(server, pid, path)


def test_one_keep_alive_connection_soaked_leaks_no_fd_and_little_memory(
    lone_worker: LoneWorker, demo_pki: Path
) -> None:
    pid = lone_worker.pid
    conn = LoopbackHTTPS(lone_worker.server, client_context(demo_pki, "homepage"))
    deadline = time.monotonic() + SOAK_SECONDS
    served = 0
    try:
        while served < SOAK_REQUESTS and time.monotonic() < deadline:
            status, body, will_close = fetch(conn, lone_worker.path)
            # will_close would make http.client reconnect: no longer one connection.
            assert (status, will_close) == (200, False), (served, status, body[:200])
            assert CALLER_DN in body, body[:300]
            served += 1
            if served == SOAK_WARMUP:
                warm = usage(pid)
        end = usage(pid)
    finally:
        conn.close()
    counts = f"served={served} on 1 connection, errors=0, warm={warm}, end={end}"
    print(f"keep-alive soak of {lone_worker.path}: {counts}")
    assert served > SOAK_WARMUP, counts
    assert abs(end.fds - warm.fds) <= FD_SLACK, counts
    assert end.rss_kib - warm.rss_kib < RSS_GROWTH_BOUND_KIB, counts


def test_many_short_connections_leave_no_fd_behind(lone_worker: LoneWorker, demo_pki: Path) -> None:
    pid = lone_worker.pid
    ctx = client_context(demo_pki, "homepage")
    anonymous = client_context(demo_pki, None)  # no client certificate: refused at handshake
    tally: collections.Counter[str] = collections.Counter()

    def one_connection(n: int) -> None:
        """Every 5th is refused; of the others, half ask the server to close, half hang up."""
        conn = LoopbackHTTPS(lone_worker.server, anonymous if n % 5 == 4 else ctx)
        try:
            if n % 5 == 4:
                with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
                    fetch(conn, lone_worker.path)
                tally["refused as expected"] += 1
                return
            status, body, _ = fetch(
                conn, lone_worker.path, {"Connection": "close"} if n % 2 else {}
            )
            assert status == 200, (n, status, body[:300])
            tally["served"] += 1
        finally:
            conn.close()

    for n in range(50):
        one_connection(n)
    baseline = settled_fds(pid)
    warm = usage(pid)
    deadline = time.monotonic() + SOAK_SECONDS
    tried = 0
    while tried < RECONNECTS and time.monotonic() < deadline:
        one_connection(tried)
        tried += 1
    end = usage(pid)
    after = settled_fds(pid, at_most=baseline + FD_SLACK)
    counts = (
        f"connections={tried + 50} {dict(tally)} errors=0, fds baseline={baseline} "
        f"right after={end.fds} settled={after}, rss warm={warm.rss_kib} KiB end={end.rss_kib} KiB"
    )
    print(f"reconnect soak of {lone_worker.path}: {counts}")
    assert tried > 0, counts
    lone_worker.server.wait_for_log("reason=no_cert (no client certificate)")
    assert abs(after - baseline) <= FD_SLACK, counts
    assert end.rss_kib - warm.rss_kib < RSS_GROWTH_BOUND_KIB, counts
