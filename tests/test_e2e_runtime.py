"""The mTLS runtime end to end: real gunicorn, real handshakes, real openssl/curl.

The app is tests/echo_app.py, which answers with what the worker put in the
environ; the services' own end-to-end tests are in test_e2e_services.py.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import authority, keys
from pki import cli as pki_cli
from tests.clients import get, presented_serial
from tests.foreign_cas import foreign_intermediate, server_leaf_under, write_server_files
from tests.pkifiles import load_issued, write_issued
from tests.servers import (
    ECHO,
    ROOT,
    Server,
    client_context,
    free_port,
    gunicorn_command,
    running,
    server_env,
)
from tests.tools import require_tool


@pytest.fixture
def echo(demo_pki: Path, tmp_path: Path) -> Iterator[Server]:
    env = server_env(demo_pki, "userservice", MTLS_CRLFILE=str(demo_pki / "crl.pem"))
    with running(ECHO, env, tmp_path / "echo.log", client_context(demo_pki, "homepage")) as server:
        yield server


def openssl_field(cert: Path, *args: str) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return out.split("=", 1)[1] if "=" in out else out


def test_environ_carries_the_client_identity_as_openssl_prints_it(
    echo: Server, demo_pki: Path
) -> None:
    require_tool("openssl")
    environ, _ = get(echo, client_context(demo_pki, "homepage"))
    cert = demo_pki / "homepage.crt"
    assert environ["HTTPS"] == "on"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert environ["SSL_CLIENT_S_DN"] == openssl_field(cert, "-subject", "-nameopt", "RFC2253")
    assert environ["SSL_CLIENT_S_DN"] == "CN=homepage.internal,OU=Services,O=Example"
    assert environ["SSL_CLIENT_I_DN"] == openssl_field(cert, "-issuer", "-nameopt", "RFC2253")
    assert environ["SSL_CLIENT_S_DN_CN"] == "homepage.internal"
    assert environ["SSL_CLIENT_S_DN_OU"] == "Services"
    assert environ["SSL_CLIENT_M_SERIAL"] == openssl_field(cert, "-serial")
    assert environ["SSL_CLIENT_V_START"] == openssl_field(cert, "-startdate")
    assert environ["SSL_CLIENT_V_END"] == openssl_field(cert, "-enddate")
    assert environ["SSL_CLIENT_SAN_DNS_0"] == "homepage.internal"
    assert environ["SSL_CLIENT_CERT"].startswith("-----BEGIN CERTIFICATE-----")
    assert environ["SSL_PROTOCOL"] == "TLSv1.3"
    assert environ["SSL_TLS_SNI"] == "localhost"
    assert environ["SSL_SESSION_RESUMED"] == "Initial"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["peer_subject"] == "CN=homepage.internal,OU=Services,O=Example"


def test_access_log_shows_the_client_dn(echo: Server, demo_pki: Path) -> None:
    get(echo, client_context(demo_pki, "homepage"), "/logged")
    echo.wait_for_log('"GET /logged HTTP/1.1" 200')
    line = next(li for li in echo.log().splitlines() if "GET /logged" in li)
    assert 'dn="CN=homepage.internal,OU=Services,O=Example"' in line


def test_sessions_resume_across_workers_and_say_so(echo: Server, demo_pki: Path) -> None:
    ctx = client_context(demo_pki, "homepage")
    first, session = get(echo, ctx)
    resumed_by: set[int] = set()
    for _ in range(40):  # two workers: the kernel spreads these over both
        environ, session = get(echo, ctx, session=session)
        assert environ["SSL_SESSION_RESUMED"] == "Resumed"
        assert environ["SSL_CLIENT_S_DN"] == "CN=homepage.internal,OU=Services,O=Example"
        resumed_by.add(int(environ["worker_pid"]))
    # Sessions issued by one worker were resumed by the other: one ticket key.
    assert len(resumed_by | {int(first["worker_pid"])}) == 2


def test_server_sends_close_notify_before_closing(echo: Server, demo_pki: Path) -> None:
    # With suppress_ragged_eofs=False, a close without close_notify raises SSLEOFError.
    environ, _ = get(echo, client_context(demo_pki, "homepage"), suppress_ragged_eofs=False)
    assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS"


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        (None, "no_cert (no client certificate)"),
        ("rogue", "unknown_ca ('CN=homepage.internal,OU=Services,O=Example' is issued by"),
    ],
)
def test_refused_handshakes_are_logged_once_with_peer_and_reason(
    echo: Server, demo_pki: Path, client: str | None, reason: str
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        get(echo, client_context(demo_pki, client))
    log = echo.wait_for_log(f"reason={reason}")
    assert "mTLS handshake refused: peer=127.0.0.1:" in log


def test_plaintext_http_gets_no_http_answer_and_is_logged(echo: Server) -> None:
    with socket.create_connection((echo.host, echo.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            answer = s.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/")
    echo.wait_for_log("reason=plaintext (plaintext HTTP on the TLS port)")


def test_tls_1_1_is_refused(echo: Server) -> None:
    require_tool("openssl")
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"{echo.host}:{echo.port}", "-tls1_1", "-brief"],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode != 0
    assert "Protocol  version: TLSv1.1" not in proc.stdout + proc.stderr
    echo.wait_for_log("reason=bad_version")


def test_renegotiation_is_refused(echo: Server, demo_pki: Path) -> None:
    require_tool("openssl")
    # TLS 1.2 (1.3 has no renegotiation); `R` asks s_client to renegotiate.
    chain = str(demo_pki / "homepage-chain.crt")
    proc = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"{echo.host}:{echo.port}",
            "-tls1_2",
            "-cert",
            chain,
            "-cert_chain",
            chain,
            "-key",
            str(demo_pki / "homepage.key"),
            "-CAfile",
            str(demo_pki / "root.crt"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        seen = []
        for line in proc.stdout:  # bounded: s_client prints ~60 lines, then waits for stdin
            seen.append(line)
            if "Verify return code: 0" in line or len(seen) > 500:
                break
        assert any("Verify return code: 0" in li for li in seen), "".join(seen)
        proc.stdin.write("R\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "RENEGOTIATING" in out
    assert "no renegotiation" in out


def test_idle_connections_cannot_starve_the_request_threads(demo_pki: Path, tmp_path: Path) -> None:
    env = server_env(
        demo_pki,
        "userservice",
        MTLS_HANDSHAKE_TIMEOUT="2",
        GUNICORN_CMD_ARGS="--workers 1 --threads 2",
    )
    ctx = client_context(demo_pki, "homepage")
    with running(ECHO, env, tmp_path / "idle.log", ctx) as server:
        idle = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(64)]
        try:
            # Stock gunicorn hands each of these to one of its 2 threads and
            # blocks in the handshake; here a real client is served at once.
            assert first_response_byte(server, ctx, timeout=3) == b"H"
            environ, _ = get(server, ctx)
            assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS"
            # ...and the idle ones are closed once the handshake timeout passes.
            for s in idle:
                assert s.recv(1) == b""
        finally:
            for s in idle:
                s.close()
        server.wait_for_log("reason=timeout (TLS handshake not completed within 2s)")


def first_response_byte(server: Server, ctx: ssl.SSLContext, *, timeout: float) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return tls.recv(1)


def test_stock_gunicorn_is_starved_by_the_same_idle_connections(
    demo_pki: Path, tmp_path: Path
) -> None:
    """The baseline the test above could have failed against: gunicorn's own gthread + ssl."""
    env = server_env(demo_pki, "userservice", GUNICORN_CMD_ARGS="--workers 1 --threads 2")
    stock_ssl = (
        "--worker-class", "gthread", "--certfile", env["MTLS_CERTFILE"],
        "--keyfile", env["MTLS_KEYFILE"], "--ca-certs", env["MTLS_CA_CERTS"], "--cert-reqs", "2",
    )  # fmt: skip
    ctx = client_context(demo_pki, "homepage")
    with running(
        ECHO, {**env, "MTLS_CERTFILE": ""}, tmp_path / "stock.log", ctx,
        args=stock_ssl, config=ROOT / "bench" / "stock_conf.py",
    ) as server:  # fmt: skip
        idle = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(64)]
        try:
            # The handshake waits behind 64 idle sockets, each holding a thread.
            with pytest.raises(TimeoutError):
                first_response_byte(server, ctx, timeout=3)
        finally:
            for s in idle:
                s.close()


def test_revoked_client_is_refused_once_the_crl_lists_it(demo_pki: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(demo_pki, pki)
    assert (
        pki_cli.main(["revoke", "eventservice", "--dir", str(pki), "--reason", "keyCompromise"])
        == 0
    )
    env = server_env(pki, "userservice", MTLS_CRLFILE=str(pki / "crl.pem"))
    with running(ECHO, env, tmp_path / "crl.log", client_context(pki, "homepage")) as server:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            get(server, client_context(pki, "eventservice"))
        server.wait_for_log("reason=revoked (")
        environ, _ = get(server, client_context(pki, "homepage"))
        assert environ["SSL_CLIENT_S_DN_CN"] == "homepage.internal"


def test_optional_client_auth_lets_browsers_in_without_identity(
    demo_pki: Path, tmp_path: Path
) -> None:
    env = server_env(demo_pki, "homepage", MTLS_CLIENT_AUTH="optional")
    with running(ECHO, env, tmp_path / "opt.log", client_context(demo_pki, None)) as server:
        environ, _ = get(server, client_context(demo_pki, None))
        assert environ["SSL_CLIENT_VERIFY"] == "NONE"
        assert "SSL_CLIENT_S_DN" not in environ
        environ, _ = get(server, client_context(demo_pki, "ops"))
        assert environ["SSL_CLIENT_S_DN"] == "CN=ops.internal,OU=Operators,O=Example"


def run_gunicorn_expecting_failure(env: dict[str, str], tmp_path: Path, *args: str) -> str:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith(("MTLS_", "GUNICORN"))}
    full.update(env)
    proc = subprocess.run(
        gunicorn_command(ECHO, f"127.0.0.1:{free_port()}", *args),
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc.stderr + proc.stdout


def test_gunicorn_refuses_to_start_with_a_mismatched_key(demo_pki: Path, tmp_path: Path) -> None:
    env = server_env(demo_pki, "userservice")
    env["MTLS_KEYFILE"] = str(demo_pki / "homepage.key")
    output = run_gunicorn_expecting_failure(env, tmp_path)
    assert "Error: the server's TLS files cannot be used:" in output
    assert "homepage.key does not match the certificate in" in output
    assert "Traceback" not in output


def test_gunicorn_refuses_to_start_with_a_ca_false_intermediate_in_its_chain(
    demo_pki: Path, tmp_path: Path
) -> None:
    # Before mtls.x509rules this started, and every client then failed (curl 60).
    root = load_issued(demo_pki, "root")
    fake = foreign_intermediate(root, ca=False)
    chain, key = write_server_files(tmp_path, server_leaf_under(fake))
    env = server_env(demo_pki, "userservice", MTLS_CERTFILE=str(chain), MTLS_KEYFILE=str(key))
    output = run_gunicorn_expecting_failure(env, tmp_path)
    assert "Error: the server's TLS files cannot be used:" in output
    assert (
        f"'CN=Foreign Intermediate,O=Example' in {chain} is not a CA (CA:FALSE), yet it issued "
        "'CN=foreign.internal,OU=Services,O=Example'"
    ) in output
    assert "Traceback" not in output


def test_gunicorn_refuses_to_start_with_an_expired_certificate(
    demo_pki: Path, tmp_path: Path
) -> None:
    import datetime

    issuer = load_issued(demo_pki, "global")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    leaf = authority.build_leaf(
        issuer,
        name=authority.make_name("old.internal"),
        profile="server",
        dns=["localhost"],
        now=past,
        days=1,
    )
    chain, key = write_issued(tmp_path, "old", leaf)
    env = server_env(demo_pki, "userservice", MTLS_CERTFILE=str(chain), MTLS_KEYFILE=str(key))
    output = run_gunicorn_expecting_failure(env, tmp_path)
    assert "old-chain.crt (CN=old.internal,O=Example) expired on" in output


def test_gunicorn_refuses_a_worker_class_that_would_drop_the_identity(
    demo_pki: Path, tmp_path: Path
) -> None:
    env = server_env(demo_pki, "userservice")
    output = run_gunicorn_expecting_failure(env, tmp_path, "--worker-class", "gthread")
    assert "not mtls.worker.MtlsWorker: client identity would never reach the app" in output


def test_gunicorn_refuses_bad_settings_naming_each_variable(demo_pki: Path, tmp_path: Path) -> None:
    env = server_env(demo_pki, "userservice", MTLS_CLIENT_AUTH="maybe", MTLS_MIN_VERSION="SSLv3")
    output = run_gunicorn_expecting_failure(env, tmp_path)
    assert "MTLS_CLIENT_AUTH='maybe' is not one of required, optional" in output
    assert "MTLS_MIN_VERSION='SSLv3' is not one of TLSv1.2, TLSv1.3" in output


def rotate(pki: Path, directory: Path) -> x509.Certificate:
    """Issue a new userservice cert and swap key then cert in with atomic renames."""
    issuer = load_issued(pki, "global")
    leaf = authority.build_leaf(
        issuer,
        name=authority.make_name("userservice.internal", ou="Services"),
        profile="server",
        dns=["localhost", "userservice.internal"],
    )
    staging = directory / "staging"
    staging.mkdir(exist_ok=True)
    chain, key = write_issued(staging, "userservice", leaf)
    key.replace(pki / "userservice.key")  # the window stock gunicorn fails in
    time.sleep(0.3)
    chain.replace(pki / "userservice-chain.crt")
    return leaf.cert


def test_rotating_cert_and_key_under_load_fails_no_request(demo_pki: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(demo_pki, pki)
    env = server_env(pki, "userservice", MTLS_RELOAD_INTERVAL="0.2")
    ctx = client_context(pki, "homepage")
    with running(ECHO, env, tmp_path / "rotate.log", ctx) as server:
        old_serial = presented_serial(server, ctx)
        failures: list[str] = []
        done = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal done
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and done < 5000:
                try:
                    get(server, ctx)
                    done += 1
                except (OSError, ssl.SSLError, AssertionError) as e:
                    failures.append(repr(e))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1)
            new_cert = rotate(pki, tmp_path)
            server.wait_for_log("mTLS reloaded in place", timeout=20)
            deadline = time.monotonic() + 20
            while (
                presented_serial(server, ctx) != new_cert.serial_number
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            time.sleep(1)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert presented_serial(server, ctx) == new_cert.serial_number != old_serial
        assert done > 50
        assert failures == []
        # Swapped into the running workers: none was replaced (issue 12).
        assert server.log().count("Booting worker with pid") == 2


def test_half_rotated_files_keep_the_old_context_and_say_why(
    demo_pki: Path, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(demo_pki, pki)
    env = server_env(pki, "userservice", MTLS_RELOAD_INTERVAL="0.2")
    ctx = client_context(pki, "homepage")
    with running(ECHO, env, tmp_path / "half.log", ctx) as server:
        old_serial = presented_serial(server, ctx)
        new_key = keys.generate_key()
        staged = tmp_path / "new.key"
        staged.write_bytes(
            new_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        staged.replace(pki / "userservice.key")
        server.wait_for_log("TLS reload refused, keeping the previous certificates", timeout=20)
        assert "userservice.key does not match the certificate" in server.log()
        assert presented_serial(server, ctx) == old_serial
        environ, _ = get(server, ctx)
        assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS"


def test_sighup_swaps_in_rotated_files_at_once(demo_pki: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(demo_pki, pki)
    env = server_env(pki, "userservice", MTLS_RELOAD_INTERVAL="0")  # no watcher: SIGHUP only
    ctx = client_context(pki, "homepage")
    with running(ECHO, env, tmp_path / "hup.log", ctx) as server:
        new_cert = rotate(pki, tmp_path)
        assert presented_serial(server, ctx) != new_cert.serial_number
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("mTLS reloaded", timeout=20)
        deadline = time.monotonic() + 20
        while (
            presented_serial(server, ctx) != new_cert.serial_number and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert presented_serial(server, ctx) == new_cert.serial_number


def test_revoking_a_client_also_ends_its_resumable_sessions(demo_pki: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(demo_pki, pki)
    env = server_env(
        pki, "userservice", MTLS_CRLFILE=str(pki / "crl.pem"), MTLS_RELOAD_INTERVAL="0.2"
    )
    ctx = client_context(pki, "homepage")
    with running(ECHO, env, tmp_path / "resume.log", ctx) as server:
        _, session = get(server, ctx)
        environ, session = get(server, ctx, session=session)
        assert environ["SSL_SESSION_RESUMED"] == "Resumed"
        assert pki_cli.main(["revoke", "homepage", "--dir", str(pki)]) == 0
        server.wait_for_log("new connections get cert serial", timeout=20, count=2)  # 2 workers
        # The CRL is swapped into the running worker, whose session-ticket
        # key stays: OpenSSL resumes the session, our re-check refuses it.
        with socket.create_connection((server.host, server.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                assert tls.session_reused
                tls.sendall(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
                with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                    assert tls.recv(65536) == b""  # closed, not answered
        server.wait_for_log("reason=revoked (resumed session for a revoked certificate)")


def test_clients_that_reset_before_the_handshake_cannot_kill_a_worker(
    echo: Server, demo_pki: Path
) -> None:
    for _ in range(30):  # RST right after connect: wrap_socket meets ENOTCONN
        s = socket.create_connection((echo.host, echo.port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    environ, _ = get(echo, client_context(demo_pki, "homepage"))
    assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS"
    log = echo.log()
    assert "Exception in worker process" not in log
    assert "Traceback" not in log


def test_clients_that_never_close_do_not_stall_new_handshakes(
    demo_pki: Path, tmp_path: Path
) -> None:
    env = server_env(demo_pki, "userservice", GUNICORN_CMD_ARGS="--workers 1 --threads 4")
    ctx = client_context(demo_pki, "homepage")
    with running(ECHO, env, tmp_path / "linger.log", ctx) as server:
        lingering = []
        try:
            for _ in range(10):
                raw = socket.create_connection((server.host, server.port), timeout=10)
                lingering.append(ctx.wrap_socket(raw, server_hostname="localhost"))
            for tls in lingering:  # each asks the server to close, then never closes itself
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            for tls in lingering:
                assert tls.recv(12).startswith(b"HTTP/1.1 200")
            # gunicorn's inline close_graceful would hold the loop ~2 s per socket.
            assert first_response_byte(server, ctx, timeout=3) == b"H"
        finally:
            for tls in lingering:
                tls.close()
