"""mtls.flask: Mtls fails closed, require_peer on blueprints and views, report mode, current_peer.

The mTLS keys arrive through ``environ_base`` as the worker sets them; the
rules never look at TLS, only at the environ (the real worker is exercised
end to end in test_wheel_example.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import flask
import pytest
from cryptography import x509
from werkzeug.test import TestResponse

from mtls.errors import PolicyError
from mtls.flask import Mtls, current_peer, mark_public, require_dn, require_peer
from mtls.identity import PEER_ENVIRON_KEY, PeerIdentity

HOMEPAGE_DN = "CN=homepage.internal,OU=Services,O=Example"
BILLING = "spiffe://example.org/ns/prod/sa/billing"
NO_CERT_BODY = b'{"message": "No certificate chain found!"}'
NOT_RECOGNIZED_BODY = b'{"message": "Certificate subject is not recognized!"}'


def peer_environ(dn: str = HOMEPAGE_DN, *uris: str, ou: str = "Services") -> dict[str, Any]:
    environ: dict[str, Any] = {
        "HTTPS": "on",
        "SSL_CLIENT_VERIFY": "SUCCESS",
        "SSL_CLIENT_S_DN": dn,
        "SSL_CLIENT_I_DN": "CN=Example Global CA,O=Example",
        "SSL_CLIENT_S_DN_OU": ou,
        "REMOTE_ADDR": "192.0.2.7",
    }
    environ.update({f"SSL_CLIENT_SAN_URI_{i}": uri for i, uri in enumerate(uris)})
    return environ


NO_CERT = {"HTTPS": "on", "SSL_CLIENT_VERIFY": "NONE", "REMOTE_ADDR": "192.0.2.8"}


def get(app: flask.Flask, path: str, environ: dict[str, Any], method: str = "GET") -> TestResponse:
    return app.test_client().open(path, method=method, environ_base=environ)


def assert_denied(response: TestResponse, body: bytes) -> None:
    assert response.status_code == 403
    assert response.data == body


def make_app(mode: str = "enforce") -> tuple[flask.Flask, Mtls]:
    app = flask.Flask(__name__)
    api = flask.Blueprint("api", __name__, url_prefix="/api")
    require_peer(api, san_uri="spiffe://example.org/ns/*/sa/billing", mode=mode)

    @api.get("/invoices")
    def invoices() -> dict[str, Any]:
        return {"invoices": []}

    @api.get("/admin")
    @require_peer(ou="Ops")
    def admin() -> str:
        return "admin"

    @app.get("/healthz")
    @mark_public(reason="load balancer probe")
    def healthz() -> str:
        return "ok"

    @app.get("/me")
    @require_peer(dn=r"CN=[a-z.]+,OU=Services,O=Example")
    def me() -> str:
        return "me"

    app.register_blueprint(api)
    return app, Mtls(app)


def test_a_blueprint_policy_covers_its_routes_and_its_unrouted_space() -> None:
    app, _ = make_app()
    assert get(app, "/api/invoices", peer_environ(HOMEPAGE_DN, BILLING)).status_code == 200
    other = peer_environ(HOMEPAGE_DN, "spiffe://example.org/ns/a/b/sa/billing")
    assert_denied(get(app, "/api/invoices", other), NOT_RECOGNIZED_BODY)
    assert_denied(get(app, "/api/invoices", NO_CERT), NO_CERT_BODY)
    assert_denied(get(app, "/api/nope", other), NOT_RECOGNIZED_BODY)
    assert_denied(get(app, "/api/invoices", other, "DELETE"), NOT_RECOGNIZED_BODY)
    assert get(app, "/api/nope", peer_environ(HOMEPAGE_DN, BILLING)).status_code == 404


def test_a_view_rule_inside_a_policed_blueprint_must_hold_as_well() -> None:
    app, _ = make_app()
    assert_denied(get(app, "/api/admin", peer_environ(HOMEPAGE_DN, BILLING)), NOT_RECOGNIZED_BODY)
    ops = peer_environ(HOMEPAGE_DN, BILLING, ou="Ops")
    assert get(app, "/api/admin", ops).data == b"admin"


def test_app_level_views_are_policed_or_public_by_decorator() -> None:
    app, _ = make_app()
    assert get(app, "/healthz", {}).data == b"ok"
    assert get(app, "/me", peer_environ()).data == b"me"
    assert_denied(get(app, "/me", peer_environ("CN=x,OU=Services,O=Evil")), NOT_RECOGNIZED_BODY)
    assert_denied(get(app, "/me", NO_CERT, "POST"), NO_CERT_BODY)  # its 405 too


def test_an_endpoint_neither_policed_nor_public_stops_start_up_naming_it() -> None:
    app = flask.Flask(__name__)
    forgotten = flask.Blueprint("forgotten", __name__, url_prefix="/f")
    forgotten.add_url_rule("/data", "data", lambda: "data")
    app.register_blueprint(forgotten)
    app.add_url_rule("/debug", "debug", lambda: "debug")
    with pytest.raises(PolicyError) as info:
        Mtls().init_app(app)
    message = str(info.value)
    assert "policy coverage incomplete (2 endpoint(s), failing closed)" in message
    assert "route '/f/data' (endpoint 'forgotten.data') is neither policed nor public" in message
    assert "route '/debug' (endpoint 'debug') is neither policed nor public" in message
    assert "static" not in message


def test_a_decorator_above_the_route_decorator_leaves_the_route_unpoliced_and_is_caught() -> None:
    app = flask.Flask(__name__)

    @require_peer(dn=".*")
    @app.get("/wrong-order")
    def wrong_order() -> str:
        return "exposed"

    with pytest.raises(PolicyError, match="endpoint 'wrong_order'"):
        Mtls(app)


def test_a_route_added_after_mtls_refuses_every_request_with_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = make_app()
    app.add_url_rule("/late", "late", lambda: "late")
    with caplog.at_level(logging.ERROR, logger="mtls.policy"):
        response = get(app, "/healthz", {})
    assert response.status_code == 503
    assert "endpoint 'late'" in caplog.text


def test_report_mode_serves_logs_the_failing_rule_and_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, ext = make_app(mode="report")
    other = peer_environ(HOMEPAGE_DN, "spiffe://example.org/ns/a/b/sa/billing")
    with caplog.at_level(logging.WARNING, logger="mtls.policy"):
        response = get(app, "/api/invoices", other)
    assert response.status_code == 200
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "report mode" in record.getMessage()
    assert "san_uri: URIs ['spiffe://example.org/ns/a/b/sa/billing']" in record.getMessage()
    get(app, "/api/invoices", peer_environ(HOMEPAGE_DN, BILLING))
    counts = ext.decisions(app)
    assert counts[("api.invoices", "deny", "report")] == 1
    assert counts[("api.invoices", "allow", "report")] == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda app: require_dn(app, "CN=a", setting="X"),
        lambda app: require_peer(app, dn="CN=a"),
        lambda app: mark_public(app, reason="r"),
    ],
    ids=["require_dn", "require_peer", "mark_public"],
)
def test_a_flask_app_where_a_blueprint_belongs_is_a_type_error_with_the_fix(call: Any) -> None:
    app = flask.Flask("myapp")
    with pytest.raises(TypeError, match=r"got the Flask app 'myapp', not a Blueprint") as info:
        call(app)
    assert "put the routes in a flask.Blueprint" in str(info.value)


def test_a_public_view_inside_a_policed_blueprint_is_refused() -> None:
    app = flask.Flask(__name__)
    bp = flask.Blueprint("bp", __name__)
    require_peer(bp, cn="a")

    @bp.get("/x")
    @mark_public(reason="oops")
    def x() -> str:
        return "x"

    app.register_blueprint(bp)
    with pytest.raises(PolicyError, match="is marked public inside blueprint 'bp'"):
        Mtls(app)


def test_a_view_gets_one_decision() -> None:
    def view() -> str:
        return "v"

    mark_public(view, reason="r")
    with pytest.raises(PolicyError, match="already has a policy or is marked public"):
        require_peer(view, cn="a")


def test_a_bad_rule_fails_at_decoration_naming_the_setting() -> None:
    with pytest.raises(PolicyError, match=r"^API_SAN_URI: invalid identity rules"):
        require_peer(flask.Blueprint("b", __name__), san_uri="spiffe://*/x", setting="API_SAN_URI")


def test_current_peer_is_the_verified_identity_or_none(demo_pki: Path) -> None:
    cert = x509.load_pem_x509_certificate((demo_pki / "homepage.crt").read_bytes())
    identity = PeerIdentity.from_certificate(cert)
    app = flask.Flask(__name__)
    seen: list[PeerIdentity | None] = []

    @app.get("/")
    @mark_public(reason="test")
    def index() -> str:
        seen.append(current_peer())
        return "ok"

    Mtls(app)
    get(app, "/", {**peer_environ(), PEER_ENVIRON_KEY: identity})
    get(app, "/", {**peer_environ(), "SSL_CLIENT_VERIFY": "NONE", PEER_ENVIRON_KEY: identity})
    get(app, "/", {})
    assert seen == [identity, None, None]


@pytest.mark.parametrize("endpoint", ["static", "admin.static"])
def test_a_view_merely_named_static_is_not_exempt_from_coverage(endpoint: str) -> None:
    """Hostile review: any endpoint called "static" or "x.static" escaped Mtls(app)."""
    app = flask.Flask(__name__, static_folder=None)
    app.add_url_rule("/admin", endpoint, lambda: "SECRET")
    with pytest.raises(PolicyError, match=r"route '/admin' .* is neither policed nor public"):
        Mtls(app)


def test_flasks_own_static_routes_stay_public(tmp_path: Path) -> None:
    (tmp_path / "style.css").write_text("body {}")
    app = flask.Flask(__name__, static_folder=str(tmp_path))
    bp = flask.Blueprint("docs", __name__, static_folder=str(tmp_path), url_prefix="/docs")
    mark_public(bp, reason="docs")
    app.register_blueprint(bp)
    Mtls(app)  # no error: both static routes are Flask's own, at their own paths
