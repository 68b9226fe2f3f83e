"""``UserStore`` on one SQLite file: the embedded default.

SQLite under gunicorn: several worker processes, each with several threads,
share one file. Hence WAL (readers never block the writer), ``busy_timeout``
(a writer waits for the lock instead of failing), one connection per thread
(a ``sqlite3.Connection`` must not be shared between threads, nor carried
across ``fork``), and ``BEGIN IMMEDIATE`` for every write, which takes the
write lock before the first read: a read-modify-write (PATCH) can then never
interleave with another writer's, so no update is lost.

A lock held beyond the busy timeout, a read-only file or a full disk raise
``StoreUnavailable`` (503); see ``_UNAVAILABLE_CODES``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mtls.errors import ConfigError
from userservice.store import DEMO_USERS, SCHEMA_VERSION, StoreUnavailable, User

logger = logging.getLogger("userservice.store")

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


class SqliteUserStore:
    """``UserStore`` on one SQLite file shared by every worker process and thread."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        """Create the directory, the file, the tables and the demo users if needed.

        Safe when several workers start at once: the schema and the seed are
        written in one ``BEGIN IMMEDIATE`` transaction, and a ``seeded`` marker
        (not "the table is empty") decides, so deleting every user does not
        bring the demo users back on the next start.
        """
        self.path = path
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                _enable_wal(conn, busy_timeout)
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
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
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
        with self._unavailable_as_503():
            conn = self._conn()
            conn.execute(f"BEGIN {mode}")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    @contextmanager
    def _unavailable_as_503(self) -> Iterator[None]:
        """Turn "cannot serve now" errors into StoreUnavailable; others propagate."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code not in _UNAVAILABLE_CODES:
                raise
            if code not in _BUSY_CODES:
                # A connection opened while the file was read-only (or gone)
                # stays so: open a new one next time, to recover by itself.
                self.close()
            raise StoreUnavailable(f"SQLite database {self.path}: {exc}") from exc

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
        with self._unavailable_as_503():
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
        # Read, merge and write under one write lock: a concurrent PATCH of
        # another field waits for us instead of overwriting us with old values.
        with self._transaction("IMMEDIATE") as conn:
            row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
            if row is None:
                return None
            merged = self._user(row).merged(changes)
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
#: Primary result codes (https://www.sqlite.org/rescode.html) that mean "not now":
#: locked beyond busy_timeout, a read-only file or directory, I/O error, disk full,
#: the file cannot be opened (gone, no permission).
_UNAVAILABLE_CODES = frozenset(
    {
        *_BUSY_CODES,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
    }
)


def _enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to WAL, retrying while other workers hold it.

    Switching needs an exclusive lock, and SQLite answers "database is
    locked" at once instead of calling the busy handler; several workers
    opening a brand-new file together hit exactly that. The mode is stored in
    the file, so the first switch wins and the others then find WAL already.
    """
    deadline = time.monotonic() + busy_timeout
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
