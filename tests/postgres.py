"""A real PostgreSQL for the tests: initdb + postgres on a free loopback port, TLS only.

No system service: the cluster lives in a temporary directory and runs as an
unprivileged user (``nobody`` when the tests run as root, since postgres
refuses to run as root; the current user otherwise). Its network-facing
configuration is the shipped one, ``deploy/postgresql/``: ``postgresql.conf``
(TLS on, our server certificate and root), ``pg_hba.conf`` (mutual TLS
with the ``cert`` method, everything else rejected) and ``pg_ident.conf``
(which certificate DN may log in as which role). The only additions are the
port, the loopback address, and a Unix socket in the 0700 data directory with
``trust`` for the fixture's own admin connection.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest

from pki import cli
from tests.servers import ROOT, free_port
from tests.tools import install_hint

DEPLOY = ROOT / "deploy" / "postgresql"
DB_HOST = "db.internal"  # the name in the server certificate; libpq connects to hostaddr
DB_ROLE = "userservice"
#: The client certificates the tests use, issued next to the demo PKI:
CLIENT = "userservice-db"  # CN=userservice.internal,OU=Services: pg_ident maps it to userservice


def pg_binary(name: str) -> str:
    """``name`` from PATH or Debian's /usr/lib/postgresql/NN/bin (newest), or a failure."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        pytest.fail(install_hint(name), pytrace=False)
    return found


def build_pg_pki(directory: Path) -> Path:
    """The demo PKI plus the database's server certificate and the clients' certificates."""
    assert cli.main(["demo", "--dir", str(directory)]) == 0
    issue = ["issue", "--dir", str(directory)]
    assert cli.main([*issue, "postgres", "--server", "--cn", DB_HOST, "--dns", DB_HOST]) == 0
    dn = ["--cn", "userservice.internal", "--ou", "Services"]
    assert cli.main([*issue, CLIENT, "--client", *dn]) == 0
    return directory


@dataclass
class PgServer:
    """One cluster; ``url`` gives the User Service's URL for a database in it."""

    data: Path
    port: int
    pki: Path
    user: str

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    @property
    def log_path(self) -> Path:
        return self.data.parent / "postgres.log"

    def start(self) -> None:
        pg_ctl = pg_binary("pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A superuser connection over the data directory's socket (autocommit)."""
        return psycopg.connect(
            host=str(self.data), port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def url(self, dbname: str, *, cert: str = CLIENT, host: str = DB_HOST, **extra: str) -> str:
        query = {
            "hostaddr": "127.0.0.1",
            "sslmode": "verify-full",
            "sslrootcert": str(self.pki / "root.crt"),
            "sslcert": str(self.pki / f"{cert}-chain.crt"),
            "sslkey": str(self.pki / f"{cert}.key"),
            **extra,
        }
        return f"postgresql://{DB_ROLE}@{host}:{self.port}/{dbname}?{urlencode(query)}"


def dbname_of(url: str) -> str:
    """The database name in a URL made by ``PgServer.url``."""
    return urlsplit(url).path.lstrip("/")


def init_cluster(pki: Path) -> PgServer:
    """initdb a cluster configured from deploy/postgresql/, owned by the unprivileged user."""
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="pytest-pg-"))  # /tmp: reachable by that user
    server = PgServer(base / "data", free_port(), pki, user)
    if os.geteuid() == 0:
        shutil.chown(base, user)
    server._run(
        pg_binary("initdb"), "-D", str(server.data), "-U", "postgres", "--no-sync", "-A", "reject"
    )
    for source, target in (
        ("postgres-chain.crt", "server.crt"),
        ("postgres.key", "server.key"),
        ("root.crt", "root.crt"),
    ):
        shutil.copyfile(pki / source, server.data / target)
    shutil.copyfile(DEPLOY / "pg_ident.conf", server.data / "pg_ident.conf")
    shutil.copyfile(DEPLOY / "postgresql.conf", server.data / "userservice.conf")
    network_lines = [
        line
        for line in (DEPLOY / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "local"))
    ]
    (server.data / "pg_hba.conf").write_text(
        "local all postgres trust\n" + "\n".join(network_lines) + "\n"
    )
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write(
            "include 'userservice.conf'\n"
            f"port = {server.port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{server.data}'\n"
            "fsync = off\n"  # tests only: no durability across an OS crash needed
            "log_connections = on\n"
        )
    if os.geteuid() == 0:
        for path in server.data.iterdir():
            if path.is_file():
                shutil.chown(path, user)
    (server.data / "server.key").chmod(0o600)
    return server


def create_role(server: PgServer) -> None:
    with server.admin() as conn:
        conn.execute(f"CREATE ROLE {DB_ROLE} LOGIN")
