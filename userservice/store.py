"""Where users live: the ``UserStore`` protocol the blueprints see, and ``open_store``.

Two engines sit behind it with the same behaviour (same ids, order, page
totals from one snapshot, no lost update, the same errors):

- :mod:`userservice.sqlite_store`: one file, the embedded default (``make demo``).
- :mod:`userservice.pg_store`: PostgreSQL over mutual TLS, for several
  instances on several hosts behind the load balancer.

A database that is there but cannot serve right now (stopped, unreachable,
locked beyond the wait, read-only) raises :class:`StoreUnavailable`, which
the app answers with a 503 JSON body: the client may retry, nothing was
written. Anything else (a missing table, a bug) stays an error, a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from userservice.pg_url import PostgresDatabase
    from userservice.settings import SqliteDatabase

SCHEMA_VERSION = "1"

DEMO_USERS = (
    ("Ada Lovelace", "ada@example.com", "+44 20 7946 0001"),
    ("Alan Turing", "alan@example.com", "+44 20 7946 0002"),
    ("Grace Hopper", "grace@example.com", "+1 202 555 0103"),
    ("Katherine Johnson", "katherine@example.com", "+1 757 555 0104"),
)
USER_FIELDS = ("name", "email", "phone")


class StoreUnavailable(Exception):
    """The database cannot serve this request now; retrying later may succeed.

    The message is for our log (it names the database and the reason); the
    peer gets the fixed 503 body.
    """


@dataclass(frozen=True)
class User:
    """One user. ``version`` counts writes (1 on create, +1 per update)."""

    id: int
    name: str
    email: str
    phone: str
    version: int = 1

    def merged(self, changes: Mapping[str, str]) -> User:
        """This user with ``changes`` applied and the version bumped (one write)."""
        unknown = set(changes) - set(USER_FIELDS)
        if unknown:
            raise ValueError(f"not user fields: {sorted(unknown)}")
        return User(
            id=self.id,
            name=changes.get("name", self.name),
            email=changes.get("email", self.email),
            phone=changes.get("phone", self.phone),
            version=self.version + 1,
        )


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

    def close(self) -> None:
        """Give back this process's connections (tests; workers keep theirs for life)."""
        ...


def open_store(database: SqliteDatabase | PostgresDatabase) -> UserStore:
    """The store for ``database``, its schema created or migrated (raises ConfigError)."""
    from userservice.settings import SqliteDatabase

    if isinstance(database, SqliteDatabase):
        from userservice.sqlite_store import SqliteUserStore

        return SqliteUserStore(database.path, busy_timeout=database.timeout)
    from userservice.pg_store import PostgresUserStore

    return PostgresUserStore(database)
