"""User Service settings: the ``USERSERVICE_*`` env vars parsed once, all problems at once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mtls.errors import ConfigError, PolicyError
from mtls.policy import compile_dn_policy

#: The demo's Home Page identity (``pki demo``), the only caller of ``/users``.
DEFAULT_ALLOWED_DN = r"CN=homepage\.internal,OU=Services,O=Example"
DEFAULT_DATABASE_URL = "sqlite:///var/userservice.db"
DEFAULT_MAX_BODY = 16384

_SQLITE_PREFIX = "sqlite:///"
# Engines people will try; named so the error says "not yet" instead of "what is this".
_PLANNED_ENGINES = ("postgresql", "postgres", "mysql", "mariadb")


@dataclass(frozen=True)
class UserServiceSettings:
    """What the User Service needs.

    allowed_dn: compiled regex that must fullmatch the caller's DN for ``/users``.
    database_path: the SQLite file (absolute; its directory is created on start).
      SQLite is the only engine today; another engine would add a field here and
      a class behind ``userservice.store.UserStore``.
    max_body: largest request body in bytes; larger ones get 413.
    """

    allowed_dn: re.Pattern[str]
    database_path: Path
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

        database_path: Path | None = None
        try:
            database_path = parse_database_url(
                env.get("USERSERVICE_DATABASE_URL", DEFAULT_DATABASE_URL)
            )
        except ConfigError as exc:
            problems.append(str(exc))

        max_body = DEFAULT_MAX_BODY
        raw_max = env.get("USERSERVICE_MAX_BODY", str(DEFAULT_MAX_BODY)).strip()
        if raw_max.isascii() and raw_max.isdigit() and int(raw_max) > 0:
            max_body = int(raw_max)
        else:
            problems.append(
                f"USERSERVICE_MAX_BODY={raw_max!r} is not a positive number of bytes "
                f"(default {DEFAULT_MAX_BODY})"
            )

        if problems or allowed_dn is None or database_path is None:
            raise ConfigError("invalid User Service settings:\n  " + "\n  ".join(problems))
        return cls(allowed_dn=allowed_dn, database_path=database_path, max_body=max_body)


def parse_database_url(url: str) -> Path:
    """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` -> absolute Path.

    A relative path is taken from the current directory at start-up and made
    absolute right away, so a later ``chdir`` cannot move the database.
    ``:memory:`` is refused: each connection (one per thread) would get its own
    empty database.
    """
    url = url.strip()
    scheme = url.partition(":")[0].partition("+")[0].lower()
    if scheme in _PLANNED_ENGINES:
        raise ConfigError(
            f"USERSERVICE_DATABASE_URL: the {scheme} engine is not supported yet; "
            f"use {_SQLITE_PREFIX}PATH (relative) or {_SQLITE_PREFIX}/PATH (absolute)"
        )
    if not url.startswith(_SQLITE_PREFIX):
        raise ConfigError(
            f"USERSERVICE_DATABASE_URL={url!r} is not a supported database URL; "
            f"use {_SQLITE_PREFIX}PATH (relative) or {_SQLITE_PREFIX}/PATH (absolute)"
        )
    path = url[len(_SQLITE_PREFIX) :]
    if not path or path.endswith("/") or "?" in path or path == ":memory:":
        raise ConfigError(
            f"USERSERVICE_DATABASE_URL={url!r} must name a database file "
            f"(no query string, no :memory:), e.g. {DEFAULT_DATABASE_URL}"
        )
    return Path(path).absolute()
