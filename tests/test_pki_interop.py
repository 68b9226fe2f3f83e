"""Our certificates against other people's strict code: the openssl binary and Python's ssl.

Each acceptance is paired with a refusal, so a test that passes proves
the checker was actually checking.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki import cli
from tests import servers
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


# --- the lifecycle commands' certificates: sign, renew, --valid, Ed25519 -----------------------


@pytest.fixture(scope="module")
def lifecycle_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with an Ed25519 server and client, a CSR signed from openssl, a renewed 30m cert.

    The CSR comes from ``openssl req``, asking for CA:TRUE, which must not survive.
    """
    require_tool("openssl")
    d = tmp_path_factory.mktemp("lifecycle") / "ca"
    ext = d.parent / "ext"
    ext.mkdir()
    steps = [
        ["init", "--dir", d],
        ["issue", "edsrv", "--dir", d, "--server", "--key-type", "ed25519", "--dns", "localhost",
         "--ip", "127.0.0.1", "--valid", "24h"],
        ["issue", "edcli", "--dir", d, "--client", "--key-type", "ed25519", "--cn", "edcli"],
        ["issue", "short", "--dir", d, "--both", "--dns", "localhost", "--valid", "30m"],
        ["renew", "short", "--dir", d, "--new-key", "--revoke-old"],
    ]  # fmt: skip
    for argv in steps:
        assert cli.main([str(a) for a in argv], environ={}) == 0, argv
    made = openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", ext / "ext.key", "-out", ext / "ext.csr",
        "-subj", "/OU=Services/CN=ext.internal", "-addext", "subjectAltName=DNS:ext.internal",
        "-addext", "basicConstraints=critical,CA:TRUE",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    argv = ["sign", ext / "ext.csr", "--dir", d, "--name", "ext", "--client", "--valid", "30m"]
    assert cli.main([str(a) for a in argv], environ={}) == 0
    return d


@pytest.mark.parametrize(
    ("name", "purposes"),
    [
        ("edsrv", {"sslserver"}),
        ("edcli", {"sslclient"}),
        ("ext", {"sslclient"}),
        ("short", {"sslserver", "sslclient"}),
    ],
)
@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_openssl_x509_strict_accepts_signed_renewed_short_and_ed25519_leaves(
    lifecycle_pki: Path, name: str, purposes: set[str], purpose: str
) -> None:
    verdict = openssl_verify(lifecycle_pki, f"{name}.crt", purpose)
    assert verdict == "OK" if purpose in purposes else "unsuitable certificate purpose" in verdict


def test_openssl_sees_the_csr_signed_leaf_as_no_ca(lifecycle_pki: Path) -> None:
    text = openssl("x509", "-in", lifecycle_pki / "ext.crt", "-noout", "-text").stdout
    assert "CA:FALSE" in text
    assert "CA:TRUE" not in text
    assert "TLS Web Client Authentication" in text


def test_openssl_crl_check_refuses_the_renewed_away_serial(lifecycle_pki: Path) -> None:
    """`renew --revoke-old` put the old serial on the CRL: openssl agrees the new one is fine."""
    crl_args = ("-crl_check", "-CRLfile", lifecycle_pki / "crl.pem")
    assert openssl_verify(lifecycle_pki, "short.crt", "sslserver", *crl_args) == "OK"
    text = openssl("crl", "-in", lifecycle_pki / "crl.pem", "-noout", "-text").stdout
    assert "Superseded" in text


def test_strict_python_tls_with_ed25519_on_both_sides(lifecycle_pki: Path) -> None:
    server_saw, client_saw = handshake(
        server_context(lifecycle_pki, "edsrv"), client_context(lifecycle_pki, "edcli"), "localhost"
    )
    assert subject(server_saw) == ((("organizationName", "Example"),), (("commonName", "edcli"),))
    assert (("organizationName", "Example"),) in subject(client_saw)


def test_strict_python_tls_accepts_the_csr_signed_client_on_the_renewed_server(
    lifecycle_pki: Path,
) -> None:
    client = ssl.create_default_context(cafile=lifecycle_pki / "root.crt")
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    ext = lifecycle_pki.parent / "ext"
    client.load_cert_chain(lifecycle_pki / "ext-chain.crt", ext / "ext.key")
    server_saw, _ = handshake(server_context(lifecycle_pki, "short"), client, "localhost")
    assert (("commonName", "ext.internal"),) in subject(server_saw)


def test_strict_python_tls_refuses_an_ed25519_client_of_another_ca(
    lifecycle_pki: Path, tmp_path: Path
) -> None:
    """The pair of the Ed25519 test above: same name, same key type, the wrong issuer."""
    other = tmp_path / "other"
    assert cli.main(["init", "--dir", str(other)], environ={}) == 0
    argv = ["issue", "edcli", "--dir", str(other), "--client", "--key-type", "ed25519"]
    assert cli.main(argv, environ={}) == 0
    client = client_context(lifecycle_pki, None)
    client.load_cert_chain(other / "edcli-chain.crt", other / "edcli.key")
    server_saw, _ = handshake(server_context(lifecycle_pki, "edsrv"), client, "localhost")
    assert isinstance(server_saw, ssl.SSLCertVerificationError), server_saw
    assert server_saw.verify_message == "unable to get local issuer certificate"


# --- Ed25519 end to end: our own gunicorn worker, curl and openssl s_client ---------------------


@pytest.fixture
def ed25519_server(lifecycle_pki: Path, tmp_path: Path) -> Iterator[servers.Server]:
    """The project's mTLS worker presenting the Ed25519 server certificate, checking the CRL."""
    env = servers.server_env(lifecycle_pki, "edsrv", MTLS_CRLFILE=str(lifecycle_pki / "crl.pem"))
    ready = servers.client_context(lifecycle_pki, "edcli")
    with servers.running("echo_app:app", env, tmp_path / "ed.log", ready) as server:
        yield server


def curl(server: servers.Server, d: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("curl"), "-sS", "--max-time", "15", "--cacert", str(d / "root.crt"),
         *map(str, args), f"https://localhost:{server.port}/"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("tls", [["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3"]])
def test_curl_with_an_ed25519_client_cert_reaches_our_ed25519_server(
    ed25519_server: servers.Server, lifecycle_pki: Path, tls: list[str]
) -> None:
    d = lifecycle_pki
    done = curl(ed25519_server, d, *tls, "--cert", d / "edcli-chain.crt", "--key", d / "edcli.key")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["peer_subject"] == "CN=edcli,O=Example"
    assert answer["SSL_PROTOCOL"] == ("TLSv1.2" if "--tls-max" in tls else "TLSv1.3")


def test_curl_without_a_client_cert_is_refused_by_our_ed25519_server(
    ed25519_server: servers.Server, lifecycle_pki: Path
) -> None:
    done = curl(ed25519_server, lifecycle_pki)
    assert done.returncode != 0
    assert done.stdout == ""


def test_openssl_s_client_with_ed25519_verifies_our_server_strictly(
    ed25519_server: servers.Server, lifecycle_pki: Path
) -> None:
    d = lifecycle_pki
    done = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{ed25519_server.port}",
         "-servername", "localhost", "-verify_hostname", "localhost",
         "-CAfile", str(d / "root.crt"),
         "-cert", str(d / "edcli.crt"), "-key", str(d / "edcli.key"),
         "-cert_chain", str(d / "global.crt"), "-verify_return_error", "-x509_strict", "-quiet"],
        input="GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HTTP/1.1 200"), done.stdout
    assert '"peer_subject": "CN=edcli,O=Example"' in done.stdout
    assert "verify return:1" in done.stderr
