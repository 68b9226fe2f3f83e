"""Where users live: a small ``UserStore`` protocol and its SQLite implementation.

The blueprints see only the protocol, so another engine (PostgreSQL is on the
roadmap) is one more class, not a rewrite.

SQLite under gunicorn: several worker processes, each with several threads,
share one file. Hence WAL (readers never block the writer), ``busy_timeout``
(a writer waits for the lock instead of failing), one connection per thread
(a ``sqlite3.Connection`` must not be shared between threads, nor carried
across ``fork``), and ``BEGIN IMMEDIATE`` for every write, which takes the
write lock before the first read: a read-modify-write (PATCH) can then never
interleave with another writer's, so no update is lost.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mtls.errors import ConfigError

logger = logging.getLogger("userservice.store")

BUSY_TIMEOUT_MS = 5000
SCHEMA_VERSION = "1"

DEMO_USERS = (
    ("Ada Lovelace", "ada@example.com", "+44 20 7946 0001"),
    ("Alan Turing", "alan@example.com", "+44 20 7946 0002"),
    ("Grace Hopper", "grace@example.com", "+1 202 555 0103"),
    ("Katherine Johnson", "katherine@example.com", "+1 757 555 0104"),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    name    TEXT NOT NULL,
    email   TEXT NOT NULL,
    phone   TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class User:
    """One user. ``version`` counts writes (1 on create, +1 per update)."""

    id: int
    name: str
    email: str
    phone: str
    version: int = 1


class UserStore(Protocol):
    """What the blueprints need from a database; every write is one transaction."""

    def list_users(self, *, limit: int, offset: int) -> tuple[list[User], int]:
        """A page of users by id, and the total count, from one snapshot."""
        ...

    def get_user(self, user_id: int) -> User | None: ...

    def create_user(self, *, name: str, email: str, phone: str) -> User: ...

    def update_user(self, user_id: int, changes: Mapping[str, str]) -> User | None:
        """Apply ``changes`` (name/email/phone) atomically; None if no such user."""
        ...

    def delete_user(self, user_id: int) -> bool: ...

    def healthy(self) -> bool:
        """Does the database answer a query right now?"""
        ...


class SqliteUserStore:
    """``UserStore`` on one SQLite file shared by every worker process and thread."""

    _FIELDS = ("name", "email", "phone")

    def __init__(self, path: Path) -> None:
        """Create the directory, the file, the tables and the demo users if needed.

        Safe when several workers start at once: the schema and the seed are
        written in one ``BEGIN IMMEDIATE`` transaction, and a ``seeded`` marker
        (not "the table is empty") decides, so deleting every user does not
        bring the demo users back on the next start.
        """
        self.path = path
        self._local = threading.local()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                _enable_wal(conn)
                self._initialize(conn)
            finally:
                conn.close()  # never carry a connection into forked workers
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"USERSERVICE_DATABASE_URL: cannot open the SQLite database {path}: {exc}"
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; we say BEGIN ourselves.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
        return conn

    def _initialize(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            seeded = conn.execute("SELECT value FROM meta WHERE key = 'seeded'").fetchone()
            if seeded is None:
                conn.executemany(
                    "INSERT INTO users (name, email, phone) VALUES (?, ?, ?)", DEMO_USERS
                )
                conn.execute("INSERT INTO meta (key, value) VALUES ('seeded', '1')")
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (SCHEMA_VERSION,),
                )
                logger.info("created %s with %d demo users", self.path, len(DEMO_USERS))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection; a new one after ``fork`` (pid changed)."""
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != pid:
            conn = self._connect()
            self._local.conn, self._local.pid = conn, pid
        return conn

    @contextmanager
    def _transaction(self, mode: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute(f"BEGIN {mode}")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    @staticmethod
    def _user(row: sqlite3.Row) -> User:
        return User(row["id"], row["name"], row["email"], row["phone"], row["version"])

    def list_users(self, *, limit: int, offset: int) -> tuple[list[User], int]:
        with self._transaction("DEFERRED") as conn:  # one snapshot for page + total
            total = int(conn.execute("SELECT count(*) FROM users").fetchone()[0])
            rows = conn.execute(
                "SELECT * FROM users ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [self._user(row) for row in rows], total

    def get_user(self, user_id: int) -> User | None:
        row = self._conn().execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else self._user(row)

    def create_user(self, *, name: str, email: str, phone: str) -> User:
        with self._transaction("IMMEDIATE") as conn:
            cursor = conn.execute(
                "INSERT INTO users (name, email, phone) VALUES (?, ?, ?)", (name, email, phone)
            )
            user_id = cursor.lastrowid
        assert user_id is not None
        return User(user_id, name, email, phone)

    def update_user(self, user_id: int, changes: Mapping[str, str]) -> User | None:
        unknown = set(changes) - set(self._FIELDS)
        if unknown:
            raise ValueError(f"not user fields: {sorted(unknown)}")
        # Read, merge and write under one write lock: a concurrent PATCH of
        # another field waits for us instead of overwriting us with old values.
        with self._transaction("IMMEDIATE") as conn:
            row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
            if row is None:
                return None
            current = self._user(row)
            merged = User(
                id=current.id,
                name=changes.get("name", current.name),
                email=changes.get("email", current.email),
                phone=changes.get("phone", current.phone),
                version=current.version + 1,
            )
            conn.execute(
                "UPDATE users SET name = ?, email = ?, phone = ?, version = ? WHERE id = ?",
                (merged.name, merged.email, merged.phone, merged.version, user_id),
            )
        return merged

    def delete_user(self, user_id: int) -> bool:
        with self._transaction("IMMEDIATE") as conn:
            return conn.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount > 0

    def healthy(self) -> bool:
        try:
            self._conn().execute("SELECT 1 FROM users LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            logger.warning("health check: %s does not answer: %s", self.path, exc)
            return False
        return True

    def close(self) -> None:
        """Close this thread's connection (tests; workers keep theirs for life)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if SQLite has not already done so itself (it does on some errors),
    so the connection is clean for the thread's next request."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL, retrying while other workers hold it.

    Switching needs an exclusive lock, and SQLite answers "database is
    locked" at once instead of calling the busy handler; several workers
    opening a brand-new file together hit exactly that. The mode is stored in
    the file, so the first switch wins and the others then find WAL already.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _BUSY_CODES or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"the file system refuses WAL (journal_mode={mode})")
        return
