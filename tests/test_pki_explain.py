"""`pki explain`: each verdict, and the real server agreeing with it.

One table over the demo PKI plus four certificates made for it (a revoked
client, an expired one, one both expired and revoked, a revoked server-only
one). Every row is asked of `pki explain` with the User Service's default
policy, then the same certificate calls GET /users/1 on the real User
Service running with the same root and CRL: explain's "refused at the
handshake" must be the server's refusal, with the TLS alert that reason makes
OpenSSL send; its 403 the service's 403, and "would be served" a 200.
Two rows pin the order of the checks, as OpenSSL makes them and so explain:
expired and revoked is "revoked" (revocation before validity periods), a
revoked server-only certificate is "bad purpose" (purpose before revocation).
"""

from __future__ import annotations

import datetime
import json
import select
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import authority
from pki import cli as pki_cli
from tests.pkifiles import load_issued, write_issued
from tests.servers import Server, client_context, running, server_env
from userservice.settings import DEFAULT_ALLOWED_DN

#: What OpenSSL tells the client for each refusal reason (ssl_verify_alarm_type in ssl/statem).
ALERTS = {
    "unknown_ca": "TLSV1_ALERT_UNKNOWN_CA",
    "chain_incomplete": "TLSV1_ALERT_UNKNOWN_CA",
    "revoked": "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "expired": "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "bad_purpose": "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
}

# (presented file, outcome, deciding reason label, verdict)
CASES = [
    ("homepage-chain.crt", "served", None, "would be served"),
    (
        "eventservice-chain.crt", "forbidden", None,
        "would pass the handshake, then 403 Certificate subject is not recognized!",
    ),
    ("rogue-chain.crt", "refused", "unknown_ca", "would be refused at the handshake: unknown CA"),
    ("retired-chain.crt", "refused", "revoked", "would be refused at the handshake: revoked"),
    ("lapsed-chain.crt", "refused", "expired", "would be refused at the handshake: expired"),
    ("gone-chain.crt", "refused", "revoked", "would be refused at the handshake: revoked"),
    (
        "userservice-chain.crt", "refused", "bad_purpose",
        "would be refused at the handshake: bad purpose (no clientAuth)",
    ),
    (
        "oldserver-chain.crt", "refused", "bad_purpose",
        "would be refused at the handshake: bad purpose (no clientAuth)",
    ),
    (
        "homepage.crt", "refused", "chain_incomplete",
        "would be refused at the handshake: chain incomplete (the client sent no intermediate)",
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def lab(demo_pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo PKI plus: retired (revoked), lapsed (expired), gone (expired and revoked),
    oldserver (a server certificate, revoked)."""
    pki = tmp_path_factory.mktemp("explain") / "pki"
    shutil.copytree(demo_pki, pki)
    assert pki_cli.main(["issue", "retired", "--client", "--dir", str(pki)]) == 0
    assert pki_cli.main(["revoke", "retired", "--dir", str(pki)]) == 0
    assert pki_cli.main(["issue", "oldserver", "--server", "--dns", "old", "--dir", str(pki)]) == 0
    assert pki_cli.main(["revoke", "oldserver", "--dir", str(pki)]) == 0
    issuer = load_issued(pki, "global")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    expired = {}
    for name in ("lapsed", "gone"):
        expired[name] = authority.build_leaf(
            issuer,
            name=authority.make_name(f"{name}.internal", ou="Services"),
            profile="client",
            now=past,
            days=1,
        )
        write_issued(pki, name, expired[name])
        (pki / f"{name}.crt").write_bytes(
            expired[name].cert.public_bytes(serialization.Encoding.PEM)
        )
    current = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    entries = [authority.RevokedEntry(r.serial_number, r.revocation_date_utc) for r in current] + [
        authority.RevokedEntry(expired["gone"].cert.serial_number, past)
    ]
    number = current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    crl = authority.build_crl(issuer, entries, number=number + 1)
    (pki / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return pki


@pytest.fixture(scope="module")
def user_service(lab: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real User Service (its default USERSERVICE_ALLOWED_DN), with lab/root.crt and crl.pem."""
    tmp = tmp_path_factory.mktemp("explain-users")
    env = server_env(
        lab, "userservice",
        MTLS_CRLFILE=str(lab / "crl.pem"),
        USERSERVICE_DATABASE_URL=f"sqlite:///{tmp / 'users.db'}",
    )  # fmt: skip
    with running("wsgi:userservice", env, tmp / "users.log", client_context(lab, "homepage")) as s:
        yield s


def explain(
    lab: Path, presented: str, capsys: pytest.CaptureFixture[str], *args: str
) -> dict[str, Any]:
    capsys.readouterr()
    code = pki_cli.main(["explain", str(lab / presented), "--dir", str(lab), "--json", *args])
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == (0 if doc["outcome"] in ("served", "handshake_passed") else 1)
    return doc


def ask(server: Server, pki: Path, presented: str) -> str:
    """The status of GET /users/1 presenting pki/PRESENTED, or the alert that refused it.

    TLS 1.3: our handshake returns before the server has judged our
    certificate. Its verdict is the next thing it sends: an alert, or session
    tickets (sent only once it accepted us). We wait for that verdict before
    writing anything: a request the refusing server never reads can turn its
    close into a reset or an EOF that overtakes the alert.
    """
    ctx = client_context(pki, None)
    key = presented.removesuffix(".crt").removesuffix("-chain")
    ctx.load_cert_chain(str(pki / presented), str(pki / f"{key}.key"))
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            try:
                await_session_ticket(tls)
            except ssl.SSLError as exc:
                return str(exc.reason)
            request = b"GET /users/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            tls.sendall(request)
            head = tls.recv(12)
    assert head.startswith(b"HTTP/1.1 "), head
    return head[len(b"HTTP/1.1 ") :].decode()


def await_session_ticket(tls: ssl.SSLSocket, timeout: float = 10.0) -> None:
    """Return once the server sent a session ticket; its alert (ssl.SSLError) if it refused."""
    deadline = time.monotonic() + timeout
    tls.setblocking(False)
    try:
        while tls.session is None or not tls.session.has_ticket:
            left = deadline - time.monotonic()
            assert left > 0, "the server sent neither an alert nor a session ticket"
            select.select([tls], [], [], left)
            try:
                data = tls.recv(1)  # processes a ticket, or raises the alert
            except ssl.SSLWantReadError:
                continue
            raise AssertionError(f"no alert and no ticket, but {data!r} before any request")
    finally:
        tls.settimeout(10)


@pytest.mark.parametrize(("presented", "outcome", "reason", "verdict"), CASES)
def test_explain_names_the_deciding_check_and_the_server_agrees(
    lab: Path,
    user_service: Server,
    capsys: pytest.CaptureFixture[str],
    presented: str,
    outcome: str,
    reason: str | None,
    verdict: str,
) -> None:
    doc = explain(lab, presented, capsys, "--policy", DEFAULT_ALLOWED_DN)
    assert (doc["outcome"], doc["reason"], doc["verdict"]) == (outcome, reason, verdict)
    deciding = [c for c in doc["checks"] if c["decides"]]
    assert len(deciding) == (0 if outcome == "served" else 1)
    answer = ask(user_service, lab, presented)
    expected = {"served": "200", "forbidden": "403"}.get(outcome) or ALERTS[reason or ""]
    assert answer == expected


def test_text_output_numbers_every_check_and_marks_the_decider(
    lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pki_cli.main(["explain", str(lab / "retired-chain.crt"), "--dir", str(lab)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("retired-chain.crt: CN=retired,O=Example")
    assert lines[1].startswith("1. chain to root.crt ...")
    assert lines[1].endswith("ok (issuer 'CN=Example Global CA,O=Example')")
    assert lines[3].startswith("3. revocation (crl.pem #")
    assert " REVOKED on " in lines[3]
    assert lines[3].endswith("<- decides: refused at the handshake")
    assert lines[4].endswith("(not reached)")
    assert lines[6].startswith("6. DN policy ...")
    assert lines[-1] == "verdict: would be refused at the handshake: revoked"


def test_without_a_policy_the_handshake_verdict_stands_alone(
    lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = explain(lab, "eventservice-chain.crt", capsys)
    assert doc["outcome"] == "handshake_passed"
    assert doc["checks"][-1]["ok"] is None


def test_a_policy_that_is_no_regex_is_refused_naming_the_flag(
    lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = pki_cli.main(["explain", str(lab / "homepage-chain.crt"), "--dir", str(lab),
                         "--policy", "CN=(homepage"])  # fmt: skip
    assert code == 2
    assert "--policy='CN=(homepage' is not a valid regular expression" in capsys.readouterr().err


def test_a_stale_crl_refuses_everybody_and_says_so(
    lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuer = load_issued(lab, "global")
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=9)
    stale = authority.build_crl(issuer, [], now=old, next_update_days=7, number=1)
    (tmp_path / "crl.pem").write_bytes(stale.public_bytes(serialization.Encoding.PEM))
    args = ["--crl", str(tmp_path / "crl.pem")]
    doc = explain(lab, "homepage-chain.crt", capsys, *args)
    assert doc["reason"] == "crl_stale"
    assert "past its nextUpdate" in doc["checks"][2]["result"]
