"""mtls.client against real TLS servers on loopback: no mocked sockets, no mocked TLS.

Every success is paired with the refusal that proves it could have failed.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from mtls.client import MAX_REDIRECTS, MtlsSession, make_session, tls_facts
from mtls.errors import (
    CertificateFileError,
    ClientCertificateRefusedError,
    UpstreamIdentityError,
    UpstreamRedirectError,
)
from mtls.rules import compile_rules
from tests.clients import client_settings
from tests.tls_stub import (
    DROP,
    HANG,
    Reply,
    Responder,
    StubServer,
    closed_port,
    routes,
    server_context,
    serving,
    silent_port,
)

HOMEPAGE_DN = "CN=homepage.internal,OU=Services,O=Example"
USERSERVICE_DN = "CN=userservice.internal,OU=Services,O=Example"
ADA = {"id": 1, "name": "Ada Lovelace", "email": "ada@example.org", "phone": "+44 20 7946 0001"}
USERS = routes({"/users/1": Reply(200, ADA)})

Serve = Callable[..., StubServer]


@pytest.fixture
def serve(demo_pki: Path) -> Iterator[Serve]:
    """Start stub HTTPS servers: serve(responder, cert=, trust=, host=, max_version=)."""
    with ExitStack() as stack:

        def start(
            responder: Responder = USERS, *, host: str = "127.0.0.1", **ctx: object
        ) -> StubServer:
            server = StubServer(server_context(demo_pki, **ctx), responder, host)  # type: ignore[arg-type]
            return stack.enter_context(serving(server))

        yield start


@pytest.fixture
def session(demo_pki: Path) -> Iterator[MtlsSession]:
    with make_session(client_settings(demo_pki)) as s:
        yield s


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


def test_get_presents_our_chain_and_reports_the_tls_facts(
    session: MtlsSession, serve: Serve
) -> None:
    server = serve()
    response = session.get(f"{server.url}/users/1")

    assert response.json() == ADA
    assert server.seen[0].client_dn == HOMEPAGE_DN
    facts = tls_facts(response)
    assert facts.version == "TLSv1.3"
    assert facts.cipher.startswith("TLS_")
    assert facts.server_dn == USERSERVICE_DN
    assert facts.client_dn == HOMEPAGE_DN == session.client_dn
    assert facts.reused is False
    assert 0 < facts.latency < 5


def test_second_request_reuses_the_pooled_connection(session: MtlsSession, serve: Serve) -> None:
    server = serve()
    first = session.get(f"{server.url}/users/1")
    second = session.get(f"{server.url}/users/1")

    assert (tls_facts(first).reused, tls_facts(second).reused) == (False, True)
    assert [(s.connection, s.nth) for s in server.seen] == [(1, 1), (1, 2)]


def test_trust_bundle_holds_only_our_root_even_after_a_request(
    session: MtlsSession, serve: Serve, demo_pki: Path
) -> None:
    # requests would otherwise load certifi INTO our context on the first request.
    session.get(f"{serve().url}/users/1")

    cas = session.ssl_context.get_ca_certs(binary_form=True)
    root = x509.load_pem_x509_certificate((demo_pki / "root.crt").read_bytes())
    assert cas == [root.public_bytes(serialization.Encoding.DER)]


def test_ca_bundle_and_proxy_env_vars_neither_widen_trust_nor_reroute(
    demo_pki: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    with closed_port() as dead:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(demo_pki / "rogue-ca.crt"))
        monkeypatch.setenv("CURL_CA_BUNDLE", str(demo_pki / "rogue-ca.crt"))
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{dead}")
        legit, rogue = serve(), serve(cert="rogue")
        with make_session(client_settings(demo_pki)) as session:
            assert session.get(f"{legit.url}/users/1").status_code == 200
            with pytest.raises(UpstreamIdentityError, match="unable to get local issuer"):
                session.get(f"{rogue.url}/users/1")


def test_server_dn_matching_the_regex_is_accepted(demo_pki: Path, serve: Serve) -> None:
    settings = client_settings(demo_pki, server_dn=re.compile(r"CN=userservice\.internal,.*"))
    with make_session(settings) as session:
        assert session.get(f"{serve().url}/users/1").status_code == 200


def test_server_dn_not_matching_the_regex_fails_before_the_request_is_sent(
    demo_pki: Path, serve: Serve
) -> None:
    server = serve()
    # A prefix match would pass: the regex must match the WHOLE DN.
    settings = client_settings(demo_pki, server_dn=re.compile(r"CN=userservice\.internal"))
    with make_session(settings) as session, pytest.raises(UpstreamIdentityError) as caught:
        session.get(f"{server.url}/users/1")

    assert "presented 'CN=userservice.internal,OU=Services,O=Example'" in str(caught.value)
    assert "does not match the required DN" in str(caught.value)
    wait_for(lambda: server.connections == 1)  # the handshake did happen...
    assert server.seen == []  # ...and not one request followed it


def test_server_cert_from_another_ca_is_refused(session: MtlsSession, serve: Serve) -> None:
    server = serve(cert="rogue")
    with pytest.raises(UpstreamIdentityError, match="could not prove its identity"):
        session.get(f"{server.url}/users/1")
    assert server.seen == []


def test_server_cert_not_naming_the_host_we_dialled_is_refused(
    session: MtlsSession, serve: Serve
) -> None:
    server = serve(host="127.0.0.2")  # the cert names 127.0.0.1, localhost, not .2
    with pytest.raises(UpstreamIdentityError, match=r"IP address mismatch.*127\.0\.0\.2"):
        session.get(f"{server.url}/users/1")


@pytest.mark.parametrize(
    "max_version",
    [None, ssl.TLSVersion.TLSv1_2],
    ids=["tls13-late-refusal", "tls12-refusal-in-handshake"],
)
def test_server_refusing_our_certificate_raises_a_clear_error(
    session: MtlsSession, serve: Serve, max_version: ssl.TLSVersion | None
) -> None:
    server = serve(trust="rogue-ca.crt", max_version=max_version)  # trusts another CA only
    for _ in range(3):  # the TLS 1.3 refusal races our request; each path must be named
        with pytest.raises(ClientCertificateRefusedError) as caught:
            session.get(f"{server.url}/users/1")
        assert str(caught.value).startswith("the User Service refused our client certificate (")
        assert HOMEPAGE_DN in str(caught.value)
    assert server.seen == []


def test_server_that_never_answers_times_out_after_the_read_timeout(
    demo_pki: Path, serve: Serve
) -> None:
    server = serve(lambda seen: HANG)
    with make_session(client_settings(demo_pki, read_timeout=0.5)) as session:
        started = time.monotonic()
        with pytest.raises(requests.ReadTimeout, match=r"read timeout=0\.5"):
            session.get(f"{server.url}/users/1")
    assert 0.45 < time.monotonic() - started < 1.5  # not retried: one wait, not two
    assert len(server.seen) == 1


def test_server_that_never_starts_tls_times_out_after_the_connect_timeout(
    demo_pki: Path,
) -> None:
    with silent_port() as port, make_session(client_settings(demo_pki, connect_timeout=0.3)) as s:
        started = time.monotonic()
        with pytest.raises(requests.Timeout):
            s.get(f"https://127.0.0.1:{port}/users/1")
    assert time.monotonic() - started < 1.5


def test_closed_port_raises_a_connection_error(session: MtlsSession) -> None:
    with closed_port() as port, pytest.raises(requests.ConnectionError, match="refused"):
        session.get(f"https://127.0.0.1:{port}/users/1")


def drop_second_request(seen: object) -> Reply | str:
    return DROP if getattr(seen, "nth", 0) == 2 else Reply(200, ADA)


def test_get_is_retried_once_on_a_fresh_connection_when_the_pooled_one_was_dropped(
    session: MtlsSession, serve: Serve
) -> None:
    server = serve(drop_second_request)
    session.get(f"{server.url}/users/1")
    retried = session.get(f"{server.url}/users/1")

    assert retried.json() == ADA
    assert tls_facts(retried).reused is False
    assert [(s.connection, s.nth) for s in server.seen] == [(1, 1), (1, 2), (2, 1)]


def test_post_is_not_retried_when_the_pooled_connection_was_dropped(
    session: MtlsSession, serve: Serve
) -> None:
    server = serve(drop_second_request)
    session.get(f"{server.url}/users/1")
    with pytest.raises(requests.ConnectionError, match="Connection aborted"):
        session.post(f"{server.url}/users", json={"name": "Grace"})

    assert [(s.method, s.connection, s.nth) for s in server.seen] == [
        ("GET", 1, 1),
        ("POST", 1, 2),
    ]


def redirect(location: str) -> Reply:
    return Reply(302, {"message": "moved"}, headers=(("Location", location),))


@pytest.mark.parametrize(
    "location",
    [
        "https://127.0.0.1:{other}/collect",  # another port
        "//127.0.0.1:{other}/collect",  # scheme-relative, another port
        "https://localhost:{other}/collect",  # another host and port
        "https://localhost:{self}/collect",  # the same address under another host name
        "http://127.0.0.1:{self}/collect",  # another scheme
    ],
    ids=["port", "scheme-relative", "host-and-port", "host-name", "scheme"],
)
def test_redirect_to_another_origin_is_refused_before_anything_reaches_it(
    session: MtlsSession, serve: Serve, location: str
) -> None:
    other = serve(lambda seen: Reply(200, {"collected": True}))
    ports = {"other": other.server_address[1]}
    server = serve(lambda seen: redirect(location.format(**ports)) if seen.nth == 1 else Reply())
    ports["self"] = server.server_address[1]

    with pytest.raises(UpstreamRedirectError) as caught:
        session.get(f"{server.url}/users/1")

    target = location.format(**ports).removeprefix("//")
    assert str(caught.value).startswith(
        f"the User Service at {server.url} redirected GET /users/1 to "
    )
    assert target in caught.value.target
    assert "another origin" in str(caught.value)
    assert (other.connections, other.handshake_errors, other.seen) == (0, [], [])
    assert [(s.connection, s.path) for s in server.seen] == [(1, "/users/1")]


def test_same_origin_redirect_is_followed(session: MtlsSession, serve: Serve) -> None:
    server = serve(lambda seen: redirect("/users/1") if seen.path == "/old" else Reply(200, ADA))

    response = session.get(f"{server.url}/old")

    assert response.json() == ADA
    assert [r.status_code for r in response.history] == [302]
    assert [s.path for s in server.seen] == ["/old", "/users/1"]


def test_same_origin_redirect_loop_stops_after_the_limit(
    session: MtlsSession, serve: Serve
) -> None:
    server = serve(lambda seen: redirect("/loop"))

    with pytest.raises(requests.TooManyRedirects, match=f"Exceeded {MAX_REDIRECTS} redirects"):
        session.get(f"{server.url}/loop")

    assert len(server.seen) == 1 + MAX_REDIRECTS


@pytest.fixture
def encrypted_key(demo_pki: Path, tmp_path: Path) -> Path:
    key = serialization.load_pem_private_key((demo_pki / "homepage.key").read_bytes(), None)
    path = tmp_path / "homepage-encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"correct horse"),
        )
    )
    return path


def test_encrypted_key_is_loaded_with_its_password(
    demo_pki: Path, encrypted_key: Path, serve: Serve
) -> None:
    settings = client_settings(demo_pki, key=encrypted_key, key_password=b"correct horse")
    with make_session(settings) as session:
        assert session.get(f"{serve().url}/users/1").status_code == 200


@pytest.mark.parametrize(
    ("password", "message"),
    [
        (b"wrong", "cannot decrypt the key with the password given"),
        (None, "the key is encrypted and no password was given"),
    ],
)
def test_encrypted_key_without_the_right_password_is_refused_naming_the_file(
    demo_pki: Path, encrypted_key: Path, password: bytes | None, message: str
) -> None:
    with pytest.raises(CertificateFileError, match=f"{encrypted_key.name}: {message}"):
        make_session(client_settings(demo_pki, key=encrypted_key, key_password=password))


@pytest.fixture
def p12(demo_pki: Path, tmp_path: Path) -> Path:
    key = serialization.load_pem_private_key((demo_pki / "homepage.key").read_bytes(), None)
    leaf, *chain = x509.load_pem_x509_certificates((demo_pki / "homepage-chain.crt").read_bytes())
    path = tmp_path / "p12" / "homepage.p12"
    path.parent.mkdir()
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"homepage",
            key,  # type: ignore[arg-type]
            leaf,
            chain,
            serialization.BestAvailableEncryption(b"p12 secret"),
        )
    )
    return path


@pytest.fixture
def empty_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def test_pkcs12_identity_is_presented_without_a_key_file_on_disk(
    demo_pki: Path, p12: Path, empty_tempdir: Path, serve: Serve
) -> None:
    server = serve()
    settings = client_settings(demo_pki, cert=p12, key=None, key_password=b"p12 secret")
    with make_session(settings) as session:
        assert session.get(f"{server.url}/users/1").status_code == 200

    assert server.seen[0].client_dn == HOMEPAGE_DN
    assert list(empty_tempdir.iterdir()) == []
    assert list(p12.parent.iterdir()) == [p12]


def test_pkcs12_without_memfd_goes_through_an_encrypted_temp_file_that_is_removed(
    demo_pki: Path, p12: Path, empty_tempdir: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    seen_on_disk: list[bytes] = []
    real_unlink = os.unlink

    def reading_unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        seen_on_disk.append(Path(path).read_bytes())
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", reading_unlink)
    settings = client_settings(demo_pki, cert=p12, key=None, key_password=b"p12 secret")
    with make_session(settings) as session:
        assert session.get(f"{serve().url}/users/1").status_code == 200

    assert len(seen_on_disk) == 1
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in seen_on_disk[0]
    assert b"-----BEGIN PRIVATE KEY-----" not in seen_on_disk[0]
    assert list(empty_tempdir.iterdir()) == []


def test_pkcs12_with_the_wrong_password_is_refused_naming_the_file(
    demo_pki: Path, p12: Path
) -> None:
    with pytest.raises(CertificateFileError, match=r"homepage\.p12: cannot open the PKCS#12"):
        make_session(client_settings(demo_pki, cert=p12, key=None, key_password=b"nope"))


def test_missing_files_are_all_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CertificateFileError) as caught:
        make_session(client_settings(tmp_path))
    message = str(caught.value)
    for name in ("homepage-chain.crt", "homepage.key", "root.crt"):
        assert f"{tmp_path / name} does not exist" in message
    assert "pki demo --dir pki/out" in message


FILES = {"cert": "homepage-chain.crt", "key": "homepage.key", "ca_certs": "root.crt"}


@pytest.mark.parametrize("setting", FILES)
def test_a_directory_in_place_of_a_file_is_named_as_such(
    demo_pki: Path, tmp_path: Path, setting: str
) -> None:
    directory = tmp_path / FILES[setting]
    directory.mkdir()
    with pytest.raises(CertificateFileError) as caught:
        make_session(client_settings(demo_pki, **{setting: directory}))
    assert str(caught.value).startswith(f"{directory} is a directory, not a file: run `make demo`")
    assert caught.value.files == (directory,)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("cert", r"no PEM certificate in it \(.*MalformedFraming\): run `make demo`"),
        ("key", r"no PEM private key in it \(a -----BEGIN PRIVATE KEY----- block\): run `make"),
        ("ca_certs", r"not a PEM certificate bundle \(NO_CERTIFICATE_OR_CRL_FOUND\): run `make"),
    ],
)
def test_garbage_in_any_file_is_refused_naming_the_file_and_the_fix(
    demo_pki: Path, tmp_path: Path, setting: str, message: str
) -> None:
    garbage = tmp_path / FILES[setting]
    garbage.write_text("not PEM at all\n")
    with pytest.raises(CertificateFileError, match=f"^{re.escape(str(garbage))}: {message}"):
        make_session(client_settings(demo_pki, **{setting: garbage}))


def test_a_damaged_pem_key_is_refused_naming_the_file(demo_pki: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "homepage.key"
    pem = (demo_pki / "homepage.key").read_text().splitlines()
    damaged.write_text("\n".join([pem[0], "AAAA" + pem[1][4:], *pem[2:]]) + "\n")
    with pytest.raises(CertificateFileError) as caught:
        make_session(client_settings(demo_pki, key=damaged))
    assert str(caught.value).startswith(f"{damaged}: the private key in it is damaged (OpenSSL: ")
    assert str(caught.value).endswith(
        ": run `make demo` (or `pki demo --dir pki/out`), or point the setting at your own file"
    )
    assert caught.value.files == (damaged,)


def test_a_key_that_does_not_match_the_certificate_is_refused_naming_both(
    demo_pki: Path,
) -> None:
    other = demo_pki / "userservice.key"
    with pytest.raises(CertificateFileError) as caught:
        make_session(client_settings(demo_pki, key=other))
    assert str(caught.value) == (
        f"{other} does not match the certificate in {demo_pki / 'homepage-chain.crt'} "
        "(CN=homepage.internal,OU=Services,O=Example): was one of them replaced without the "
        "other? give the key written with that certificate (`pki issue NAME` writes NAME.key)"
    )
    assert caught.value.files == (other,)


@pytest.mark.parametrize("setting", FILES)
def test_a_file_we_may_not_open_is_refused_naming_it(
    demo_pki: Path, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, where chmod 000 does not stop a read: refuse the open instead.
    locked = demo_pki / FILES[setting]
    real_open = Path.open

    def open_(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(CertificateFileError) as caught:
        make_session(client_settings(demo_pki))
    assert str(caught.value) == (
        f"{locked} cannot be read (Permission denied): let this service's user read it"
    )
    assert caught.value.files == (locked,)


@pytest.mark.parametrize("setting", ["cert", "key"])
def test_a_file_that_vanishes_after_the_check_is_refused_naming_it(
    demo_pki: Path, tmp_path: Path, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / FILES[setting]
    copy.write_bytes((demo_pki / FILES[setting]).read_bytes())
    real_read_bytes = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path == copy:
            path.unlink()  # replaced by a deploy between our check and our read
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(CertificateFileError) as caught:
        make_session(client_settings(demo_pki, **{setting: copy}))
    assert str(caught.value) == (
        f"{copy} cannot be read (No such file or directory): check that it exists and that "
        "this service's user may read it"
    )


def test_plain_http_urls_are_refused(session: MtlsSession) -> None:
    with pytest.raises(requests.exceptions.InvalidSchema):
        session.get("http://127.0.0.1:1/users/1")


def test_per_request_verify_override_is_refused(session: MtlsSession, serve: Serve) -> None:
    with pytest.raises(ValueError, match="per-request verify=False"):
        session.get(f"{serve().url}/users/1", verify=False)


def test_tls_facts_of_a_response_from_elsewhere_are_refused() -> None:
    with pytest.raises(ValueError, match="did not come through a make_session"):
        tls_facts(requests.Response())


def test_server_rules_are_require_peers_rules_on_the_server_certificate(
    demo_pki: Path, serve: Serve
) -> None:
    rules = compile_rules(san_dns="userservice.internal", ou="Services", setting="T")
    with make_session(client_settings(demo_pki, server_rules=rules)) as session:
        assert session.get(f"{serve().url}/users/1").status_code == 200


def test_server_rules_that_fail_stop_the_request_before_a_byte_is_sent(
    demo_pki: Path, serve: Serve
) -> None:
    server = serve()
    rules = compile_rules(san_dns="*.example.org", setting="TEST_SERVER_RULES")
    with make_session(client_settings(demo_pki, server_rules=rules)) as session:
        with pytest.raises(UpstreamIdentityError) as caught:
            session.get(f"{server.url}/users/1")
    message = str(caught.value)
    assert (
        "fails TEST_SERVER_RULES (san_dns: DNS names ['userservice.internal', 'localhost']"
        in message
    )
    assert message.endswith("nothing was sent")
    wait_for(lambda: server.connections == 1)
    assert server.seen == []


def test_server_rules_in_report_mode_log_and_go_on(
    demo_pki: Path, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    rules = compile_rules(cn="billing.internal", mode="report", setting="TEST_SERVER_RULES")
    with make_session(client_settings(demo_pki, server_rules=rules)) as session:
        with caplog.at_level(logging.WARNING, logger="mtls.client"):
            assert session.get(f"{serve().url}/users/1").status_code == 200
    assert "report mode, went on with what enforce would refuse" in caplog.text
    assert "cn: subject CN ['userservice.internal']" in caplog.text
