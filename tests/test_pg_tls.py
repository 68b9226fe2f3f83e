"""Mutual TLS to the database: the test PostgreSQL runs deploy/postgresql/ and refuses the rest.

Each success is paired with its refusals: the User Service's client
certificate logs in; a trusted certificate with another DN, a certificate
from another CA, no certificate and no TLS at all are refused by the server;
a server whose name is not the one asked for is refused by the client.
The User Service itself will not start with a URL that is not verify-full
mutual TLS.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from mtls.errors import ConfigError
from tests import postgres
from userservice import UserServiceSettings, create_app
from userservice.pg_url import PostgresDatabase


def test_the_userservice_certificate_logs_in_over_tls_as_its_mapped_role(
    pg_server: postgres.PgServer, pg_url: str
) -> None:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT current_user, ssl, version, client_dn FROM pg_stat_ssl "
            "WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row == (
        "userservice",
        True,
        "TLSv1.3",
        "/O=Example/OU=Services/CN=userservice.internal",
    )


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        ("eventservice", 'certificate authentication failed for user "userservice"'),
        ("rogue", "alert unknown ca"),
    ],
    ids=["trusted-ca-other-dn", "other-ca"],
)
def test_a_certificate_the_database_does_not_map_is_refused(
    pg_server: postgres.PgServer, pg_url: str, cert: str, reason: str
) -> None:
    dbname = postgres.dbname_of(pg_url)
    with pytest.raises(psycopg.OperationalError, match=re.escape(reason)):
        psycopg.connect(pg_server.url(dbname, cert=cert))
    if cert == "eventservice":
        log = pg_server.log_path.read_text()
        assert (
            'no match in usermap "services" for user "userservice" authenticated as '
            '"CN=eventservice.internal,OU=Services,O=Example"'
        ) in log


def test_no_certificate_or_no_tls_is_refused_by_the_database(
    pg_server: postgres.PgServer, pg_url: str
) -> None:
    dbname = postgres.dbname_of(pg_url)
    base = f"host=127.0.0.1 port={pg_server.port} user=userservice dbname={dbname}"
    root = f"sslrootcert={pg_server.pki / 'root.crt'}"
    with pytest.raises(psycopg.OperationalError, match="connection requires a valid client cert"):
        psycopg.connect(f"{base} sslmode=verify-ca {root} sslcert=/nonexistent sslkey=/nonexistent")
    with pytest.raises(
        psycopg.OperationalError, match=r"pg_hba\.conf rejects connection .* no encryption"
    ):
        psycopg.connect(f"{base} sslmode=disable")


def test_the_client_refuses_a_database_whose_certificate_names_another_host(
    pg_server: postgres.PgServer, pg_url: str
) -> None:
    dbname = postgres.dbname_of(pg_url)
    with pytest.raises(psycopg.OperationalError, match='does not match host name "localhost"'):
        psycopg.connect(pg_server.url(dbname, host="localhost"))


def test_the_service_starts_on_the_mtls_url_and_adds_its_timeouts(pg_url: str) -> None:
    settings = UserServiceSettings.from_env(
        {"USERSERVICE_DATABASE_URL": pg_url, "USERSERVICE_DATABASE_TIMEOUT": "2.5"}
    )
    database = settings.database
    assert isinstance(database, PostgresDatabase)
    assert "statement_timeout=2500" in database.conninfo
    assert "connect_timeout=3" in database.conninfo
    assert database.where.startswith("userservice@db.internal:")
    app = create_app(settings)
    app.extensions["userservice.store"].close()


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"cert": "eventservice"}, "certificate authentication failed"),
        ({"cert": "rogue"}, "alert unknown ca"),
        ({"host": "localhost"}, 'does not match host name "localhost"'),
    ],
    ids=["unmapped-dn", "other-ca", "wrong-server-name"],
)
def test_the_service_refuses_to_start_when_the_database_refuses_it_or_the_reverse(
    pg_server: postgres.PgServer, pg_url: str, options: dict[str, str], reason: str
) -> None:
    """A refusal is configuration, not an outage: no retry fixes it, so start-up stops."""
    url = pg_server.url(postgres.dbname_of(pg_url), **options)
    settings = UserServiceSettings.from_env({"USERSERVICE_DATABASE_URL": url})
    with pytest.raises(
        ConfigError, match=r"cannot set up the PostgreSQL database userservice@"
    ) as e:
        create_app(settings)
    assert reason in str(e.value)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("sslmode=verify-ca", "sslmode=verify-ca: must be sslmode=verify-full"),
        ("sslmode=verify-full&sslrootcert=system", "sslrootcert=system: trust our root only"),
        ("sslmode=verify-full&sslcert=/nonexistent.crt", "sslcert=/nonexistent.crt: no such file"),
    ],
)
def test_a_postgresql_url_without_mutual_tls_is_refused_naming_the_problem(
    tmp_path: Path, query: str, problem: str
) -> None:
    url = f"postgresql://app@db.internal/users?{query}"
    with pytest.raises(ConfigError, match=re.escape(problem)):
        UserServiceSettings.from_env({"USERSERVICE_DATABASE_URL": url})


def test_a_unix_socket_host_is_refused_because_libpq_never_uses_tls_there() -> None:
    url = "postgresql://app@%2Fvar%2Frun%2Fpostgresql/users?sslmode=verify-full"
    with pytest.raises(ConfigError, match="needs a TCP host name"):
        UserServiceSettings.from_env({"USERSERVICE_DATABASE_URL": url})


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("USERSERVICE_DATABASE_TIMEOUT", "0", "must be between 0.001 and 300 seconds"),
        ("USERSERVICE_DATABASE_POOL_SIZE", "many", "is not a whole number of connections"),
    ],
)
def test_a_bad_database_timeout_or_pool_size_is_refused_naming_the_variable(
    name: str, value: str, why: str
) -> None:
    with pytest.raises(ConfigError, match=f"{name}='{value}' {why}"):
        UserServiceSettings.from_env({name: value})


def test_the_shipped_env_file_asks_for_mutual_tls_to_the_database() -> None:
    """deploy/postgresql/userservice.env passes every check but the files' presence here."""
    env = dict(
        line.split("=", 1)
        for line in (postgres.DEPLOY / "userservice.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    with pytest.raises(ConfigError) as excinfo:
        UserServiceSettings.from_env(env)
    problems = str(excinfo.value).splitlines()[1:]
    assert problems == [
        "  - USERSERVICE_DATABASE_URL (userservice@db.internal:5432/userservice): "
        "sslrootcert=/etc/userservice/root.crt: no such file; "
        "sslcert=/etc/userservice/userservice-db-chain.crt: no such file; "
        "sslkey=/etc/userservice/userservice-db.key: no such file"
    ]
