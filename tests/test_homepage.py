"""The Home Page app (Flask test client) calling a real in-process TLS "User Service".

No mocked TLS: the stub is an HTTPS server from the demo PKI that requires
our client certificate; the app's own mtls.client session talks to it.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from homepage import create_app
from homepage.settings import HomePageSettings
from mtls.errors import ConfigError
from tests.tls_stub import (
    HANG,
    Reply,
    Responder,
    StubServer,
    closed_port,
    routes,
    server_context,
    serving,
)

ADA = {"id": 1, "name": "Ada Lovelace", "email": "ada@example.org", "phone": "+44 20 7946 0001"}
MALLORY = {"id": 2, "name": "<script>alert(1)</script>", "email": "m@x.org", "phone": "+1 555 0100"}
USERS = routes(
    {
        "/users?limit=1": Reply(200, {"items": [ADA], "total": 2, "limit": 1, "offset": 0}),
        "/users/1": Reply(200, ADA),
        "/users/2": Reply(200, MALLORY),
        "/users/9": Reply(404, {"message": "No user with id 9."}),
        "/healthz": Reply(200, {"status": "ok"}),
    }
)
OPS = {"HTTPS": "on", "SSL_CLIENT_VERIFY": "SUCCESS"}
OPS_DN = "CN=ops.internal,OU=Operators,O=Example"
HOMEPAGE_DN = "CN=homepage.internal,OU=Services,O=Example"
USERSERVICE_DN = "CN=userservice.internal,OU=Services,O=Example"

MakeClient = Callable[..., FlaskClient]


def env_for(pki: Path, url: str, **extra: str) -> dict[str, str]:
    return {
        "HOMEPAGE_USERSERVICE_URL": url,
        "HOMEPAGE_CLIENT_CERT": str(pki / "homepage-chain.crt"),
        "HOMEPAGE_CLIENT_KEY": str(pki / "homepage.key"),
        "HOMEPAGE_CA_CERTS": str(pki / "root.crt"),
        **extra,
    }


@pytest.fixture
def homepage(demo_pki: Path) -> Iterator[MakeClient]:
    """homepage(responder, url=, env=, **stub_ctx) -> test client of an app calling a stub."""
    with ExitStack() as stack:

        def make(
            responder: Responder = USERS, *, url: str | None = None, env: Any = None, **ctx: Any
        ) -> FlaskClient:
            if url is None:
                stub = StubServer(server_context(demo_pki, **ctx), responder)
                url = stack.enter_context(serving(stub)).url
            app = create_app(HomePageSettings.from_env(env_for(demo_pki, url, **(env or {}))))
            stack.callback(app.extensions["homepage.userservice"].session.close)
            return app.test_client()

        yield make


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def test_page_shows_the_first_users_name_email_and_phone(homepage: MakeClient) -> None:
    response = homepage().get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = text(response)
    assert '<h1 id="user-name">Ada Lovelace</h1>' in page
    assert '<dd id="user-email">ada@example.org</dd>' in page
    assert '<dd id="user-phone">+44 20 7946 0001</dd>' in page
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"


def test_page_picks_the_user_from_the_query_string_and_escapes_what_it_shows(
    homepage: MakeClient,
) -> None:
    page = text(homepage().get("/?user=2"))

    assert '<h1 id="user-name">&lt;script&gt;alert(1)&lt;/script&gt;</h1>' in page
    assert "<script>" not in page


def test_tls_panel_shows_identities_protocol_and_connection_reuse(homepage: MakeClient) -> None:
    client = homepage()
    first, second = text(client.get("/")), text(client.get("/?user=1"))

    assert 'id="tls-panel"' in first
    assert f'<dd id="tls-client-dn"><code>{HOMEPAGE_DN}</code></dd>' in first
    assert f'<dd id="tls-server-dn"><code>{USERSERVICE_DN}</code></dd>' in first
    assert '<dd id="tls-version">TLSv1.3</dd>' in first
    assert '<dd id="tls-cipher"><code>TLS_' in first
    assert 'id="tls-latency">' in first
    assert 'data-reused="false"' in first
    assert 'data-reused="true"' in second  # the second page load rode the pooled connection


def test_unknown_user_gets_a_friendly_404_page(homepage: MakeClient) -> None:
    response = homepage().get("/?user=9")

    assert response.status_code == 404
    assert '<h1 id="error-headline">There is no user with id 9</h1>' in text(response)


def test_a_user_id_that_is_not_a_number_gets_a_friendly_400_page(homepage: MakeClient) -> None:
    response = homepage().get("/?user=1%20OR%201=1")

    assert response.status_code == 400
    assert "That is not a user id" in text(response)


def test_user_service_down_gives_a_503_page_naming_where_we_looked(
    homepage: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    with closed_port() as port:
        url = f"https://127.0.0.1:{port}"
        with caplog.at_level(logging.WARNING, logger="homepage.upstream"):
            response = homepage(url=url).get("/")

    assert response.status_code == 503
    page = text(response)
    assert f"The User Service is not reachable at {url}" in page
    assert "Traceback" not in page
    assert "Connection refused" in caplog.text  # the cause goes to the log, not the page


def test_user_service_denying_access_gives_a_502_page_quoting_its_answer(
    homepage: MakeClient,
) -> None:
    deny = Reply(403, {"message": "Certificate subject is not recognized!"})
    response = homepage(lambda seen: deny).get("/")

    assert response.status_code == 502
    assert "The User Service denied access: 403 Certificate subject is not recognized!" in text(
        response
    )


@pytest.mark.parametrize(
    ("reply", "headline"),
    [
        (
            Reply(403, {"message": "<b>ask bob</b> at 10.0.0.7"}),
            "The User Service denied access: 403",
        ),
        (Reply(500, {"message": "db at 10.0.0.7 down"}), "The User Service failed: 500"),
        (Reply(418, {"message": "db at 10.0.0.7 teapot"}), "The User Service answered 418"),
    ],
)
def test_no_other_upstream_text_than_a_fixed_policy_message_reaches_the_browser(
    homepage: MakeClient, reply: Reply, headline: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = homepage(lambda seen: reply).get("/")

    page = response.get_data(as_text=True)
    assert response.status_code == 502
    assert f"{headline}</h1>" in page
    assert "10.0.0.7" not in page
    assert "ask bob" not in page
    assert "10.0.0.7" in caplog.text  # the operator still sees it, in the log


def test_user_service_refusing_our_certificate_gives_a_502_page_saying_so(
    homepage: MakeClient,
) -> None:
    response = homepage(trust="rogue-ca.crt").get("/")  # it trusts another CA only

    assert response.status_code == 502
    assert "The User Service refused our client certificate" in text(response)


def test_user_service_with_an_unexpected_dn_gives_a_502_page(homepage: MakeClient) -> None:
    env = {"HOMEPAGE_USERSERVICE_DN": r"CN=other\.internal,.*"}
    response = homepage(env=env).get("/")

    assert response.status_code == 502
    assert "The User Service could not prove its identity" in text(response)


def test_user_service_redirecting_elsewhere_gives_a_502_page_and_nothing_reaches_the_target(
    homepage: MakeClient, demo_pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collector = StubServer(server_context(demo_pki), lambda seen: Reply(200, ADA))
    with serving(collector):
        moved = Reply(302, {}, headers=(("Location", f"{collector.url}/collect"),))
        with caplog.at_level(logging.WARNING, logger="homepage.upstream"):
            response = homepage(lambda seen: moved).get("/")

    page = text(response)
    assert response.status_code == 502
    assert "The User Service redirected us to another server</h1>" in page
    assert collector.url not in page
    assert "Traceback" not in page
    assert (collector.connections, collector.handshake_errors, collector.seen) == (0, [], [])
    assert f"to {collector.url}/collect: another origin" in caplog.text


def test_user_service_too_slow_gives_a_503_page_with_the_timeout(homepage: MakeClient) -> None:
    client = homepage(lambda seen: HANG, env={"HOMEPAGE_READ_TIMEOUT": "0.5"})
    response = client.get("/")

    assert response.status_code == 503
    assert "The User Service did not answer within 0.5 s" in text(response)


def test_a_user_service_that_never_handshakes_gives_a_503_naming_the_connect_timeout(
    homepage: MakeClient,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks TLS
        url = f"https://localhost:{silent.getsockname()[1]}"
        env = {"HOMEPAGE_CONNECT_TIMEOUT": "0.5", "HOMEPAGE_READ_TIMEOUT": "5"}
        response = homepage(url=url, env=env).get("/")
    assert response.status_code == 503
    page = text(response)
    assert "did not complete the TLS handshake within 0.5 s" in page
    assert "did not answer within 5 s" not in page


@pytest.mark.parametrize(
    ("reply", "headline"),
    [
        (Reply(500, {"message": "Internal server error."}), "failed: 500"),
        (Reply(200, b"<html>not json</html>", "text/html"), "sent an answer we could not read"),
        (Reply(200, {"items": [{"id": 1, "name": "No Email"}]}), "sent an answer we could not"),
    ],
    ids=["5xx", "not-json", "missing-fields"],
)
def test_user_service_answering_wrongly_gives_a_502_page(
    homepage: MakeClient, reply: Reply, headline: str
) -> None:
    response = homepage(lambda seen: reply).get("/")

    assert response.status_code == 502
    assert f"The User Service {headline}" in text(response)


def test_internal_status_for_the_ops_dn_reports_versions_certificate_and_upstream(
    homepage: MakeClient,
) -> None:
    response = homepage().get("/internal/status", environ_base={**OPS, "SSL_CLIENT_S_DN": OPS_DN})

    assert response.status_code == 200
    status = response.get_json()
    assert {"python", "flask", "gunicorn", "cryptography"} <= status["versions"].keys()
    assert status["client_certificate"]["subject"] == HOMEPAGE_DN
    assert 300 < status["client_certificate"]["days_left"] <= 366
    upstream = status["userservice"]
    assert (upstream["healthy"], upstream["status"]) == (True, 200)
    assert upstream["server_dn"] == USERSERVICE_DN
    assert upstream["latency_ms"] >= 0


def test_internal_status_reports_an_unreachable_user_service_without_failing(
    homepage: MakeClient,
) -> None:
    with closed_port() as port:
        client = homepage(url=f"https://127.0.0.1:{port}")
        status = client.get("/internal/status", environ_base={**OPS, "SSL_CLIENT_S_DN": OPS_DN})

    assert status.status_code == 200
    assert status.get_json()["userservice"]["healthy"] is False
    assert "not reachable" in status.get_json()["userservice"]["error"]


def test_internal_status_without_a_certificate_is_refused_with_the_exact_body(
    homepage: MakeClient,
) -> None:
    response = homepage().get("/internal/status", environ_base={"HTTPS": "on"})

    assert response.status_code == 403
    assert response.get_data() == b'{"message": "No certificate chain found!"}'


def test_internal_status_for_another_dn_is_refused_with_the_exact_body(
    homepage: MakeClient,
) -> None:
    response = homepage().get(
        "/internal/status", environ_base={**OPS, "SSL_CLIENT_S_DN": HOMEPAGE_DN}
    )

    assert response.status_code == 403
    assert response.get_data() == b'{"message": "Certificate subject is not recognized!"}'


def test_unknown_routes_get_html_for_browsers_and_json_under_internal(
    homepage: MakeClient,
) -> None:
    client = homepage()
    browser = client.get("/nope")
    ops = client.get("/internal/nope", environ_base={**OPS, "SSL_CLIENT_S_DN": OPS_DN})
    wrong_method = client.post("/")

    assert (browser.status_code, browser.mimetype) == (404, "text/html")
    assert (ops.status_code, json.loads(ops.get_data())) == (404, {"message": "Not Found."})
    assert (wrong_method.status_code, wrong_method.mimetype) == (405, "text/html")


def test_stylesheet_is_served_to_browsers_without_a_certificate(homepage: MakeClient) -> None:
    # A static file's response holds the file open until closed.
    with homepage().get("/static/homepage.css") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/css"


def test_settings_report_every_bad_variable_at_once(tmp_path: Path) -> None:
    env = {
        "HOMEPAGE_USERSERVICE_URL": "http://localhost:8443",
        "HOMEPAGE_CLIENT_CERT": str(tmp_path / "missing-chain.crt"),
        "HOMEPAGE_CLIENT_KEY": str(tmp_path / "missing.key"),
        "HOMEPAGE_CA_CERTS": str(tmp_path / "missing-root.crt"),
        "HOMEPAGE_USERSERVICE_DN": "CN=(unclosed",
        "HOMEPAGE_OPS_DN": "",
        "HOMEPAGE_READ_TIMEOUT": "soon",
        "HOMEPAGE_CLIENT_KEY_PASSWORD_FILE": str(tmp_path / "no-password-file"),
    }
    with pytest.raises(ConfigError) as caught:
        HomePageSettings.from_env(env)

    message = str(caught.value)
    for var in env:
        assert var in message
    assert "pki demo --dir pki/out" in message


def test_settings_default_to_the_demo_pki_under_pki_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        HomePageSettings.from_env({})

    assert f"{tmp_path}/pki/out/homepage-chain.crt does not exist" in str(caught.value)
    assert f"{tmp_path}/pki/out/root.crt does not exist" in str(caught.value)


def test_settings_with_a_pkcs12_certificate_need_no_key_file(
    demo_pki: Path, tmp_path: Path
) -> None:
    p12 = tmp_path / "homepage.p12"
    p12.write_bytes(b"parsed later, by mtls.client")
    env = env_for(demo_pki, "https://localhost:8443/", HOMEPAGE_CLIENT_CERT=str(p12))
    env["HOMEPAGE_CLIENT_KEY"] = str(tmp_path / "not-there.key")

    settings = HomePageSettings.from_env(env)

    assert settings.client.key is None
    assert settings.userservice_url == "https://localhost:8443"


def test_app_factory_refuses_to_start_with_a_certificate_it_cannot_load(
    demo_pki: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    env = env_for(demo_pki, "https://localhost:8443", HOMEPAGE_CLIENT_CERT=str(garbage))

    with pytest.raises(ConfigError) as caught:
        create_app(HomePageSettings.from_env(env))

    message = str(caught.value)
    assert message.startswith(
        f"invalid Home Page settings: HOMEPAGE_CLIENT_CERT: {garbage}: no PEM certificate in it"
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("variable", "content", "message"),
    [
        ("HOMEPAGE_CLIENT_KEY", b"garbage\n", ": no PEM private key in it"),
        ("HOMEPAGE_CA_CERTS", b"garbage\n", ": not a PEM certificate bundle"),
        ("HOMEPAGE_CLIENT_KEY", "userservice.key", " does not match the certificate in"),
    ],
)
def test_an_unusable_file_stops_the_app_in_one_line_naming_its_variable(
    demo_pki: Path, tmp_path: Path, variable: str, content: bytes | str, message: str
) -> None:
    path = demo_pki / content if isinstance(content, str) else tmp_path / "file.pem"
    if isinstance(content, bytes):
        path.write_bytes(content)
    env = env_for(demo_pki, "https://localhost:8443", **{variable: str(path)})

    with pytest.raises(ConfigError) as caught:
        create_app(HomePageSettings.from_env(env))

    assert str(caught.value).startswith(f"invalid Home Page settings: {variable}: {path}{message}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("variable", ["HOMEPAGE_CLIENT_CERT", "HOMEPAGE_CA_CERTS"])
def test_a_directory_in_place_of_a_file_is_a_setting_error_naming_it(
    demo_pki: Path, tmp_path: Path, variable: str
) -> None:
    env = env_for(demo_pki, "https://localhost:8443", **{variable: str(tmp_path)})

    with pytest.raises(ConfigError, match=f"{variable}: {tmp_path} is a directory, not a file"):
        HomePageSettings.from_env(env)


def test_a_file_gone_between_settings_and_start_is_blamed_on_its_variable(
    demo_pki: Path, tmp_path: Path
) -> None:
    key = tmp_path / "homepage.key"
    key.write_bytes((demo_pki / "homepage.key").read_bytes())
    settings = HomePageSettings.from_env(
        env_for(demo_pki, "https://localhost:8443", HOMEPAGE_CLIENT_KEY=str(key))
    )
    key.unlink()

    with pytest.raises(ConfigError) as caught:
        create_app(settings)

    assert str(caught.value).startswith(
        f"invalid Home Page settings: HOMEPAGE_CLIENT_KEY: {key} does not exist or is not a file"
    )
