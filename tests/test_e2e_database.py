"""Real gunicorn User Services on a real PostgreSQL (and SQLite): outages, sharing, crashes.

- The database stopped under a running service: 503 JSON, the process stays
  up, and it serves again by itself once the database is back.
- Two instances behind the real HAProxy (deploy/haproxy.cfg) share one
  PostgreSQL: what one writes, the other reads.
- ``kill -9`` of master and workers during a burst of concurrent POSTs: every
  write that was acknowledged with a 201 is there after the restart.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deploy.lb_demo import build_lb_bundle, haproxy_command, haproxy_env
from tests import postgres
from tests.servers import (
    ROOT,
    Server,
    client_context,
    free_port,
    gunicorn_command,
    server_env,
    wait_until_ready,
)
from tests.tools import require_tool

UNAVAILABLE = {"message": "The database is unavailable; try again."}
LB = "127.0.0.2"
BACKEND_HOSTS = ("127.0.0.3", "127.0.0.4")


def send(
    server: Server, ctx: ssl.SSLContext, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One request on a fresh connection; -> (status, parsed JSON or None).

    The server's name is checked as "localhost" (in the demo certificate)
    whatever loopback address it listens on. The 10 s client timeout bounds
    "answers within a few seconds": the service's own database timeout here is 2 s.
    """
    raw = socket.create_connection((server.host, server.port), timeout=10)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.sock = ctx.wrap_socket(raw, server_hostname="localhost")
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


def start_userservice(
    pki: Path, url: str, log: Path, host: str = "127.0.0.1", **extra: str
) -> Server:
    """A User Service in its own session, so a test can kill master and workers at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MTLS_", "GUNICORN"))}
    env |= server_env(pki, "userservice", USERSERVICE_DATABASE_URL=url)
    env |= {"USERSERVICE_DATABASE_TIMEOUT": "2", "GUNICORN_CMD_ARGS": "--workers 2 --threads 4"}
    env |= extra
    port = free_port(host)
    with log.open("ab") as out:
        process = subprocess.Popen(
            gunicorn_command("wsgi:userservice", f"{host}:{port}"),
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(host, port, process, log, env)


@contextlib.contextmanager
def userservice(pki: Path, url: str, log: Path, **extra: str) -> Iterator[Server]:
    server = start_userservice(pki, url, log, **extra)
    try:
        wait_until_ready(server, client_context(pki, "homepage"))
        yield server
    finally:
        server.stop()


def poll_status(server: Server, ctx: ssl.SSLContext, path: str, want: int, within: float) -> None:
    deadline = time.monotonic() + within
    seen: list[int] = []
    while time.monotonic() < deadline:
        status, _ = send(server, ctx, "GET", path)
        if status == want:
            return
        seen.append(status)
        time.sleep(0.2)
    raise AssertionError(f"GET {path} never answered {want} within {within}s: {seen[-5:]}")


@pytest.fixture
def ctx(pg_pki: Path) -> ssl.SSLContext:
    return client_context(pg_pki, "homepage")


def test_database_stopped_is_a_503_json_the_service_stays_up_and_recovers_by_itself(
    pg_server: postgres.PgServer, pg_pki: Path, pg_url: str, tmp_path: Path, ctx: ssl.SSLContext
) -> None:
    with userservice(pg_pki, pg_url, tmp_path / "userservice.log") as server:
        assert send(server, ctx, "GET", "/users/1")[0] == 200
        pg_server.stop()
        try:
            for method, path, body in (
                ("GET", "/users/1", None),
                ("GET", "/users", None),
                ("POST", "/users", {"name": "X", "email": "x@example.com", "phone": "+4930123456"}),
            ):
                assert send(server, ctx, method, path, body) == (503, UNAVAILABLE)
            assert send(server, ctx, "GET", "/healthz")[0] == 503
            assert server.process.poll() is None
        finally:
            pg_server.start()
        poll_status(server, ctx, "/users/1", 200, within=30)
        user = {"name": "Back", "email": "back@example.com", "phone": "+4930123456"}
        assert send(server, ctx, "POST", "/users", user)[0] == 201
        status, health = send(server, ctx, "GET", "/healthz")
        assert (status, health["status"], health["database"]) == (200, "ok", "ok")
        assert "Traceback" not in server.log()


def test_a_service_started_while_the_database_is_down_serves_503_then_recovers(
    pg_server: postgres.PgServer, pg_pki: Path, pg_url: str, tmp_path: Path, ctx: ssl.SSLContext
) -> None:
    """Also what a worker replaced during an outage goes through: it must not fail to boot
    (gunicorn would then stop the whole service)."""
    pg_server.stop()
    try:
        # A 1 s database timeout: the readiness probe (GET /healthz) reads within 2 s.
        log = tmp_path / "userservice.log"
        with userservice(pg_pki, pg_url, log, USERSERVICE_DATABASE_TIMEOUT="1") as server:
            assert send(server, ctx, "GET", "/users/1") == (503, UNAVAILABLE)
            pg_server.start()
            poll_status(server, ctx, "/users/1", 200, within=30)
            assert send(server, ctx, "GET", "/users")[1]["total"] == 4  # migrated and seeded
            assert "does not answer at start-up" in server.log()
    finally:
        if not pg_server.running():
            pg_server.start()


def test_two_instances_behind_haproxy_share_one_postgresql(
    pg_pki: Path, pg_url: str, tmp_path: Path, ctx: ssl.SSLContext
) -> None:
    require_tool("haproxy")
    with contextlib.ExitStack() as cleanup:
        backends = []
        for host in BACKEND_HOSTS:
            backend = start_userservice(
                pg_pki,
                pg_url,
                tmp_path / f"userservice-{host}.log",
                host=host,
                MTLS_PROXY_PROTOCOL="v2",
                MTLS_PROXY_ALLOW_FROM=f"{LB}/32",
            )
            cleanup.callback(backend.stop)
            backends.append(backend)
        for backend in backends:
            wait_until_ready(backend, ctx)  # from 127.0.0.1: not the LB, no header needed
        lb_env = haproxy_env(
            bind=(LB, free_port(LB)),
            source=LB,
            ca_file=pg_pki / "root.crt",
            backends=[(b.host, b.port) for b in backends],
            client_pem=build_lb_bundle(pg_pki, tmp_path / "lb-bundle.pem"),
        )
        log = tmp_path / "haproxy.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                haproxy_command(), env={**os.environ, **lb_env}, cwd=ROOT, stdout=out, stderr=out
            )
        host, _, port = lb_env["LB_BIND"].partition(":")
        lb = Server(host, int(port), process, log, lb_env)
        cleanup.callback(lb.stop)
        wait_until_ready(lb, ctx)

        first, second = backends
        user = {"name": "Shared", "email": "shared@example.com", "phone": "+4930123456"}
        status, created = send(first, ctx, "POST", "/users", user)
        assert status == 201
        path = f"/users/{created['id']}"
        assert send(second, ctx, "GET", path) == (200, created)
        patched = send(second, ctx, "PATCH", path, {"name": "Shared twice"})
        assert patched == (200, {**created, "name": "Shared twice"})
        # Through the balancer, round robin over both: every answer is the same row.
        answers = [send(lb, ctx, "GET", path) for _ in range(6)]
        assert answers == [(200, {**created, "name": "Shared twice"})] * 6
        for backend in backends:
            assert f'"GET {path} HTTP/1.1" 200' in backend.log()


def _burst(server: Server, ctx: ssl.SSLContext, writes: int, kill_after: int) -> dict[int, str]:
    """4 threads POST up to ``writes`` users; master and workers get SIGKILL after
    ``kill_after`` acknowledgements. -> {id: name} of every 201."""
    acknowledged: dict[int, str] = {}
    lock = threading.Lock()
    killed = threading.Event()

    def post(n: int) -> None:
        if killed.is_set():
            return
        user = {"name": f"Burst {n}", "email": f"burst{n}@example.com", "phone": "+4930123456"}
        try:
            status, body = send(server, ctx, "POST", "/users", user)
        except (OSError, http.client.HTTPException):
            return  # cut by the kill: not acknowledged, may or may not be there
        assert status == 201, body
        with lock:
            acknowledged[body["id"]] = body["name"]
            if len(acknowledged) >= kill_after and not killed.is_set():
                killed.set()
                os.killpg(server.process.pid, signal.SIGKILL)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(post, range(writes)))
    server.process.wait(timeout=10)
    return acknowledged


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_during_a_burst_of_writes_loses_no_acknowledged_write(
    pg_pki: Path, tmp_path: Path, ctx: ssl.SSLContext, request: pytest.FixtureRequest, backend: str
) -> None:
    url = f"sqlite:///{tmp_path}/u.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    log = tmp_path / "userservice.log"
    server = start_userservice(pg_pki, url, log)
    try:
        wait_until_ready(server, ctx)
        acknowledged = _burst(server, ctx, writes=200, kill_after=100)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    assert len(acknowledged) >= 100
    with userservice(pg_pki, url, log) as restarted:
        for user_id, name in sorted(acknowledged.items()):
            status, body = send(restarted, ctx, "GET", f"/users/{user_id}")
            assert (status, body["name"]) == (200, name)
        status, page = send(restarted, ctx, "GET", "/users?limit=1")
        assert status == 200
        assert page["total"] >= 4 + len(acknowledged)
