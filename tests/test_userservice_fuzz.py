"""Hypothesis against the User Service's JSON API: whatever arrives, never a 5xx.

Flask's test client with the app factory on a real SQLite file: this is the
app's own input handling (JSON parsing, schemas, pagination, the store), not
TLS, so the mTLS environ keys arrive through ``environ_base`` as the worker
sets them. Each property also checks integrity: a write that was refused
leaves every user as it was, one that was accepted is what a GET returns.
Bounded: ~200 examples per test, no deadline (SQLite commits vary in time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import flask
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from userservice import UserServiceSettings, create_app
from userservice.store import DEMO_USERS

HOMEPAGE = {
    "HTTPS": "on",
    "SSL_CLIENT_VERIFY": "SUCCESS",
    "SSL_CLIENT_S_DN": "CN=homepage.internal,OU=Services,O=Example",
    "REMOTE_ADDR": "192.0.2.10",
}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    # The app is module-scoped on purpose: one database across examples, so
    # accepted writes pile up and later refusals are checked against them.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Values that pass each field's rule, so that accepted writes happen too ...
names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=100).filter(
    str.strip
)
emails = st.sampled_from(["ada@example.org", "grace.hopper@navy.example", "zoe@xn--e1afmkfd.org"])
phones = st.sampled_from(["+44 20 7946 0001", "+12025550103", "+43-1-5550-0105"])
valid_users = st.fixed_dictionaries({"name": names, "email": emails, "phone": phones})
# ... and values that mostly do not.
field_values = (
    st.sampled_from([" ", "", "x" * 101, "Zoë\x00", "Ada \ud800", "not-an-email", "020 7946"])
    | st.text(max_size=120)
    | json_values
)
field_names = st.sampled_from(["name", "email", "phone"]) | st.text(max_size=8)
user_objects = (
    valid_users
    | st.builds(  # a valid user with a field or two replaced, added or dropped
        lambda user, extra, drop: {k: v for k, v in {**user, **extra}.items() if k not in drop},
        valid_users,
        st.dictionaries(field_names, field_values, max_size=2),
        st.sets(st.sampled_from(["name", "email", "phone"]), max_size=1),
    )
    | st.dictionaries(field_names, field_values, max_size=5)
)
changes = valid_users.flatmap(  # a valid PATCH: a non-empty subset of a valid user
    lambda user: st.sets(st.sampled_from(sorted(user)), min_size=1).map(
        lambda keys: {k: user[k] for k in keys}
    )
)
bodies = user_objects | changes | json_values
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "application/x-json"]
)
user_ids = st.sampled_from([1, 2, 3, 4]) | st.integers(min_value=0, max_value=2**70)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> flask.Flask:
    db: Path = tmp_path_factory.mktemp("fuzz") / "u.db"
    return create_app(UserServiceSettings.from_env({"USERSERVICE_DATABASE_URL": f"sqlite:///{db}"}))


def call(app: flask.Flask, method: str, path: str, **kwargs: Any) -> TestResponse:
    return app.test_client().open(path, method=method, environ_base=HOMEPAGE, **kwargs)


def answer(response: TestResponse) -> Any:
    """The JSON body of an answer that is no 5xx; fails the example otherwise."""
    event(f"{response.request.method} {response.status_code}")  # --hypothesis-show-statistics
    assert response.status_code < 500, response.get_data()
    assert response.mimetype == "application/json", response.headers
    return json.loads(response.get_data())


def snapshot(app: flask.Flask) -> list[dict[str, Any]]:
    """Every user, through the API, page by page."""
    users: list[dict[str, Any]] = []
    url: str | None = "/users?limit=100"
    while url is not None:
        page = answer(call(app, "GET", url))
        users += page["items"]
        url = page["next"]
    return users


def encode(body: Any, ascii_only: bool) -> bytes:
    # ensure_ascii=False writes lone surrogates raw; surrogatepass sends them as (bad) UTF-8.
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@FUZZ
@given(body=bodies, ascii_only=st.booleans(), content_type=content_types)
def test_any_json_posted_to_users_is_created_or_refused_cleanly(
    app: flask.Flask, body: Any, ascii_only: bool, content_type: str
) -> None:
    before = snapshot(app)
    response = call(app, "POST", "/users", data=encode(body, ascii_only), content_type=content_type)
    created = answer(response)
    after = snapshot(app)
    if response.status_code == 201:
        assert after == [*before, created]
        assert response.headers["Location"] == f"/users/{created['id']}"
        assert {k: body[k] for k in ("name", "email", "phone")} == {
            k: created[k] for k in ("name", "email", "phone")
        }
    else:
        assert response.status_code == 400
        assert after == before


@FUZZ
@given(
    user_id=user_ids,
    method=st.sampled_from(["PATCH", "PUT"]),
    body=bodies,
    ascii_only=st.booleans(),
)
def test_any_json_sent_to_a_user_changes_it_or_nothing(
    app: flask.Flask, user_id: int, method: str, body: Any, ascii_only: bool
) -> None:
    before = snapshot(app)
    response = call(
        app,
        method,
        f"/users/{user_id}",
        data=encode(body, ascii_only),
        content_type="application/json",
    )
    changed = answer(response)
    after = snapshot(app)
    if response.status_code == 200:
        assert method == "PATCH"
        assert isinstance(body, dict)
        assert changed == {**next(u for u in before if u["id"] == user_id), **body}
        assert after == [changed if u["id"] == user_id else u for u in before]
    else:
        assert response.status_code in (400, 404, 405)
        assert after == before


@FUZZ
@given(
    method=st.sampled_from(["POST", "PATCH", "PUT"]),
    raw=st.binary(max_size=300) | st.builds(lambda b: b"[" * 3000 + b, st.binary(max_size=20)),
    content_type=content_types,
)
def test_any_bytes_as_a_body_are_refused_cleanly(
    app: flask.Flask, method: str, raw: bytes, content_type: str
) -> None:
    before = snapshot(app)
    path = "/users" if method == "POST" else "/users/1"
    response = call(app, method, path, data=raw, content_type=content_type)
    body = answer(response)
    if response.status_code >= 300:
        assert snapshot(app) == before
        assert isinstance(body["message"], str)


@FUZZ
@given(
    params=st.fixed_dictionaries(
        {},
        optional={
            "limit": st.integers(-2, 102).map(str) | st.text(max_size=12),
            "offset": st.integers(-2, 2**32).map(str) | st.text(max_size=12),
        },
    )
    | st.dictionaries(st.text(max_size=6), st.text(max_size=12), max_size=3)
    | st.binary(max_size=60)
)
def test_any_query_string_pages_users_or_is_a_400(
    app: flask.Flask, params: dict[str, str] | bytes
) -> None:
    # As WSGI passes it: QUERY_STRING is bytes decoded as latin-1 (PEP 3333).
    query = params.decode("latin-1") if isinstance(params, bytes) else urlencode(params)
    response = call(app, "GET", "/users", query_string=query)
    page = answer(response)
    if response.status_code == 200:
        assert 1 <= page["limit"] <= 100
        assert page["offset"] >= 0
        assert len(page["items"]) <= page["limit"]
        assert page["total"] >= len(DEMO_USERS)  # nothing here deletes
    else:
        assert response.status_code == 400
        assert page["message"] == "Invalid input."
