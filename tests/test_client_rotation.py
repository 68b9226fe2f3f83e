"""MtlsSession under certificate rotation: real gunicorn (tests/echo_app.py), real renewals.

The echo app answers with ``SSL_CLIENT_M_SERIAL``, so each response says
which certificate the connection that carried it presented. Files are
replaced as ``pki renew`` replaces them (atomic renames), or one at a time
to catch the client between a new certificate and its key.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from cryptography import x509

from mtls.client import MtlsSession, make_session, tls_facts
from mtls.clientidentity import IdentityFiles
from mtls.errors import ClientCertificateRefusedError, UpstreamIdentityError
from mtls.identity import format_serial
from pki import authority, store
from pki import cli as pki_cli
from tests.clients import client_settings
from tests.foreign_cas import server_leaf_under, write_server_files
from tests.pkifiles import load_issued
from tests.servers import ECHO, Server, client_context, running, server_env
from tests.tls_stub import Reply, StubServer, routes, serving

CLOSE = {"Connection": "close"}  # this request's connection is not reused: the next one is new
# Keep-alive long enough that a pooled connection outlives a renewal on a busy machine.
KEEPALIVE = "--workers 2 --threads 4 --keep-alive 30"


@pytest.fixture(scope="module")
def echo(demo_pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One echo server for the module, on its own copy of the PKI (the tests rotate theirs)."""
    pki = tmp_path_factory.mktemp("server") / "pki"
    shutil.copytree(demo_pki, pki)
    env = server_env(pki, "userservice", GUNICORN_CMD_ARGS=KEEPALIVE)
    log = pki.parent / "echo.log"
    with running(ECHO, env, log, client_context(pki, "homepage")) as server:
        yield server


@pytest.fixture
def pki(demo_pki: Path, tmp_path: Path) -> Path:
    """The client's own copy of the demo CA directory: `pki renew` rewrites its files."""
    directory = tmp_path / "pki"
    shutil.copytree(demo_pki, directory)
    return directory


def renew(pki: Path, *extra: str) -> x509.Certificate:
    """`pki renew homepage --new-key`: key, then certificate and chain, each renamed into place."""
    assert pki_cli.main(["renew", "homepage", "--dir", str(pki), "--new-key", *extra]) == 0
    return x509.load_pem_x509_certificate((pki / "homepage.crt").read_bytes())


def serial_of(response: requests.Response) -> int:
    """The serial of the certificate the server saw on this response's connection."""
    assert response.status_code == 200, response.text
    return int(response.json()["SSL_CLIENT_M_SERIAL"], 16)


def first_serial(pki: Path) -> int:
    return x509.load_pem_x509_certificate((pki / "homepage.crt").read_bytes()).serial_number


def test_after_a_renewal_the_pooled_connection_is_closed_and_the_next_request_presents_the_new(
    echo: Server, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fails on a client that reuses a kept-alive connection opened with the old certificate."""
    old = first_serial(pki)
    with make_session(client_settings(pki)) as session:
        assert serial_of(session.get(echo.url)) == old
        kept = session.get(echo.url)  # nothing changed: keep-alive as usual
        assert (tls_facts(kept).reused, serial_of(kept)) == (True, old)
        with caplog.at_level(logging.DEBUG, logger="mtls.client"):
            new = renew(pki).serial_number
            after = [session.get(echo.url) for _ in range(2)]

        # The connection opened before is not reused; the new one is, while it stays current.
        assert [(tls_facts(r).reused, serial_of(r)) for r in after] == [(False, new), (True, new)]
        assert session.client_certificate.serial_number == new
    messages = [r.getMessage() for r in caplog.records]
    (reloaded,) = [m for m in messages if m.startswith("client identity reloaded")]
    assert reloaded.startswith(
        f"client identity reloaded for new connections: cert={pki / 'homepage-chain.crt'} "
        "(CN=homepage.internal,OU=Services,O=Example, serial "
    )
    assert f"{format_serial(old)} -> {format_serial(new)}" in reloaded
    assert (
        f"pooled connection to {echo.host}:{echo.port} presented serial {format_serial(old)}, "
        f"superseded by {format_serial(new)}: closed, the request reconnects"
    ) in messages


def test_a_request_in_flight_during_a_renewal_finishes_on_the_connection_it_began_on(
    echo: Server, pki: Path
) -> None:
    old = first_serial(pki)
    with make_session(client_settings(pki)) as session:
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = pool.submit(session.get, f"{echo.url}/slow?s=1")
            echo.wait_for_log("echo_app: slow request started in worker", timeout=20)
            new = renew(pki).serial_number
            assert serial_of(in_flight.result(timeout=30)) == old
        following = session.get(echo.url)
        assert (tls_facts(following).reused, serial_of(following)) == (False, new)


def test_requests_keep_succeeding_after_the_old_certificate_is_revoked(
    pki: Path, tmp_path: Path
) -> None:
    """The issue's scenario: renewed, old serial revoked, the server reloads its CRL."""
    env = server_env(
        pki, "userservice", MTLS_CRLFILE=str(pki / "crl.pem"), MTLS_RELOAD_INTERVAL="0.2"
    )
    before = tmp_path / "before"  # the old identity, to prove the server refuses it now
    shutil.copytree(pki, before)
    with running(ECHO, env, tmp_path / "crl.log", client_context(pki, "homepage")) as server:
        with make_session(client_settings(pki)) as session:
            assert serial_of(session.get(server.url)) == first_serial(before)
            new = renew(pki, "--revoke-old").serial_number
            server.wait_for_log("mTLS reloaded", timeout=20)

            with make_session(client_settings(before)) as stale:
                deadline = time.monotonic() + 20  # until the reloaded workers answer
                while time.monotonic() < deadline:
                    try:
                        stale.get(server.url, headers=CLOSE)
                    except ClientCertificateRefusedError:
                        break
                else:
                    raise AssertionError("the revoked certificate was never refused")

            responses = [session.get(server.url, headers=CLOSE) for _ in range(10)]
    # Not even the first rides the connection opened before the renewal: it is
    # closed instead of reused, and every request presents the new certificate.
    assert [(tls_facts(r).reused, serial_of(r)) for r in responses] == [(False, new)] * 10


def test_a_new_certificate_without_its_key_is_refused_once_and_the_old_pair_kept(
    echo: Server, pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    staged = tmp_path / "staged"
    shutil.copytree(pki, staged)
    new = renew(staged).serial_number
    old = first_serial(pki)
    # No settling time: the lagging key is reported at once (see the settle test below).
    with make_session(client_settings(pki, identity_settle=0.0)) as session:
        assert serial_of(session.get(echo.url, headers=CLOSE)) == old
        (staged / "homepage-chain.crt").replace(pki / "homepage-chain.crt")  # the key lags

        with caplog.at_level(logging.WARNING, logger="mtls.client"):
            lagging = [session.get(echo.url, headers=CLOSE) for _ in range(3)]
        assert [(tls_facts(r).reused, serial_of(r)) for r in lagging] == [(False, old)] * 3
        kept = [session.get(echo.url) for _ in range(2)]  # a refused set supersedes nothing
        assert [(tls_facts(r).reused, serial_of(r)) for r in kept] == [(False, old), (True, old)]

        (staged / "homepage.key").replace(pki / "homepage.key")
        complete = session.get(echo.url, headers=CLOSE)
        assert (tls_facts(complete).reused, serial_of(complete)) == (False, new)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        f"client identity files changed but cannot serve, not reloaded: {pki / 'homepage.key'} "
        f"does not match the certificate in {pki / 'homepage-chain.crt'} "
    )
    assert (
        f"keep presenting CN=homepage.internal,OU=Services,O=Example (serial {format_serial(old)})"
        in warning
    )
    assert str(pki / "root.crt") in warning  # every file that is watched is named


def test_a_ca_bundle_that_is_not_pem_is_refused_and_the_old_trust_kept(
    echo: Server, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with make_session(client_settings(pki, identity_settle=0.0)) as session:
        session.get(echo.url, headers=CLOSE)
        broken = pki / "root.crt.new"
        broken.write_text("not PEM at all\n")
        broken.replace(pki / "root.crt")
        with caplog.at_level(logging.WARNING, logger="mtls.client"):
            assert session.get(echo.url, headers=CLOSE).status_code == 200
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{pki / 'root.crt'}: not a PEM certificate bundle (NO_CERTIFICATE_OR_CRL_FOUND)" in (
        warning
    )


@pytest.fixture
def moved_server(pki: Path, tmp_path: Path) -> Iterator[tuple[StubServer, authority.Issued]]:
    """A server whose certificate now comes from a new root; it still trusts our old one."""
    new_root = authority.build_root(name=authority.make_name("Moved Root CA"))
    chain, key = write_server_files(tmp_path, server_leaf_under(new_root))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(pki / "root.crt")
    with serving(StubServer(ctx, routes({"/": Reply(200, {"moved": True})}))) as server:
        yield server, new_root


def test_a_replaced_ca_bundle_trusts_a_server_that_moved_to_a_new_root(
    echo: Server, pki: Path, moved_server: tuple[StubServer, authority.Issued]
) -> None:
    server, new_root = moved_server
    with make_session(client_settings(pki)) as session:
        with pytest.raises(UpstreamIdentityError, match="unable to get local issuer"):
            session.get(server.url)

        both = pki / "root.crt.new"  # old root + new root, as during a CA move
        both.write_bytes((pki / "root.crt").read_bytes() + store.encode_certs([new_root.cert]))
        both.replace(pki / "root.crt")

        assert session.get(server.url).json() == {"moved": True}
        assert session.get(echo.url, headers=CLOSE).status_code == 200  # the old root still counts
        assert len(session.ssl_context.get_ca_certs()) == 2


def test_a_renewed_pkcs12_file_reaches_new_connections(
    echo: Server, pki: Path, tmp_path: Path
) -> None:
    password = tmp_path / "p12-password"
    password.write_bytes(b"p12 secret\n")
    homepage = load_issued(pki, "homepage")
    issued = authority.Issued(homepage.cert, homepage.key, (load_issued(pki, "global").cert,))
    p12 = pki / "homepage.p12"
    p12.write_bytes(authority.build_p12(issued, b"p12 secret", friendly_name="homepage"))
    settings = client_settings(pki, cert=p12, key=None, key_password=b"p12 secret")
    with make_session(settings) as session:
        assert serial_of(session.get(echo.url, headers=CLOSE)) == homepage.cert.serial_number
        new = renew(pki, "--password-file", str(password)).serial_number  # rewrites the .p12
        assert serial_of(session.get(echo.url, headers=CLOSE)) == new


def identity_files(pki: Path, settle: float = 0.0) -> IdentityFiles:
    settings = client_settings(pki)
    return IdentityFiles(settings.cert, settings.key, settings.ca_certs, None, settle=settle)


def test_a_renewal_half_way_is_quiet_and_a_set_that_stays_broken_is_reported_once(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = identity_files(pki, settle=0.5)
    first = files.current()
    staged = tmp_path / "staged"
    shutil.copytree(pki, staged)
    renew(staged)
    with caplog.at_level(logging.WARNING, logger="mtls.client"):
        (staged / "homepage.key").replace(pki / "homepage.key")  # the certificate lags
        assert files.current() is first  # a renewal half way: no WARNING
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        deadline = time.monotonic() + 10  # it stays half way: reported once it settled
        while not caplog.records and time.monotonic() < deadline:
            assert files.current() is first
            time.sleep(0.05)
        assert files.current() is first
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"{pki / 'homepage.key'} does not match the certificate in" in warning
    (staged / "homepage-chain.crt").replace(pki / "homepage-chain.crt")
    assert files.current().serial != first.serial


def test_unchanged_files_are_not_loaded_again_and_a_touched_set_is(pki: Path) -> None:
    files = identity_files(pki)
    first = files.current()
    assert files.current() is first  # one stat per file, no parse, while nothing changes

    os.utime(pki / "root.crt")  # rewritten in place with the same bytes: a new mtime
    again = files.current()
    assert again is not first
    assert again.serial == first.serial


def test_a_key_removed_mid_rotation_keeps_the_old_identity_with_one_warning(
    pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = identity_files(pki)
    first = files.current()
    key = (pki / "homepage.key").read_bytes()
    (pki / "homepage.key").unlink()  # a deploy that removes, then writes: not atomic
    with caplog.at_level(logging.WARNING, logger="mtls.client"):
        assert [files.current(), files.current()] == [first, first]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"{pki / 'homepage.key'} does not exist or is not a file" in warning

    (pki / "homepage.key").write_bytes(key)
    assert files.current().serial == first.serial
    assert files.current() is not first


THREADS = 4
ROTATIONS = 4


def test_four_threads_see_no_failed_request_while_the_certificate_is_renewed_again_and_again(
    echo: Server, pki: Path
) -> None:
    failures: list[str] = []
    seen: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def loop(session: MtlsSession) -> None:
        for n in range(2000):  # bounded: the test stops the loop long before
            if stop.is_set():
                return
            try:
                # Every third request closes its connection: new connections all along.
                response = session.get(echo.url, headers=CLOSE if n % 3 == 0 else {})
                serial = serial_of(response)
            except (requests.RequestException, AssertionError) as exc:
                with lock:
                    failures.append(repr(exc))
            else:
                with lock:
                    seen.add(serial)

    def presented(serial: int) -> bool:
        with lock:
            return serial in seen

    renewed = [first_serial(pki)]
    with make_session(client_settings(pki, pool_maxsize=THREADS)) as session:
        threads = [threading.Thread(target=loop, args=(session,)) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(ROTATIONS):
                deadline = time.monotonic() + 20
                while not presented(renewed[-1]) and time.monotonic() < deadline:
                    time.sleep(0.05)  # polls what the threads record, no fixed wait
                renewed.append(renew(pki).serial_number)
            deadline = time.monotonic() + 20
            while not presented(renewed[-1]) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    assert failures == []
    assert set(renewed) <= seen
