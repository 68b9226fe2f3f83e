"""``USERSERVICE_DATABASE_URL=postgresql://...`` checked and turned into libpq parameters.

Fails closed: the connection to the database is mutual TLS or nothing. The
URL must say ``sslmode=verify-full`` (TLS, the server's chain to
``sslrootcert`` AND its name checked, libpq docs "SSL Support", table
"SSL Mode Descriptions"), and give ``sslrootcert`` (our root, never
``system``), ``sslcert`` and ``sslkey`` (the User Service's client
certificate, which the server's ``pg_hba.conf`` ``cert`` method checks). A
Unix-socket host is refused too: libpq never uses TLS on one.

Parsing is libpq's own (``conninfo_to_dict`` calls ``PQconninfoParse``), so
what is checked here is what libpq will use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mtls.errors import ConfigError

_VAR = "USERSERVICE_DATABASE_URL"
_FILES = ("sslrootcert", "sslcert", "sslkey")


@dataclass(frozen=True)
class PostgresDatabase:
    """A PostgreSQL database reached over mutual TLS.

    conninfo: libpq keyword/value string, with our connect and statement
      timeouts added; it may hold a password, so it is never logged.
    where: ``user@host:port/dbname``, for messages and logs.
    pool_size: the most connections one worker process opens.
    timeout: seconds to connect, to wait for a pooled connection, and per statement.
    """

    conninfo: str
    where: str
    pool_size: int
    timeout: float


def parse_postgres_url(url: str, *, timeout: float, pool_size: int) -> PostgresDatabase:
    """Check ``url`` (every problem at once) and add the timeouts; raises ConfigError."""
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except ProgrammingError as exc:
        raise ConfigError(f"{_VAR}: not a valid PostgreSQL URL: {exc}") from None
    where = (
        f"{params.get('user', '?')}@{params.get('host', '?')}:{params.get('port', '5432')}"
        f"/{params.get('dbname', '?')}"
    )
    problems = []
    host = params.get("host", "")
    if not host or host.startswith(("/", "@")):
        problems.append(
            "needs a TCP host name (a Unix socket never uses TLS): postgresql://USER@HOST:PORT/DB"
        )
    if params.get("sslmode") != "verify-full":
        problems.append(
            f"sslmode={params.get('sslmode', '(unset)')}: must be sslmode=verify-full "
            "(TLS with the server's certificate and host name checked)"
        )
    for key in _FILES:
        value = params.get(key)
        if not value:
            problems.append(f"{key} is missing: give the path of the PEM file")
        elif value == "system":
            problems.append(f"{key}=system: trust our root only, give the path of root.crt")
        elif not Path(value).is_file():
            problems.append(f"{key}={value}: no such file")
    if problems:
        raise ConfigError(f"{_VAR} ({where}): " + "; ".join(problems))

    # libpq's connect_timeout is whole seconds, and values below 2 become 2.
    params.setdefault("connect_timeout", str(max(2, math.ceil(timeout))))
    statement = f"-c statement_timeout={int(timeout * 1000)}"
    params["options"] = f"{params['options']} {statement}" if "options" in params else statement
    params.setdefault("application_name", "userservice")
    return PostgresDatabase(
        conninfo=make_conninfo(**params), where=where, pool_size=pool_size, timeout=timeout
    )
