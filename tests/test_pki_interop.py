"""Our certificates against other people's strict code: the openssl binary and Python's ssl.

Each acceptance is paired with a refusal, so a test that passes proves
the checker was actually checking.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from pki import cli
from tests.tools import require_tool

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


@pytest.fixture(autouse=True)
def _openssl_installed() -> None:
    """Interop is the point of this module: no openssl is a failure, not a skip."""
    require_tool("openssl")


LEAVES = {
    "userservice": {"sslserver"},
    "homepage": {"sslserver", "sslclient"},
    "eventservice": {"sslclient"},
    "ops": {"sslclient"},
    "lb": {"sslclient"},
}


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )


def openssl_verify(d: Path, cert: str, purpose: str, *extra: str | Path) -> str:
    """openssl's verdict: 'OK' or the error line naming the cause."""
    result = openssl(
        "verify", "-x509_strict", "-purpose", purpose, "-CAfile", d / "root.crt",
        "-untrusted", d / "global.crt", *extra, d / cert,
    )  # fmt: skip
    if result.returncode == 0:
        assert result.stdout.strip() == f"{d / cert}: OK"
        return "OK"
    return result.stdout + result.stderr


@pytest.mark.parametrize("name", LEAVES)
@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_openssl_x509_strict_accepts_each_demo_leaf_for_its_purposes_only(
    demo_pki: Path, name: str, purpose: str
) -> None:
    verdict = openssl_verify(demo_pki, f"{name}.crt", purpose)
    if purpose in LEAVES[name]:
        assert verdict == "OK"
    else:
        assert "unsuitable certificate purpose" in verdict


@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_openssl_refuses_the_rogue_but_it_is_well_formed_under_its_own_root(
    demo_pki: Path, purpose: str
) -> None:
    assert "unable to get local issuer certificate" in openssl_verify(
        demo_pki, "rogue.crt", purpose
    )
    result = openssl(
        "verify", "-x509_strict", "-purpose", purpose, "-CAfile", demo_pki / "rogue-ca.crt",
        demo_pki / "rogue.crt",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_openssl_crl_check_accepts_then_refuses_after_revoke(
    demo_pki: Path, tmp_path: Path
) -> None:
    d = Path(shutil.copytree(demo_pki, tmp_path / "pki"))
    crl_args = ("-crl_check", "-CRLfile", d / "crl.pem")
    assert openssl_verify(d, "eventservice.crt", "sslclient", *crl_args) == "OK"
    assert cli.main(["revoke", "eventservice", "--dir", str(d), "--reason", "keyCompromise"]) == 0
    assert "certificate revoked" in openssl_verify(d, "eventservice.crt", "sslclient", *crl_args)
    assert openssl_verify(d, "homepage.crt", "sslclient", *crl_args) == "OK"
    text = openssl("crl", "-in", d / "crl.pem", "-noout", "-text").stdout
    assert "Key Compromise" in text
    assert "X509v3 CRL Number" in text
    assert "X509v3 Authority Key Identifier" in text


def test_openssl_accepts_an_rsa_ca_and_leaf(tmp_path: Path) -> None:
    d = tmp_path / "rsa"
    assert cli.main(["init", "--dir", str(d), "--key-type", "rsa"]) == 0
    argv = ["issue", "svc", "--dir", str(d), "--both", "--key-type", "rsa", "--rsa-bits", "3072"]
    assert cli.main(argv) == 0
    assert openssl_verify(d, "svc.crt", "sslserver") == "OK"
    assert openssl_verify(d, "svc.crt", "sslclient") == "OK"
    text = openssl("x509", "-in", d / "svc.crt", "-noout", "-text").stdout
    assert "Public-Key: (3072 bit)" in text
    assert "Digital Signature, Key Encipherment" in text


def test_openssl_reads_the_p12_with_its_password_and_not_without(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    assert cli.main(["init", "--dir", str(d)]) == 0
    argv = ["issue", "svc", "--dir", str(d), "--client", "--p12", "--password-file", str(password)]
    assert cli.main(argv) == 0
    ok = openssl("pkcs12", "-info", "-nokeys", "-in", d / "svc.p12", "-passin", f"file:{password}")
    assert ok.returncode == 0, ok.stderr
    assert "subject=O = Example, CN = svc" in ok.stdout
    assert "subject=O = Example, CN = Example Global CA" in ok.stdout
    assert "subject=O = Example, CN = Example Root CA" not in ok.stdout, "never the root"
    assert "friendlyName: svc" in ok.stdout
    bad = openssl("pkcs12", "-info", "-nokeys", "-in", d / "svc.p12", "-passin", f"file:{wrong}")
    assert bad.returncode != 0
    assert "invalid password" in bad.stderr.lower()


# --- Python's ssl with VERIFY_X509_STRICT, over a real TLS handshake ----------------------------


def server_context(d: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / f"{name}-chain.crt", d / f"{name}.key")
    ctx.load_verify_locations(d / "root.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def client_context(d: Path, name: str | None, cafile: str = "root.crt") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=d / cafile)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if name is not None:
        ctx.load_cert_chain(d / f"{name}-chain.crt", d / f"{name}.key")
    return ctx


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str
) -> tuple[object, object]:
    """(what the server got, what the client got): the peer's cert dict, or the SSL error.

    Both ends exchange one byte after the handshake, because with TLS 1.3 the
    client only learns that the server refused its certificate when it reads.
    """
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)
    got: dict[str, object] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(server_sock, server_side=True) as tls:
                got["server"] = tls.getpeercert()
                tls.sendall(b"!")
        except (ssl.SSLError, OSError) as exc:
            got["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(client_sock, server_hostname=hostname) as tls:
            peer = tls.getpeercert()
            got["client"] = peer if tls.recv(1) == b"!" else EOFError("no byte from server")
    except (ssl.SSLError, OSError) as exc:
        got["client"] = exc
    finally:
        thread.join(10)
        server_sock.close()
        client_sock.close()
    return got["server"], got["client"]


def subject(peer: object) -> tuple[tuple[tuple[str, str], ...], ...]:
    assert isinstance(peer, dict), peer
    return peer["subject"]  # type: ignore[no-any-return]


def test_strict_python_tls_accepts_homepage_as_client_of_userservice(demo_pki: Path) -> None:
    server_saw, client_saw = handshake(
        server_context(demo_pki, "userservice"),
        client_context(demo_pki, "homepage"),
        "userservice.internal",
    )
    assert subject(server_saw) == (
        (("organizationName", "Example"),),
        (("organizationalUnitName", "Services"),),
        (("commonName", "homepage.internal"),),
    )
    assert (("commonName", "userservice.internal"),) in subject(client_saw)


def test_strict_python_tls_refuses_the_rogue_client_at_handshake(demo_pki: Path) -> None:
    server_saw, client_saw = handshake(
        server_context(demo_pki, "userservice"),
        client_context(demo_pki, "rogue"),
        "localhost",
    )
    assert isinstance(server_saw, ssl.SSLCertVerificationError), server_saw
    assert server_saw.verify_message == "unable to get local issuer certificate"
    assert isinstance(client_saw, ssl.SSLError), client_saw


def test_strict_python_tls_refuses_a_client_without_certificate(demo_pki: Path) -> None:
    server_saw, client_saw = handshake(
        server_context(demo_pki, "userservice"), client_context(demo_pki, None), "localhost"
    )
    assert isinstance(server_saw, ssl.SSLError), server_saw
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(server_saw)
    assert isinstance(client_saw, ssl.SSLError), client_saw


def test_strict_python_tls_client_refuses_the_rogue_as_a_server(demo_pki: Path) -> None:
    server_saw, client_saw = handshake(
        server_context(demo_pki, "rogue"), client_context(demo_pki, "homepage"), "localhost"
    )
    assert isinstance(client_saw, ssl.SSLCertVerificationError), client_saw
    assert client_saw.verify_message == "unable to get local issuer certificate"
    assert isinstance(server_saw, ssl.SSLError), server_saw


def test_strict_python_tls_checks_the_hostname_against_the_san(demo_pki: Path) -> None:
    _, client_saw = handshake(
        server_context(demo_pki, "userservice"),
        client_context(demo_pki, "homepage"),
        "homepage.internal",
    )
    assert isinstance(client_saw, ssl.SSLCertVerificationError), client_saw
    assert "Hostname mismatch" in client_saw.verify_message
