"""Handshake refusals are named for the log: real handshakes in memory, real errors.

Each case runs a genuine TLS handshake between our server context and a
client context over a pair of ssl.MemoryBIO (no sockets, nothing mocked) and
classifies the exception OpenSSL raised on the server side.
"""

from __future__ import annotations

import datetime
import shutil
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from mtls.failures import describe_handshake_error, parse_certificate_message
from mtls.serverstate import build_server_context
from mtls.settings import ServerSettings
from pki import authority
from pki import cli as pki_cli
from tests.pkifiles import load_issued, write_issued
from tests.servers import client_context, server_env


def server_side_error(server: ssl.SSLContext, client: ssl.SSLContext) -> BaseException | None:
    """Run the handshake to its end; return what the server raised, if anything."""
    error, _ = server_side(server, client)
    return error


def server_side(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[BaseException | None, list[x509.Certificate]]:
    """The server's error, and the client chain its message callback captured (mtls.tls)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    server_done = client_done = False
    for _ in range(20):  # a handshake takes a handful of flights
        if not client_done:
            try:
                cli.do_handshake()
                client_done = True
                cli.write(b"GET / HTTP/1.1\r\n\r\n")  # TLS 1.3: the server judges us now
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                client_done = True
        s_in.write(c_out.read())
        if not server_done:
            try:
                srv.do_handshake()
                server_done = True
                srv.read(1024)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                return e, _captured(srv)
        c_in.write(s_out.read())
        if server_done and client_done:
            break
    return None, _captured(srv)


def _captured(srv: ssl.SSLObject) -> list[x509.Certificate]:
    captured = getattr(srv, "mtls_peer_certificates", None)
    return parse_certificate_message(*captured) if captured else []


def server(pki: Path, **extra: str) -> ssl.SSLContext:
    return build_server_context(ServerSettings.from_env(server_env(pki, "userservice", **extra)))


def test_a_valid_client_is_not_refused(demo_pki: Path) -> None:
    assert server_side_error(server(demo_pki), client_context(demo_pki, "homepage")) is None


@pytest.mark.parametrize(
    ("client", "phrase"),
    [
        (None, "no_cert (no client certificate)"),
        (
            "rogue",
            "unknown_ca ('CN=homepage.internal,OU=Services,O=Example' is issued by "
            "'CN=Rogue Root CA,O=Example', which is not in the trust bundle)",
        ),
        ("userservice", "bad_purpose (client certificate lacks clientAuth)"),
    ],
)
def test_refusals_are_named(demo_pki: Path, client: str | None, phrase: str) -> None:
    ctx = server(demo_pki)
    error, chain = server_side(ctx, client_context(demo_pki, client))
    assert error is not None
    assert str(describe_handshake_error(error, chain, _known(demo_pki))) == phrase


def _known(pki: Path) -> frozenset[x509.Name]:
    return frozenset(load_issued(pki, n).cert.subject for n in ("root", "global"))


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_client_that_sent_its_leaf_without_the_intermediate_is_told_so(
    demo_pki: Path, maximum: ssl.TLSVersion
) -> None:
    """OpenSSL says "unable to get local issuer" for this and for a foreign CA alike."""
    client = client_context(demo_pki, None, maximum=maximum)
    client.load_cert_chain(str(demo_pki / "homepage.crt"), str(demo_pki / "homepage.key"))
    error, chain = server_side(server(demo_pki), client)
    assert error is not None
    refusal = describe_handshake_error(error, chain, _known(demo_pki))
    assert refusal.reason == "chain_incomplete"
    assert "sent 'CN=homepage.internal,OU=Services,O=Example' without its issuer" in str(refusal)
    assert describe_handshake_error(error).reason == "unknown_ca"  # nothing captured: still right


def test_an_expired_client_certificate_is_named(demo_pki: Path, tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    leaf = authority.build_leaf(
        load_issued(demo_pki, "global"), name=authority.make_name("old.internal"),
        profile="client", now=past, days=2,
    )  # fmt: skip
    chain, key = write_issued(tmp_path, "old", leaf)
    client = client_context(demo_pki, None)
    client.load_cert_chain(str(chain), str(key))
    error = server_side_error(server(demo_pki), client)
    assert error is not None
    assert str(describe_handshake_error(error)) == "expired (client certificate expired)"


def test_a_revoked_client_certificate_is_named(demo_pki: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    shutil.copytree(demo_pki, pki)
    assert pki_cli.main(["revoke", "homepage", "--dir", str(pki)]) == 0
    error = server_side_error(
        server(pki, MTLS_CRLFILE=str(pki / "crl.pem")), client_context(pki, "homepage")
    )
    assert error is not None
    assert str(describe_handshake_error(error)) == "revoked (client certificate revoked)"


def test_a_client_capped_below_the_minimum_version_is_named(demo_pki: Path) -> None:
    client = client_context(demo_pki, "homepage", maximum=ssl.TLSVersion.TLSv1_2)
    error = server_side_error(server(demo_pki, MTLS_MIN_VERSION="TLSv1.3"), client)
    assert error is not None
    assert describe_handshake_error(error).reason == "bad_version"


def test_plain_http_is_named(demo_pki: Path) -> None:
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server(demo_pki).wrap_bio(s_in, s_out, server_side=True)
    s_in.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    with pytest.raises(ssl.SSLError) as e:
        srv.do_handshake()
    assert str(describe_handshake_error(e.value)) == "plaintext (plaintext HTTP on the TLS port)"


def test_non_tls_errors_still_get_a_phrase() -> None:
    assert str(describe_handshake_error(ConnectionResetError())) == (
        "other (the client reset the connection mid-handshake)"
    )
    assert describe_handshake_error(TimeoutError()).reason == "timeout"
    assert str(describe_handshake_error(ValueError("odd"))) == (
        "other (unexpected error (ValueError: odd))"
    )


def test_a_client_refusing_our_expired_certificate_is_named_as_such(
    demo_pki: Path, tmp_path: Path
) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    leaf = authority.build_leaf(
        load_issued(demo_pki, "global"), name=authority.make_name("localhost"),
        profile="server", now=past, days=2, dns=["localhost"],
    )  # fmt: skip
    chain, key = write_issued(tmp_path, "old", leaf)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # ours refuses to start with it, rightly
    ctx.load_cert_chain(str(chain), str(key))
    error = server_side_error(ctx, client_context(demo_pki, "homepage"))
    assert error is not None
    assert "the client refused our certificate: it has expired" in str(
        describe_handshake_error(error)
    )
