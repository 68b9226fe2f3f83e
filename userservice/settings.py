"""User Service settings: the ``USERSERVICE_*`` env vars, each declared once (mtls.envconfig)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtls.envconfig import dn_regex, env, read_env, seconds, text, whole_number
from mtls.errors import ConfigError
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
class UserServiceEnv:
    """The ``USERSERVICE_*`` variables as declared: each once, with its default and meaning."""

    allowed_dn: re.Pattern[str] = env(
        "USERSERVICE_ALLOWED_DN",
        dn_regex,
        doc="regex the caller's DN must match for /users",
        raw_default=DEFAULT_ALLOWED_DN,
        blank_is_unset=False,
    )
    database_url: str = env(
        "USERSERVICE_DATABASE_URL", text, DEFAULT_DATABASE_URL, "sqlite:///PATH or postgresql://"
    )
    database_timeout: float = env(
        "USERSERVICE_DATABASE_TIMEOUT",
        seconds(0.001, 300),
        DEFAULT_DATABASE_TIMEOUT,
        "seconds: SQLite's busy timeout; PostgreSQL's connect, pool-wait and statement timeouts",
    )
    pool_size: int = env(
        "USERSERVICE_DATABASE_POOL_SIZE",
        whole_number(1, 1000, "connections"),
        DEFAULT_POOL_SIZE,
        "PostgreSQL connections per worker",
    )
    max_body: int = env(
        "USERSERVICE_MAX_BODY",
        whole_number(1, unit="bytes"),
        DEFAULT_MAX_BODY,
        "largest request body in bytes; larger ones get 413",
    )
    database: SqliteDatabase | PostgresDatabase | None = None  # built by _check from the above


def _check(values: dict[str, Any], problems: list[str]) -> None:
    if "database_timeout" not in values or "pool_size" not in values:
        return  # reported already; the URL is checked once they parse
    try:
        values["database"] = parse_database_url(
            values["database_url"],
            timeout=values["database_timeout"],
            pool_size=values["pool_size"],
        )
    except ConfigError as exc:
        problems.append(str(exc))


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
        read = read_env(
            UserServiceEnv,
            os.environ if environ is None else environ,
            title="User Service",
            check=_check,
        )
        if read.database is None:  # read_env has raised for every way this can happen
            raise ConfigError("invalid User Service settings: no database")
        return cls(allowed_dn=read.allowed_dn, database=read.database, max_body=read.max_body)


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
