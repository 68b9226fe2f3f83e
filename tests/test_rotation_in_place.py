"""Server rotation that restarts nothing (issue 12, item 2).

Changed TLS files are swapped into the running workers: the master
validates them and hands the bytes over (mtls.statechannel), each worker
builds its context again and its listener context moves every new handshake
onto it (mtls.tls.ListenerContexts). The pure parts first, then OpenSSL's
part in-process over real sockets, then gunicorn end to end.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from mtls.serverstate import TlsState, load_tls_state, needs_new_workers
from mtls.settings import ServerSettings
from mtls.statechannel import StateChannel, TooLarge
from mtls.tls import ListenerContexts
from pki import cli as pki_cli
from tests.clients import LoopbackHTTPS, get, presented_serial
from tests.servers import ECHO, Server, client_context, running, server_env, worker_pids

# -- the channel (pure) --------------------------------------------------------


def test_the_channel_hands_over_exactly_the_published_bytes() -> None:
    channel = StateChannel(capacity=4096)
    assert channel.generation == 0
    assert channel.read() == (0, ())
    assert channel.publish([b"chain", b"", b"key" * 10]) == 1
    assert channel.read() == (1, (b"chain", b"", b"key" * 10))
    assert channel.publish([b"shorter"]) == 2
    assert channel.generation == 2
    assert channel.read() == (2, (b"shorter",))


def test_a_set_too_large_for_the_channel_is_refused_and_the_last_one_kept() -> None:
    channel = StateChannel(capacity=256)
    channel.publish([b"small"])
    with pytest.raises(TooLarge, match=r"the TLS files take 1,052 bytes, more than the 256"):
        channel.publish([b"x" * 1024])
    assert channel.read() == (1, (b"small",))


# -- which changes can be swapped in (pure, real files) ------------------------


def settings(pki: Path, **extra: str) -> ServerSettings:
    return ServerSettings.from_env(
        {
            "MTLS_CERTFILE": str(pki / "userservice-chain.crt"),
            "MTLS_KEYFILE": str(pki / "userservice.key"),
            "MTLS_CA_CERTS": str(pki / "root.crt"),
            "MTLS_CRLFILE": str(pki / "crl.pem"),
            **extra,
        }
    )


@pytest.fixture
def pki(demo_pki: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pki"
    shutil.copytree(demo_pki, copy)
    return copy


def state(pki: Path, **extra: str) -> TlsState:
    return load_tls_state(settings(pki, **extra))


def test_a_renewed_certificate_a_new_key_and_a_new_crl_swap_in_place(pki: Path) -> None:
    old = state(pki)
    assert pki_cli.main(["renew", "userservice", "--dir", str(pki), "--new-key"]) == 0
    assert pki_cli.main(["revoke", "eventservice", "--dir", str(pki)]) == 0
    new = state(pki)
    assert new.leaf.serial_number != old.leaf.serial_number
    assert new.revoked_serials != old.revoked_serials
    assert needs_new_workers(old, new) is None


def test_a_changed_trust_bundle_needs_new_workers_even_one_that_only_grew(pki: Path) -> None:
    old = state(pki)
    bundle = pki / "root.crt"
    bundle.write_bytes(bundle.read_bytes() + (pki / "rogue-ca.crt").read_bytes())
    why = needs_new_workers(old, state(pki))
    assert why is not None
    assert f"{bundle} changed: sessions verified against the old trust bundle" in why


def test_changed_settings_need_new_workers(pki: Path) -> None:
    why = needs_new_workers(state(pki), state(pki, MTLS_MIN_VERSION="TLSv1.3"))
    assert why == "the settings changed"


# -- the listener context (OpenSSL, in-process) --------------------------------


def handshake(listener: ListenerContexts, client: ssl.SSLContext, **kw: object) -> ssl.SSLSocket:
    """One real handshake over a socket pair: the server side in a thread."""
    ours, theirs = socket.socketpair()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            with listener.session.wrap_socket(ours, server_side=True) as tls:
                tls.sendall(b"x")
                tls.recv(1)
        except (ssl.SSLError, OSError) as e:
            failure.append(e)

    thread = threading.Thread(target=serve)
    thread.start()
    tls = client.wrap_socket(
        theirs,
        server_hostname="localhost",
        do_handshake_on_connect=False,
        **kw,  # type: ignore[arg-type]
    )
    try:
        tls.do_handshake()
        tls.recv(1)
        tls.sendall(b"x")
    except BaseException:
        tls.close()
        raise
    finally:
        thread.join(10)
        ours.close()
    return tls


def test_every_handshake_moves_to_the_current_context_and_old_sessions_resume(
    pki: Path,
) -> None:
    first = state(pki)
    listener = ListenerContexts(first.settings, first.context)
    client = client_context(pki, "homepage")
    with handshake(listener, client) as tls:
        session = tls.session
        assert serial(tls) == first.leaf.serial_number
    assert pki_cli.main(["renew", "userservice", "--dir", str(pki), "--new-key"]) == 0
    second = state(pki)
    listener.current = second.context
    with handshake(listener, client) as tls:
        assert serial(tls) == second.leaf.serial_number
    # The ticket key is the listener context's: a session from before resumes.
    with handshake(listener, client, session=session) as tls:
        assert tls.session_reused


def test_a_handshake_left_on_the_listener_context_fails_closed(pki: Path) -> None:
    first = state(pki)
    listener = ListenerContexts(first.settings, first.context)
    listener.current = listener.session  # as if nothing had moved it
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        handshake(listener, client_context(pki, "homepage"))


def test_the_new_trust_store_judges_client_certificates_after_a_swap(
    pki: Path, tmp_path: Path
) -> None:
    first = state(pki)
    listener = ListenerContexts(first.settings, first.context)
    other = tmp_path / "other"  # another CA altogether
    assert pki_cli.main(["demo", "--dir", str(other)]) == 0
    listener.current = state(other).context
    with handshake(listener, client_context(other, "homepage")) as tls:
        assert tls.version()
    # Our homepage certificate, trusting the other root for the server: the
    # server now trusts only the other root, and refuses it.
    client = client_context(pki, "homepage")
    client.load_verify_locations(other / "root.crt")
    with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
        with handshake(listener, client):
            pass


def serial(tls: ssl.SSLSocket) -> int:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# -- gunicorn, end to end --------------------------------------------------------

SWAPPED = "new connections get cert serial"  # each worker's line once it swapped


def booted(server: Server) -> int:
    return server.log().count("Booting worker with pid")


def test_a_renewed_certificate_reaches_the_running_workers_without_restarting_them(
    pki: Path, tmp_path: Path
) -> None:
    env = server_env(
        pki, "userservice", MTLS_CRLFILE=str(pki / "crl.pem"), MTLS_RELOAD_INTERVAL="0.2"
    )
    ctx = client_context(pki, "homepage")
    with running(ECHO, env, tmp_path / "swap.log", ctx) as server:
        server.wait_for_log("Booting worker with pid", count=2)
        pids = worker_pids(server.process.pid)
        assert len(pids) == 2
        _, session = get(server, ctx)
        kept = LoopbackHTTPS(server, ctx)  # a kept-alive connection from before
        kept.request("GET", "/")
        first = kept.getresponse()
        first.read()
        assert first.getheader("Connection") != "close"

        assert pki_cli.main(["renew", "userservice", "--dir", str(pki), "--new-key"]) == 0
        new = x509.load_pem_x509_certificate((pki / "userservice.crt").read_bytes())
        server.wait_for_log(SWAPPED, timeout=20, count=2)

        # Every new connection, to either worker, gets the new certificate.
        assert {presented_serial(server, ctx) for _ in range(10)} == {new.serial_number}
        # A session from before resumes: the ticket key did not change.
        environ, _ = get(server, ctx, session=session)
        assert environ["SSL_SESSION_RESUMED"] == "Resumed"
        # The connection opened before is answered, and then closed: it was
        # served the old certificate, which must not outlive it.
        kept.request("GET", "/")
        last = kept.getresponse()
        assert last.status == 200
        assert json.loads(last.read())["SSL_CLIENT_VERIFY"] == "SUCCESS"
        assert last.getheader("Connection") == "close"
        kept.close()
        # Nothing restarted: the same worker processes, no app imported again.
        assert worker_pids(server.process.pid) == pids
        assert booted(server) == 2
        assert "mTLS reloaded in place (generation 1)" in server.log()
        # A worker forked after the swap (this one replaces a killed one)
        # starts on the new state and shares the ticket key.
        os.kill(pids.pop(), signal.SIGKILL)
        server.wait_for_log("Booting worker with pid", count=3, timeout=30)
        assert {presented_serial(server, ctx) for _ in range(10)} == {new.serial_number}
        for _ in range(4):
            environ, _ = get(server, ctx, session=session)
            assert environ["SSL_SESSION_RESUMED"] == "Resumed"


def test_once_the_master_says_reloaded_no_new_connection_gets_the_old_certificate(
    pki: Path, tmp_path: Path
) -> None:
    """An idle worker sleeps up to a second in its poller; what wakes it gets the new set.

    On the old code, a worker woken by a connection after the master
    published handed that connection the replaced certificate (it looked at
    the channel only after the turn's events), so one old serial showed up
    among new ones for up to a second.
    """
    env = server_env(pki, "userservice", MTLS_RELOAD_INTERVAL="0.2")
    ctx = client_context(pki, "homepage")
    with running(ECHO, env, tmp_path / "wake.log", ctx) as server:
        server.wait_for_log("Booting worker with pid", count=2)
        for rotation in range(1, 4):
            # Both workers idle in their pollers, the last reload long picked up.
            server.wait_for_log(SWAPPED, timeout=20, count=2 * (rotation - 1))
            time.sleep(0.3)  # nothing to wait for: the workers must be asleep
            assert pki_cli.main(["renew", "userservice", "--dir", str(pki)]) == 0
            new = x509.load_pem_x509_certificate((pki / "userservice.crt").read_bytes())
            server.wait_for_log(f"mTLS reloaded in place (generation {rotation})", timeout=20)
            seen = [presented_serial(server, ctx) for _ in range(4)]
            assert seen == [new.serial_number] * 4, f"rotation {rotation}: {seen}"


def test_a_changed_trust_bundle_replaces_the_workers_and_ends_every_old_session(
    pki: Path, tmp_path: Path
) -> None:
    env = server_env(pki, "userservice", MTLS_RELOAD_INTERVAL="0.2")
    ctx = client_context(pki, "homepage")
    with running(ECHO, env, tmp_path / "trust.log", ctx) as server:
        server.wait_for_log("Booting worker with pid", count=2)
        old = worker_pids(server.process.pid)
        _, session = get(server, ctx)
        bundle = pki / "root.crt"
        staged = tmp_path / "bundle.crt"
        staged.write_bytes(bundle.read_bytes() + (pki / "rogue-ca.crt").read_bytes())
        staged.replace(bundle)
        server.wait_for_log("mTLS: replacing the workers for the new TLS files", timeout=20)
        deadline = time.monotonic() + 30
        while worker_pids(server.process.pid) & old and time.monotonic() < deadline:
            time.sleep(0.1)  # the old workers finish what they hold, then exit
        assert not worker_pids(server.process.pid) & old
        # New workers, a new listener context, a new ticket key: the old
        # session, verified against the old bundle, cannot resume.
        environ, _ = get(server, ctx, session=session)
        assert environ["SSL_SESSION_RESUMED"] == "Initial"
        assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS"


def test_a_worker_out_of_descriptors_at_a_swap_keeps_running_and_swaps_later(
    pki: Path, tmp_path: Path
) -> None:
    """EMFILE while a worker loads the new files must not end it (it did: OSError from
    murder_pending), only delay its swap until descriptors are free again."""
    env = server_env(
        pki,
        "userservice",
        MTLS_RELOAD_INTERVAL="0.2",
        MTLS_HANDSHAKE_TIMEOUT="60",
        GUNICORN_CMD_ARGS="--workers 1 --threads 2",
    )
    ctx = client_context(pki, "homepage")
    with running(ECHO, env, tmp_path / "emfile.log", ctx) as server:
        server.wait_for_log("Booting worker with pid", count=1)
        (pid,) = worker_pids(server.process.pid)
        held = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (held + 8, held + 8))
        silent = [socket.create_connection((server.host, server.port)) for _ in range(12)]
        try:
            server.wait_for_log("out of file descriptors", timeout=20)
            assert pki_cli.main(["renew", "userservice", "--dir", str(pki), "--new-key"]) == 0
            server.wait_for_log("cannot be loaded yet", timeout=20)
        finally:
            for sock in silent:
                sock.close()
        server.wait_for_log(SWAPPED, timeout=20)
        new = x509.load_pem_x509_certificate((pki / "userservice.crt").read_bytes())
        assert presented_serial(server, ctx) == new.serial_number
        assert worker_pids(server.process.pid) == {pid}
        assert booted(server) == 1
