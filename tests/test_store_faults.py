"""The database locked or read-only: 503 JSON, reads go on where they can, nothing corrupted.

Each fault is made the way it happens in production, on both backends:
- locked: another session holds the lock beyond USERSERVICE_DATABASE_TIMEOUT
  (SQLite: an open write transaction; PostgreSQL: ``LOCK TABLE ... ACCESS
  EXCLUSIVE``, so the statement timeout ends the wait);
- read-only: SQLite's file made immutable (``chattr +i``: root ignores mode
  bits) or read-only by mode bits (not root); PostgreSQL's
  ``default_transaction_read_only`` (a standby behaves the same), applied by
  reconnecting the pool's sessions.
After each fault the service recovers by itself, and the data is intact.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask
import psycopg
import pytest
from werkzeug.test import TestResponse

from tests import postgres
from tests.stores import run_sql, settings_for
from userservice import pg_store
from userservice.settings import SqliteDatabase
from userservice.store import DEMO_USERS

HOMEPAGE = {
    "HTTPS": "on",
    "SSL_CLIENT_VERIFY": "SUCCESS",
    "SSL_CLIENT_S_DN": "CN=homepage.internal,OU=Services,O=Example",
}
NEW_USER = {"name": "Hedy Lamarr", "email": "hedy@example.com", "phone": "+43 1 5550 0105"}
UNAVAILABLE = {"message": "The database is unavailable; try again."}


def call(app: flask.Flask, method: str, path: str, **kwargs: Any) -> TestResponse:
    return app.test_client().open(path, method=method, environ_base=HOMEPAGE, **kwargs)


def assert_unavailable(response: TestResponse) -> None:
    assert (response.status_code, response.get_json()) == (503, UNAVAILABLE)
    assert response.headers["Retry-After"] == "1"


def assert_intact(url: str, users: int) -> None:
    database = settings_for(url).database
    if isinstance(database, SqliteDatabase):
        assert run_sql(url, "PRAGMA integrity_check") == [("ok",)]
    assert run_sql(url, "SELECT count(*) FROM users") == [(users,)]


@contextlib.contextmanager
def locked(url: str) -> Iterator[None]:
    """Another session holds the write lock (SQLite) / an exclusive table lock (PostgreSQL)."""
    database = settings_for(url).database
    if isinstance(database, SqliteDatabase):
        with contextlib.closing(sqlite3.connect(database.path, isolation_level=None)) as conn:
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("UPDATE users SET name = name WHERE id = 1")
            yield
            conn.execute("ROLLBACK")
    else:
        with psycopg.connect(database.conninfo) as pg:
            pg.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            yield
            pg.rollback()


def _sessions_reconnect(pg_server: postgres.PgServer, dbname: str) -> None:
    with pg_server.admin() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )


def _chattr(path: Path, flag: str) -> None:
    run = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, f"chattr {flag} {path}: {run.stderr} (needs ext4/xfs and root)"


@contextlib.contextmanager
def read_only(url: str, request: pytest.FixtureRequest) -> Iterator[None]:
    database = settings_for(url).database
    if isinstance(database, SqliteDatabase):
        if os.geteuid() == 0:
            _chattr(database.path, "+i")
            try:
                yield
            finally:
                _chattr(database.path, "-i")
        else:
            database.path.chmod(0o444)
            try:
                yield
            finally:
                database.path.chmod(0o644)
        return
    pg_server: postgres.PgServer = request.getfixturevalue("pg_server")
    dbname = postgres.dbname_of(url)
    with pg_server.admin() as conn:
        conn.execute(f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
    _sessions_reconnect(pg_server, dbname)
    try:
        yield
    finally:
        with pg_server.admin() as conn:
            conn.execute(f"ALTER DATABASE {dbname} RESET default_transaction_read_only")
        _sessions_reconnect(pg_server, dbname)


def test_a_database_locked_beyond_the_timeout_is_a_503_then_serves_again(
    make_app: Callable[..., flask.Flask], database_url: str
) -> None:
    app = make_app(USERSERVICE_DATABASE_TIMEOUT="0.5")
    with locked(database_url):
        assert_unavailable(call(app, "POST", "/users", json=NEW_USER))
        assert_unavailable(call(app, "PATCH", "/users/1", json={"name": "X"}))
        if database_url.startswith("sqlite"):  # WAL: readers never wait for the writer
            assert call(app, "GET", "/users/1").status_code == 200
        else:  # ACCESS EXCLUSIVE blocks readers too: the statement timeout answers
            assert_unavailable(call(app, "GET", "/users/1"))
    assert call(app, "POST", "/users", json=NEW_USER).status_code == 201
    assert call(app, "GET", "/users/1").get_json()["name"] == "Ada Lovelace"
    assert_intact(database_url, len(DEMO_USERS) + 1)


def test_a_read_only_database_refuses_writes_with_503_serves_reads_and_recovers(
    make_app: Callable[..., flask.Flask], database_url: str, request: pytest.FixtureRequest
) -> None:
    """SQLite: a connection opened while the file is read-only stays so; the store drops
    it on the error, so the first write after the fault may still be a 503, the next not."""
    app = make_app()  # its start-up connection is closed: the next one opens read-only
    with read_only(database_url, request):
        assert_unavailable(call(app, "POST", "/users", json=NEW_USER))
        assert_unavailable(call(app, "PATCH", "/users/1", json={"name": "X"}))
        assert_unavailable(call(app, "DELETE", "/users/2"))
        assert call(app, "GET", "/users/4").get_json()["name"] == "Katherine Johnson"
        assert call(app, "GET", "/users").get_json()["total"] == len(DEMO_USERS)
    statuses = [call(app, "POST", "/users", json=NEW_USER).status_code for _ in range(2)]
    assert statuses in ([201, 201], [503, 201])
    assert call(app, "GET", "/users/1").get_json()["name"] == "Ada Lovelace"
    assert_intact(database_url, len(DEMO_USERS) + statuses.count(201))


@pytest.mark.parametrize(
    ("message", "unreachable"),
    [
        # A database stopped while a worker booted (seen in CI): the network's doing.
        (
            'connection failed: connection to server at "127.0.0.1", port 48829 failed: server '
            "closed the connection unexpectedly\n\tThis probably means the server terminated "
            "abnormally\n\tbefore or while processing the request.\nSSL SYSCALL error: "
            "Connection reset by peer",
            True,
        ),
        ('connection to server at "127.0.0.1", port 5 failed: Connection refused', True),
        ("connection to server failed: timeout expired", True),
        # Refusals: the database will not take us, whenever we ask.
        ("connection failed: SSL error: certificate verify failed", False),
        ('server certificate for "db.internal" does not match host name "x"', False),
        ("could not load private key file: No such file or directory", False),
    ],
)
def test_an_outage_is_told_apart_from_a_refusal(message: str, unreachable: bool) -> None:
    assert pg_store._unreachable(psycopg.OperationalError(message)) is unreachable
