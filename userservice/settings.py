"""User Service settings: the ``USERSERVICE_*`` env vars parsed once, all problems at once."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mtls.errors import ConfigError, PolicyError
from mtls.policy import compile_dn_policy
from userservice.pg_url import PostgresDatabase, parse_postgres_url

#: The demo's Home Page identity (``pki demo``), the only caller of ``/users``.
DEFAULT_ALLOWED_DN = r"CN=homepage\.internal,OU=Services,O=Example"
DEFAULT_DATABASE_URL = "sqlite:///var/userservice.db"
DEFAULT_MAX_BODY = 16384
#: Seconds: SQLite's busy timeout; PostgreSQL's connect, pool-wait and statement
#: timeouts. A request the database cannot serve within it gets a 503.
DEFAULT_DATABASE_TIMEOUT = 5.0
#: PostgreSQL connections per worker process: gunicorn's default threads.
DEFAULT_POOL_SIZE = 4

_N = TypeVar("_N", int, float)
_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres")
# Engines people will try; named so the error says "not supported" instead of "what is this".
_OTHER_ENGINES = ("mysql", "mariadb")
_URL_HELP = (
    f"use {_SQLITE_PREFIX}PATH (relative), {_SQLITE_PREFIX}/PATH (absolute) "
    "or postgresql://USER@HOST:PORT/DB?sslmode=verify-full&sslrootcert=...&sslcert=...&sslkey=..."
)


@dataclass(frozen=True)
class SqliteDatabase:
    """One SQLite file (absolute; its directory is created on start)."""

    path: Path
    timeout: float = DEFAULT_DATABASE_TIMEOUT


@dataclass(frozen=True)
class UserServiceSettings:
    """What the User Service needs.

    allowed_dn: compiled regex that must fullmatch the caller's DN for ``/users``.
    database: where users live, from ``USERSERVICE_DATABASE_URL`` with
      ``USERSERVICE_DATABASE_TIMEOUT`` and (PostgreSQL) ``USERSERVICE_DATABASE_POOL_SIZE``.
    max_body: largest request body in bytes; larger ones get 413.
    """

    allowed_dn: re.Pattern[str]
    database: SqliteDatabase | PostgresDatabase
    max_body: int = DEFAULT_MAX_BODY

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UserServiceSettings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        allowed_dn: re.Pattern[str] | None = None
        try:
            allowed_dn = compile_dn_policy(
                env.get("USERSERVICE_ALLOWED_DN", DEFAULT_ALLOWED_DN),
                setting="USERSERVICE_ALLOWED_DN",
            )
        except PolicyError as exc:
            problems.append(str(exc))

        timeout = _positive(
            env,
            "USERSERVICE_DATABASE_TIMEOUT",
            DEFAULT_DATABASE_TIMEOUT,
            float,
            "seconds",
            problems,
        )
        pool_size = _positive(
            env, "USERSERVICE_DATABASE_POOL_SIZE", DEFAULT_POOL_SIZE, int, "connections", problems
        )
        database: SqliteDatabase | PostgresDatabase | None = None
        try:
            database = parse_database_url(
                env.get("USERSERVICE_DATABASE_URL", DEFAULT_DATABASE_URL),
                timeout=timeout,
                pool_size=pool_size,
            )
        except ConfigError as exc:
            problems.append(str(exc))

        max_body = _positive(env, "USERSERVICE_MAX_BODY", DEFAULT_MAX_BODY, int, "bytes", problems)

        if problems or allowed_dn is None or database is None:
            raise ConfigError("invalid User Service settings:\n  " + "\n  ".join(problems))
        return cls(allowed_dn=allowed_dn, database=database, max_body=max_body)


def _positive(
    env: Mapping[str, str],
    name: str,
    default: _N,
    kind: type[_N],
    unit: str,
    problems: list[str],
) -> _N:
    """``env[name]`` as a positive finite ``kind`` (plain digits for an int), or
    ``default`` and a problem naming the variable."""
    raw = env.get(name, str(default)).strip()
    value = kind(0)
    if raw.isascii() and (raw.isdigit() or kind is float):
        with contextlib.suppress(ValueError):
            value = kind(raw)
    if not 0 < value < float("inf"):  # also refuses NaN
        problems.append(f"{name}={raw!r} is not a positive number of {unit} (default {default})")
        return default
    return value


def parse_database_url(
    url: str,
    *,
    timeout: float = DEFAULT_DATABASE_TIMEOUT,
    pool_size: int = DEFAULT_POOL_SIZE,
) -> SqliteDatabase | PostgresDatabase:
    """``postgresql://...`` (see :func:`parse_postgres_url`), or a SQLite file:
    ``sqlite:///relative/path`` or ``sqlite:////absolute/path`` -> absolute Path.

    A relative path is taken from the current directory at start-up and made
    absolute right away, so a later ``chdir`` cannot move the database.
    ``:memory:`` is refused: each connection (one per thread) would get its own
    empty database.
    """
    url = url.strip()
    scheme = url.partition(":")[0].partition("+")[0].lower()
    if scheme in _POSTGRES_SCHEMES and url.lower().startswith(f"{scheme}://"):
        return parse_postgres_url(url, timeout=timeout, pool_size=pool_size)
    if scheme in _OTHER_ENGINES:
        raise ConfigError(
            f"USERSERVICE_DATABASE_URL: the {scheme} engine is not supported; {_URL_HELP}"
        )
    if not url.startswith(_SQLITE_PREFIX):
        raise ConfigError(
            f"USERSERVICE_DATABASE_URL={url!r} is not a supported database URL; {_URL_HELP}"
        )
    path = url[len(_SQLITE_PREFIX) :]
    if not path or path.endswith("/") or "?" in path or path == ":memory:":
        raise ConfigError(
            f"USERSERVICE_DATABASE_URL={url!r} must name a database file "
            f"(no query string, no :memory:), e.g. {DEFAULT_DATABASE_URL}"
        )
    return SqliteDatabase(Path(path).absolute(), timeout=timeout)
