"""Whoever writes the CRL file must not gain trust from it, nor take the server down.

Real gunicorn (tests/echo_app.py behind the mTLS worker), real handshakes.
The CRL is public data that a scheduled job refreshes, often over plain
http: each case swaps in a hostile or broken file, waits for the reload to
be attempted (the refusal in the log), then proves the server still serves
the old state: the attacker's client is refused at the handshake, the
legitimate one still gets its answer.
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from pki import authority
from pki import cli as pki_cli
from tests.pkifiles import (
    attacker_root,
    crl_pem,
    hidden,
    load_issued,
    write_issued,
)
from tests.servers import ECHO, Server, client_context, running, server_env, start_gunicorn

REFUSED = "TLS reload refused, keeping the previous certificates"
HOMEPAGE_DN = "CN=homepage.internal,OU=Services,O=Example"


def whoami(server: Server, ctx: ssl.SSLContext) -> dict[str, Any]:
    """GET /whoami over a fresh connection; the echo app answers with the TLS environ."""
    conn = http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/whoami")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def refused(server: Server, ctx: ssl.SSLContext) -> bool:
    try:
        whoami(server, ctx)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


def assert_always_refused(server: Server, ctx: ssl.SSLContext) -> None:
    """Refused again and again: a reload swaps workers, so one refusal could be an old one's."""
    for _ in range(20):
        assert refused(server, ctx), "the client was let in"


def wait_for_any(server: Server, *needles: str, timeout: float = 20.0) -> str:
    """The first of ``needles`` to appear in the log (polled, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        seen = [n for n in needles if n in log]
        if seen:
            return seen[0]
        time.sleep(0.05)
    raise AssertionError(f"none of {needles} in the server log within {timeout}s:\n{server.log()}")


def swap_in(target: Path, content: bytes) -> None:
    """Replace ``target`` the way a fetch job does: write beside it, then rename over it."""
    staged = target.with_name(target.name + ".new")
    staged.write_bytes(content)
    staged.replace(target)


@pytest.fixture
def pki(demo_pki: Path, tmp_path: Path) -> Path:
    """A private copy of the demo PKI, free to be revoked in and swapped around."""
    pki = tmp_path / "pki"
    shutil.copytree(demo_pki, pki)
    return pki


@pytest.fixture
def attacker(pki: Path) -> authority.Issued:
    """The attacker's own root; pki/attacker-chain.crt carries the Home Page's DN under it."""
    root = attacker_root()
    leaf = authority.build_leaf(
        root, name=authority.make_name("homepage.internal", ou="Services"), profile="client"
    )
    write_issued(pki, "attacker", leaf)
    return root


@pytest.fixture
def server(pki: Path, tmp_path: Path) -> Iterator[Server]:
    env = server_env(
        pki,
        "userservice",
        MTLS_CRLFILE=str(pki / "crl.pem"),
        MTLS_RELOAD_INTERVAL="0.2",
        GUNICORN_CMD_ARGS="--workers 1 --threads 4",
    )
    with running(ECHO, env, tmp_path / "server.log", client_context(pki, "homepage")) as server:
        yield server
        log = server.log()
        assert server.process.poll() is None, log  # the master never went down
        assert "Unhandled exception" not in log
        assert "Traceback" not in log


def test_certificate_hidden_in_a_swapped_crl_file_never_becomes_trusted(
    server: Server, pki: Path, attacker: authority.Issued
) -> None:
    homepage, rogue = client_context(pki, "homepage"), client_context(pki, "attacker")
    assert refused(server, rogue)
    legit = (pki / "crl.pem").read_bytes()
    attacker_pem = attacker.cert.public_bytes(serialization.Encoding.PEM)
    swap_in(pki / "crl.pem", legit + hidden(attacker_pem) + hidden(crl_pem(attacker)))
    outcome = wait_for_any(server, REFUSED, "mTLS reloaded")
    assert_always_refused(server, rogue)
    assert outcome == REFUSED
    line = next(li for li in server.log().splitlines() if REFUSED in li)
    assert f"{pki / 'crl.pem'}, line " in line
    assert "holds a CERTIFICATE block; ssl would trust a certificate there as a CA" in line
    assert (
        "the CRL from 'CN=Attacker Root CA,O=Example' is not signed by a CA of this chain" in line
    )
    environ = whoami(server, homepage)
    assert environ["SSL_CLIENT_S_DN"] == HOMEPAGE_DN
    assert environ["SSL_CLIENT_I_DN"] == "CN=Example Global CA,O=Example"


def test_gunicorn_refuses_to_start_with_a_certificate_hidden_in_the_crl_file(
    pki: Path, tmp_path: Path, attacker: authority.Issued
) -> None:
    crl_file = pki / "crl.pem"
    attacker_pem = attacker.cert.public_bytes(serialization.Encoding.PEM)
    crl_file.write_bytes(crl_file.read_bytes() + hidden(attacker_pem))
    env = server_env(pki, "userservice", MTLS_CRLFILE=str(crl_file))
    server = start_gunicorn(ECHO, env, tmp_path / "start.log")
    try:
        returncode = server.process.wait(timeout=60)
    finally:
        server.stop()
    output = server.log()
    assert returncode != 0, output
    assert "Error: the server's TLS files cannot be used:" in output
    assert f"{crl_file}, line " in output
    assert "holds a CERTIFICATE block" in output
    assert "Traceback" not in output


def test_broken_crl_files_keep_the_master_up_and_the_old_state(server: Server, pki: Path) -> None:
    homepage = client_context(pki, "homepage")
    crl_file = pki / "crl.pem"
    legit = crl_file.read_bytes()
    # A junk CERTIFICATE block that only OpenSSL saw: it raised ssl.SSLError
    # in the master's reload, which took master and workers down.
    junk = b"-----BEGIN CERTIFICATE----- \nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    booted = server.log().count("Booting worker with pid")
    swap_in(crl_file, legit + junk)
    server.wait_for_log(REFUSED)
    assert whoami(server, homepage)["SSL_CLIENT_S_DN"] == HOMEPAGE_DN
    # Rewritten in place (not by rename), read while half written.
    newer = crl_pem(load_issued(pki, "global"), number=1000)
    with crl_file.open("r+b") as f:
        f.truncate(0)
        f.write(newer[: len(newer) // 2])
    server.wait_for_log("crl.pem, line 1: a X509 CRL block with no END line")
    assert whoami(server, homepage)["SSL_CLIENT_S_DN"] == HOMEPAGE_DN
    # Refused sets recycle no worker: whoever writes the CRL file cannot
    # restart them all with junk (hostile review).
    assert server.log().count("Booting worker with pid") == booted
    with crl_file.open("ab") as f:  # the writer finishes: the next reload takes it
        f.write(newer[len(newer) // 2 :])
    server.wait_for_log("mTLS reloaded in place")
    server.wait_for_log("new connections get cert serial")  # the worker swapped it in
    assert whoami(server, homepage)["SSL_CLIENT_S_DN"] == HOMEPAGE_DN
    # A real change restarts no worker either: it is swapped into the running one.
    assert server.log().count("Booting worker with pid") == booted


def test_an_older_crl_swapped_back_is_refused_and_the_revoked_stay_out(
    server: Server, pki: Path
) -> None:
    eventservice = client_context(pki, "eventservice")
    before_revocation = (pki / "crl.pem").read_bytes()
    assert not refused(server, eventservice)
    assert pki_cli.main(["revoke", "eventservice", "--dir", str(pki)]) == 0
    server.wait_for_log("mTLS reloaded")
    deadline = time.monotonic() + 20
    while not refused(server, eventservice) and time.monotonic() < deadline:
        pass  # until the workers holding the new CRL answer
    assert refused(server, eventservice)
    swap_in(pki / "crl.pem", before_revocation)
    server.wait_for_log("is older than the one in use")
    assert_always_refused(server, eventservice)
    line = next(li for li in server.log().splitlines() if REFUSED in li)
    assert f"{pki / 'crl.pem'}: the CRL from 'CN=Example Global CA,O=Example' (CRL number " in line
    assert "run `pki crl --dir DIR` to write a current one" in line
    assert whoami(server, client_context(pki, "homepage"))["SSL_CLIENT_S_DN"] == HOMEPAGE_DN
