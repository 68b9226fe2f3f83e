"""Short-lived certificates for real, in compressed time: issue 12's 24-hour renewals in 100 s.

Both services run under gunicorn (User Service, Home Page calling it with its
MtlsSession) on certificates that live 60 s and are renewed with a new key
every 20 s by the code `pki renew` runs (``pki.lifecycle.plan_renew``; the
command line refuses lifetimes under 5 minutes, the library does not), its
files renamed into the very paths the services read. Nothing else happens:
no signal, no restart. Four clients loop GET / on the Home Page all along,
each on a new connection every ``REQUESTS_PER_CONNECTION`` requests.

Proven: no request fails; the Home Page's clients see every server serial
it was given, each only before its expiry; the User Service's access log
(its format extended here with ``SSL_CLIENT_M_SERIAL`` and the time) shows
every client serial the Home Page was given, each only before its expiry.
"""

from __future__ import annotations

import datetime
import http.client
import re
import shutil
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from devserver.services import service_envs
from mtls.identity import format_serial
from pki import lifecycle
from pki.directory import CaDir
from tests.clients import presented_serial
from tests.servers import Server, client_context, free_port, running

LIFETIME = datetime.timedelta(seconds=60)
RENEW_EVERY = 20.0  # seconds between renewals of both certificates
ROUNDS = 4  # renewals, after the first certificates issued before the start
RUN_FOR = 95.0  # seconds the clients loop; the last certificates serve the final 15 s
CLIENTS = 4
REQUESTS_PER_CONNECTION = 10
MAX_CONNECTIONS = 5_000  # per client: a bound far beyond what RUN_FOR allows
PICKUP_TIMEOUT = 20.0  # for a server to present a renewed certificate (watcher: 2 s)
SERVICES = ("userservice", "homepage")

# The User Service's access log, reduced to what this test reads: the Home
# Page's client serial and when (gunicorn's %(t)s, whole seconds).
ACCESS_FORMAT = '"%(r)s" %(s)s %(t)s serial=%({SSL_CLIENT_M_SERIAL}e)s'
ACCESS_LINE = re.compile(r'"GET /users\?limit=1 HTTP/1\.1" (\d{3}) \[([^\]]+)\] serial=(\S*)')


@dataclass
class Ledger:
    """What the client threads saw, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    # (serial the Home Page presented, when the handshake completed)
    server_serials: list[tuple[int, datetime.datetime]] = field(default_factory=list)

    def failed(self, what: str) -> None:
        with self.lock:
            self.failures.append(f"{datetime.datetime.now(datetime.UTC):%H:%M:%S.%f} {what}")

    def ok(self) -> None:
        with self.lock:
            self.answered += 1

    def connected(self, serial: int) -> None:
        with self.lock:
            self.server_serials.append((serial, datetime.datetime.now(datetime.UTC)))


def renew(pki: Path, name: str) -> x509.Certificate:
    """What `pki renew NAME --new-key --valid 60s` would do: key, cert, chain renamed into place."""
    plan = lifecycle.plan_renew(
        CaDir(pki), lifecycle.Renewal(name, new_key=True, lifetime=LIFETIME)
    )
    plan.commit()
    return x509.load_pem_x509_certificate((pki / f"{name}.crt").read_bytes())


def browse(home: Server, ctx: ssl.SSLContext, ledger: Ledger, stop: threading.Event) -> None:
    """A browser's loop: GET / over keep-alive, a new connection every few requests."""
    for _ in range(MAX_CONNECTIONS):
        if stop.is_set():
            return
        conn = http.client.HTTPSConnection(home.host, home.port, context=ctx, timeout=20)
        try:
            conn.connect()
            assert isinstance(conn.sock, ssl.SSLSocket)
            der = conn.sock.getpeercert(binary_form=True)
            assert der is not None
            ledger.connected(x509.load_der_x509_certificate(der).serial_number)
            for n in range(REQUESTS_PER_CONNECTION):
                if stop.is_set():
                    return
                conn.request("GET", "/")
                with conn.getresponse() as response:
                    body = response.read()
                if response.status == 200:
                    ledger.ok()
                else:
                    ledger.failed(
                        f"request {n} on its connection: {response.status} {body[:300]!r}"
                    )
        except (OSError, http.client.HTTPException) as exc:
            ledger.failed(repr(exc))
        finally:
            conn.close()


def wait_until_presented(server: Server, pki: Path, client: str | None, serial: int) -> None:
    """Poll new handshakes until ``server`` presents ``serial`` (the watcher picked it up)."""
    deadline = time.monotonic() + PICKUP_TIMEOUT
    while time.monotonic() < deadline:
        if presented_serial(server, client_context(pki, client)) == serial:
            return
        time.sleep(0.2)
    raise AssertionError(
        f"{server.log_path.name}: serial {format_serial(serial)} not presented within "
        f"{PICKUP_TIMEOUT}s of its renewal; its log:\n{server.log()[-4000:]}"
    )


def client_serials_seen_by(user: Server) -> list[tuple[int, datetime.datetime]]:
    """(Home Page's client serial, logged second) per /users call in the User Service's log."""
    seen = []
    for status, when, serial in ACCESS_LINE.findall(user.log()):
        assert status == "200", f"the User Service answered {status} at {when}"
        logged = datetime.datetime.strptime(when, "%d/%b/%Y:%H:%M:%S %z")
        seen.append((int(serial, 16), logged))
    return seen


def test_four_clients_see_no_failure_while_both_60s_certificates_are_renewed_every_20s(
    demo_pki: Path, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(demo_pki, pki)
    issued: dict[str, dict[int, datetime.datetime]] = {name: {} for name in SERVICES}

    def renew_both() -> dict[str, int]:
        latest = {}
        for name in SERVICES:
            cert = renew(pki, name)
            issued[name][cert.serial_number] = cert.not_valid_after_utc
            latest[name] = cert.serial_number
        return latest

    renew_both()  # from the first certificate on, every one lives 60 s
    user_port = free_port()
    user_env, home_env = service_envs(pki, f"https://localhost:{user_port}")
    user_env["USERSERVICE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'users.db'}"
    ledger, stop = Ledger(), threading.Event()
    with (
        running(
            "wsgi:userservice",
            user_env,
            tmp_path / "user.log",
            client_context(pki, "homepage"),
            port=user_port,
            args=("--access-logformat", ACCESS_FORMAT),
        ) as user,
        running(
            "wsgi:homepage", home_env, tmp_path / "home.log", client_context(pki, None)
        ) as home,
    ):
        browser = client_context(pki, None)  # trusts the root only, as a browser would
        clients = [
            threading.Thread(target=browse, args=(home, browser, ledger, stop))
            for _ in range(CLIENTS)
        ]
        started = time.monotonic()
        for thread in clients:
            thread.start()
        try:
            for round_ in range(1, ROUNDS + 1):
                # The renewal timer's schedule, compressed: nothing to poll for here.
                time.sleep(max(0.0, started + round_ * RENEW_EVERY - time.monotonic()))
                latest = renew_both()
                wait_until_presented(user, pki, "homepage", latest["userservice"])
                wait_until_presented(home, pki, None, latest["homepage"])
            time.sleep(max(0.0, started + RUN_FOR - time.monotonic()))
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in clients)

        upstream = [line for line in home.log().splitlines() if "[WARNING] GET " in line]
        assert ledger.failures == [], (
            f"{len(ledger.failures)} failed of {ledger.answered + len(ledger.failures)}; "
            f"the Home Page's calls that failed: {upstream[:5]}"
        )
        assert ledger.answered > 0
        home_certs = issued["homepage"]
        # The Home Page's server certificate, as its clients saw it on new connections.
        assert {serial for serial, _ in ledger.server_serials} == set(home_certs)
        late = [(format_serial(s), t) for s, t in ledger.server_serials if t >= home_certs[s]]
        assert late == []
        # Its client certificate, as the User Service saw it per request.
        calls = client_serials_seen_by(user)
        assert len(calls) >= ledger.answered
        assert {serial for serial, _ in calls} == set(home_certs)
        # Whole seconds, compared strictly: logged < not_after means before the expiry.
        late = [(format_serial(s), t) for s, t in calls if t >= home_certs[s]]
        assert late == []
