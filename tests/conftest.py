"""Shared fixtures: one demo PKI per session, built by our own CLI; one PostgreSQL."""

import contextlib
import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import flask
import psycopg
import pytest

from pki import cli
from tests import postgres
from tests.pki_checks import Run
from tests.stores import settings_for, store_of
from userservice import create_app


@pytest.fixture(scope="session")
def demo_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway demo PKI (pki demo --dir) built once per test session; treat it as read-only."""
    d = tmp_path_factory.mktemp("demo-pki")
    assert cli.main(["demo", "--dir", str(d)]) == 0
    return d


@pytest.fixture(scope="session")
def pg_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo PKI plus the database's certificates (tests/postgres.py); read-only."""
    return postgres.build_pg_pki(tmp_path_factory.mktemp("pg-pki"))


@pytest.fixture(scope="session")
def pg_server(pg_pki: Path) -> Iterator[postgres.PgServer]:
    """One PostgreSQL for the session (TLS only, deploy/postgresql/), stopped at the end."""
    server = postgres.init_cluster(pg_pki)
    server.start()
    try:
        postgres.create_role(server)
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()  # a test may have stopped it already
        shutil.rmtree(server.data.parent, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: postgres.PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The User Service's URL for a fresh, empty database of its own, dropped afterwards."""
    name = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    with pg_server.admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} OWNER {postgres.DB_ROLE}")
    yield pg_server.url(name)
    with contextlib.suppress(psycopg.OperationalError), pg_server.admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite file that does not exist yet."""
    return tmp_path / "u.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, db: Path) -> str:
    """A fresh database on each backend: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{db}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def make_app(database_url: str) -> Iterator[Callable[..., flask.Flask]]:
    """create_app on ``database_url`` (extra USERSERVICE_* as keywords); stores closed after."""
    apps: list[flask.Flask] = []

    def make(**env: str) -> flask.Flask:
        apps.append(create_app(settings_for(database_url, **env)))
        return apps[-1]

    yield make
    for built in apps:
        store_of(built).close()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """`pki ...` in-process: (exit status, stdout, stderr), with an empty environment."""

    def run(*argv: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv], environ=env or {})
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def ca_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ca") / "ca"
    assert cli.main(["init", "--dir", str(d)], environ={}) == 0
    return d


@pytest.fixture
def ca(ca_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of an initialised CA (`pki init`), so tests may change it."""
    return Path(shutil.copytree(ca_template, tmp_path / "ca"))
