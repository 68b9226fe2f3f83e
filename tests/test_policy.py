"""DN policy hook on a tiny Flask app, driven through the test client.

The mTLS keys arrive through ``environ_base`` exactly as the worker sets them;
no TLS is mocked because the policy never looks at TLS, only at the environ.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import flask
import pytest
from werkzeug.test import TestResponse

from mtls.errors import PolicyError
from mtls.policy import (
    compile_dn_policy,
    enforce_policy_coverage,
    mark_public,
    require_dn,
    verified_subject,
)

HOMEPAGE_DN = "CN=homepage.internal,OU=Services,O=Example"
HOMEPAGE_POLICY = r"CN=homepage\.internal,OU=Services,O=Example"
NO_CERT_BODY = b'{"message": "No certificate chain found!"}'
NOT_RECOGNIZED_BODY = b'{"message": "Certificate subject is not recognized!"}'


def mtls_environ(dn: str | None = HOMEPAGE_DN, verify: str = "SUCCESS") -> dict[str, Any]:
    environ: dict[str, Any] = {
        "HTTPS": "on",
        "SSL_CLIENT_VERIFY": verify,
        "REMOTE_ADDR": "192.0.2.7",
    }
    if dn is not None:
        environ["SSL_CLIENT_S_DN"] = dn
    return environ


def make_app(pattern: str = HOMEPAGE_POLICY) -> flask.Flask:
    app = flask.Flask(__name__)
    users = flask.Blueprint("users", __name__, url_prefix="/users")
    require_dn(users, pattern, setting="TEST_ALLOWED_DN")

    @users.get("/<int:user_id>")
    def get_user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    whoami = flask.Blueprint("whoami", __name__)
    require_dn(whoami, ".*", setting="TEST_WHOAMI_DN")

    @whoami.get("/whoami")
    def show() -> dict[str, str | None]:
        return {"dn": verified_subject(flask.request.environ)}

    health = flask.Blueprint("health", __name__)
    mark_public(health, reason="load balancer probe")

    @health.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.register_blueprint(users)
    app.register_blueprint(whoami)
    app.register_blueprint(health)
    enforce_policy_coverage(app)
    return app


def get(app: flask.Flask, path: str, environ: dict[str, Any], method: str = "GET") -> TestResponse:
    return app.test_client().open(path, method=method, environ_base=environ)


def assert_denied(response: TestResponse, body: bytes) -> None:
    assert response.status_code == 403
    assert response.mimetype == "application/json"
    assert response.data == body


def test_the_allowed_dn_reaches_the_view() -> None:
    response = get(make_app(), "/users/1", mtls_environ())
    assert response.status_code == 200
    assert response.get_json() == {"id": 1}


@pytest.mark.parametrize(
    "dn",
    [
        HOMEPAGE_DN + ",O=Evil",
        "CN=evil," + HOMEPAGE_DN,
        "CN=homepage.internal,OU=Services,O=Example2",
        "CN=homepageXinternal,OU=Services,O=Example",
        HOMEPAGE_DN + "\n",
    ],
)
def test_a_dn_that_only_contains_the_allowed_one_is_not_recognized(dn: str) -> None:
    assert_denied(get(make_app(), "/users/1", mtls_environ(dn)), NOT_RECOGNIZED_BODY)


def test_a_pattern_without_anchors_still_has_to_match_the_whole_dn() -> None:
    app = make_app("CN=homepage")
    assert_denied(get(app, "/users/1", mtls_environ()), NOT_RECOGNIZED_BODY)
    assert get(app, "/users/1", mtls_environ("CN=homepage")).status_code == 200


def test_an_escaped_comma_inside_a_cn_is_matched_literally() -> None:
    app = make_app(r"CN=Smith\\, John,OU=People,O=Example")
    assert (
        get(app, "/users/1", mtls_environ(r"CN=Smith\, John,OU=People,O=Example")).status_code
        == 200
    )
    # The unescaped comma would make "John" a separate (bogus) RDN: not the same subject.
    denied = get(app, "/users/1", mtls_environ("CN=Smith, John,OU=People,O=Example"))
    assert_denied(denied, NOT_RECOGNIZED_BODY)


def test_an_escaped_comma_cannot_smuggle_a_suffix_past_a_cn_wildcard() -> None:
    app = make_app(r"CN=[^,]+,OU=Services,O=Example")
    evil = r"CN=x\,OU=Services\,O=Example,OU=Evil,O=Evil"
    assert_denied(get(app, "/users/1", mtls_environ(evil)), NOT_RECOGNIZED_BODY)


def test_a_multi_valued_rdn_must_be_allowed_explicitly() -> None:
    dn = "CN=a+UID=b,OU=Services,O=Example"
    assert_denied(
        get(make_app(r"CN=a,OU=Services,O=Example"), "/users/1", mtls_environ(dn)),
        NOT_RECOGNIZED_BODY,
    )
    allowed = make_app(r"CN=a\+UID=b,OU=Services,O=Example")
    assert get(allowed, "/users/1", mtls_environ(dn)).status_code == 200


def test_an_email_address_in_the_dn_is_part_of_what_must_match() -> None:
    dn = "emailAddress=ops@example.com,CN=ops,O=Example"
    app = make_app(r"emailAddress=ops@example\.com,CN=ops,O=Example")
    assert get(app, "/users/1", mtls_environ(dn)).status_code == 200
    assert_denied(
        get(make_app(r"CN=ops,O=Example"), "/users/1", mtls_environ(dn)), NOT_RECOGNIZED_BODY
    )


def test_an_unverified_client_gets_no_certificate_chain_found() -> None:
    response = get(make_app(), "/users/1", mtls_environ(dn=None, verify="NONE"))
    assert_denied(response, NO_CERT_BODY)


def test_a_dn_without_a_successful_verification_is_not_trusted() -> None:
    response = get(make_app(), "/users/1", mtls_environ(verify="FAILED"))
    assert_denied(response, NO_CERT_BODY)


def test_missing_mtls_keys_fail_closed_and_log_that_the_worker_is_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="mtls.policy"):
        response = get(make_app(), "/users/1", {"REMOTE_ADDR": "192.0.2.9"})
    assert_denied(response, NO_CERT_BODY)
    [record] = [r for r in caplog.records if r.name == "mtls.policy"]
    assert record.levelno == logging.ERROR
    assert "mtls.worker.MtlsWorker" in record.getMessage()


def test_a_denial_is_logged_with_dn_blueprint_path_and_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="mtls.policy"):
        get(make_app(), "/users/1", mtls_environ("CN=eventservice.internal,O=Example"))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    for part in ("'CN=eventservice.internal,O=Example'", "'users'", "/users/1", "192.0.2.7"):
        assert part in message


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/users/nope/x"), ("GET", "/users"), ("DELETE", "/users/1"), ("DELETE", "/whoami")],
)
def test_unrouted_requests_inside_a_policed_space_are_403_for_strangers(
    method: str, path: str
) -> None:
    app = make_app()
    assert_denied(get(app, path, {"HTTPS": "on"}, method), NO_CERT_BODY)
    if path != "/whoami":
        stranger = mtls_environ("CN=eventservice.internal,O=Example")
        assert_denied(get(app, path, stranger, method), NOT_RECOGNIZED_BODY)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/users/nope/x", 404), ("DELETE", "/users/1", 405), ("DELETE", "/whoami", 405)],
)
def test_unrouted_requests_inside_a_policed_space_are_plain_404_405_for_the_allowed(
    method: str, path: str, status: int
) -> None:
    assert get(make_app(), path, mtls_environ(), method).status_code == status


def test_a_public_blueprint_needs_no_certificate_and_paths_outside_stay_404() -> None:
    app = make_app()
    assert get(app, "/healthz", {}).get_json() == {"status": "ok"}
    assert get(app, "/healthz", {}, "POST").status_code == 405
    assert get(app, "/nowhere", {}).status_code == 404
    assert get(app, "/usersX", {}).status_code == 404


def test_a_bad_regex_is_a_policy_error_naming_the_setting() -> None:
    with pytest.raises(PolicyError, match=r"^TEST_ALLOWED_DN='CN=\(' is not a valid regular"):
        compile_dn_policy("CN=(", setting="TEST_ALLOWED_DN")
    with pytest.raises(PolicyError, match=r"^TEST_ALLOWED_DN is empty"):
        require_dn(flask.Blueprint("x", __name__), "  ", setting="TEST_ALLOWED_DN")


def test_a_compiled_pattern_is_accepted_as_is() -> None:
    app = flask.Flask(__name__)
    bp = flask.Blueprint("bp", __name__, url_prefix="/bp")
    require_dn(bp, re.compile("CN=a"), setting="X")
    bp.add_url_rule("/", "index", lambda: "hi")
    app.register_blueprint(bp)
    enforce_policy_coverage(app)
    assert get(app, "/bp/", mtls_environ("CN=a")).data == b"hi"


def test_an_uncovered_blueprint_or_bare_route_stops_the_app_from_starting() -> None:
    app = flask.Flask(__name__)
    forgotten = flask.Blueprint("forgotten", __name__)
    forgotten.add_url_rule("/f", "f", lambda: "f")
    app.register_blueprint(forgotten)
    app.add_url_rule("/bare", "bare", lambda: "bare")
    with pytest.raises(PolicyError) as excinfo:
        enforce_policy_coverage(app)
    message = str(excinfo.value)
    assert "route '/f' (endpoint 'forgotten.f') is neither policed nor public" in message
    assert "on blueprint 'forgotten'" in message
    assert "route '/bare' (endpoint 'bare') is neither policed nor public" in message


def test_a_nested_blueprint_inherits_its_parents_policy() -> None:
    app = flask.Flask(__name__)
    api = flask.Blueprint("api", __name__, url_prefix="/api")
    require_dn(api, HOMEPAGE_POLICY, setting="X")
    child = flask.Blueprint("child", __name__, url_prefix="/child")
    child.add_url_rule("/", "index", lambda: "child")
    api.register_blueprint(child)
    app.register_blueprint(api)
    enforce_policy_coverage(app)
    assert get(app, "/api/child/", mtls_environ()).data == b"child"
    assert_denied(get(app, "/api/child/", mtls_environ("CN=x")), NOT_RECOGNIZED_BODY)
    assert_denied(get(app, "/api/child/nope", mtls_environ("CN=x")), NOT_RECOGNIZED_BODY)


def test_a_blueprint_cannot_be_both_policed_and_public() -> None:
    bp = flask.Blueprint("both", __name__)
    mark_public(bp, reason="browser page")
    with pytest.raises(PolicyError, match="'both' already has a DN policy or is marked public"):
        require_dn(bp, "CN=a", setting="X")


def test_verified_subject_needs_success_and_a_dn() -> None:
    assert verified_subject(mtls_environ()) == HOMEPAGE_DN
    assert verified_subject(mtls_environ(verify="NONE")) is None
    assert verified_subject(mtls_environ(dn="")) is None
    assert verified_subject({}) is None
