"""USERSERVICE_ALLOWED_SAN_URI and USERSERVICE_POLICY_MODE: /users by DN and SPIFFE ID (SPEC)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from mtls.errors import ConfigError
from userservice import UserServiceSettings, create_app
from userservice.access import UsersAccess

HOME_ID = "spiffe://example.org/ns/web/sa/homepage"
HOMEPAGE: dict[str, Any] = {
    "HTTPS": "on",
    "SSL_CLIENT_VERIFY": "SUCCESS",
    "SSL_CLIENT_S_DN": "CN=homepage.internal,OU=Services,O=Example",
    "REMOTE_ADDR": "192.0.2.10",
}
WITH_ID = {**HOMEPAGE, "SSL_CLIENT_SAN_URI_0": HOME_ID}
WRONG_ID = {**HOMEPAGE, "SSL_CLIENT_SAN_URI_0": "spiffe://example.org/ns/web/sa/other"}
NOT_RECOGNIZED_BODY = b'{"message": "Certificate subject is not recognized!"}'


def status(db: Path, environ: dict[str, Any], **env: str) -> int:
    full = {"USERSERVICE_DATABASE_URL": f"sqlite:///{db}", **env}
    app = create_app(UserServiceSettings.from_env(full), UsersAccess.from_env(full))
    response = app.test_client().get("/users/1", environ_base=environ)
    if response.status_code == 403:
        assert response.data == NOT_RECOGNIZED_BODY
    return response.status_code


def test_unset_means_the_dn_alone_decides(tmp_path: Path) -> None:
    assert UsersAccess.from_env({}) == UsersAccess((), "enforce")
    assert status(tmp_path / "u.db", HOMEPAGE) == 200


def test_a_spiffe_id_list_is_required_in_addition_to_the_dn(tmp_path: Path) -> None:
    env = {"USERSERVICE_ALLOWED_SAN_URI": f"spiffe://example.org/ns/ops/sa/x, {HOME_ID}"}
    db = tmp_path / "u.db"
    assert status(db, WITH_ID, **env) == 200
    assert status(db, HOMEPAGE, **env) == 403
    assert status(db, WRONG_ID, **env) == 403
    stranger = {**WITH_ID, "SSL_CLIENT_S_DN": "CN=eventservice.internal,OU=Services,O=Example"}
    assert status(db, stranger, **env) == 403


def test_report_mode_serves_the_would_be_denial_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"USERSERVICE_ALLOWED_SAN_URI": HOME_ID, "USERSERVICE_POLICY_MODE": "report"}
    with caplog.at_level(logging.WARNING, logger="mtls.policy"):
        assert status(tmp_path / "u.db", WRONG_ID, **env) == 200
    assert "report mode, served what enforce would deny" in caplog.text
    assert "USERSERVICE_ALLOWED_SAN_URI (san_uri:" in caplog.text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"USERSERVICE_ALLOWED_SAN_URI": "spiffe://*/x"}, "USERSERVICE_ALLOWED_SAN_URI: invalid"),
        ({"USERSERVICE_ALLOWED_SAN_URI": "a,"}, "san_uri entry '' is empty"),
        ({"USERSERVICE_POLICY_MODE": "dry-run"}, "USERSERVICE_POLICY_MODE='dry-run' is not one"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        UsersAccess.from_env(env)
    assert message in str(info.value)
