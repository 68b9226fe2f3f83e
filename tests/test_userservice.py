"""The User Service through Flask's test client, on real SQLite files and a real PostgreSQL.

Every test that touches the store runs on both backends (the ``database_url``
fixture): the same answers, the same ids and order, the same concurrency
guarantees. The PostgreSQL one is reached over mutual TLS (tests/postgres.py).

The worker that sets the mTLS environ keys in production is tested on real
sockets elsewhere; here they arrive through ``environ_base`` exactly as the
worker sets them. End-to-end tests through gunicorn live in test_e2e_*.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sqlite3
import sys
from collections.abc import Iterator, Mapping
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import flask
import pytest
from cryptography import x509
from werkzeug.test import TestResponse

from mtls.errors import ConfigError, PolicyError
from mtls.identity import PEER_ENVIRON_KEY, PeerIdentity
from mtls.policy import enforce_policy_coverage
from tests.stores import run_sql, settings_for, store_of
from userservice import UserServiceSettings, create_app
from userservice.settings import SqliteDatabase
from userservice.store import DEMO_USERS, open_store

HOMEPAGE = {
    "HTTPS": "on",
    "SSL_CLIENT_VERIFY": "SUCCESS",
    "SSL_CLIENT_S_DN": "CN=homepage.internal,OU=Services,O=Example",
    "REMOTE_ADDR": "192.0.2.10",
}
EVENTSERVICE = {**HOMEPAGE, "SSL_CLIENT_S_DN": "CN=eventservice.internal,OU=Services,O=Example"}
NO_CERT = {"HTTPS": "on", "SSL_CLIENT_VERIFY": "NONE", "REMOTE_ADDR": "192.0.2.11"}
NO_CERT_BODY = b'{"message": "No certificate chain found!"}'
NOT_RECOGNIZED_BODY = b'{"message": "Certificate subject is not recognized!"}'
ADA = {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0001"}
NEW_USER = {"name": "Hedy Lamarr", "email": "hedy@example.com", "phone": "+43 1 5550 0105"}


@pytest.fixture
def app(make_app: Any) -> flask.Flask:
    built: flask.Flask = make_app()
    return built


def call(
    app: flask.Flask,
    method: str,
    path: str,
    environ: Mapping[str, object] = HOMEPAGE,
    **kwargs: Any,
) -> TestResponse:
    return app.test_client().open(path, method=method, environ_base=dict(environ), **kwargs)


def errors_of(response: TestResponse) -> Any:
    assert response.status_code == 400
    body = response.get_json()
    assert body["message"] == "Invalid input."
    return body["errors"]


# --- the happy paths -------------------------------------------------------------------


def test_the_homepage_gets_a_seeded_user(app: flask.Flask) -> None:
    response = call(app, "GET", "/users/1")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == ADA


def test_the_first_page_lists_users_with_total_and_a_next_link(app: flask.Flask) -> None:
    body = call(app, "GET", "/users?limit=2").get_json()
    assert [user["id"] for user in body["items"]] == [1, 2]
    assert body["items"][0] == ADA
    assert (body["total"], body["limit"], body["offset"]) == (len(DEMO_USERS), 2, 0)
    assert body["next"] == "/users?limit=2&offset=2"


def test_the_last_page_has_no_next_link(app: flask.Flask) -> None:
    body = call(app, "GET", "/users?limit=2&offset=2").get_json()
    assert [user["id"] for user in body["items"]] == [3, 4]
    assert body["next"] is None
    assert call(app, "GET", "/users?offset=50").get_json()["items"] == []


def test_the_default_page_is_twenty_users(app: flask.Flask) -> None:
    body = call(app, "GET", "/users").get_json()
    assert (body["limit"], body["offset"], body["next"]) == (20, 0, None)
    assert len(body["items"]) == len(DEMO_USERS)


def test_creating_a_user_answers_201_with_its_location(app: flask.Flask) -> None:
    response = call(app, "POST", "/users", json=NEW_USER)
    assert response.status_code == 201
    assert response.headers["Location"] == "/users/5"
    assert response.get_json() == {"id": 5, **NEW_USER}
    assert call(app, "GET", "/users/5").get_json() == {"id": 5, **NEW_USER}


def test_a_patch_changes_only_the_fields_it_names(app: flask.Flask) -> None:
    response = call(app, "PATCH", "/users/1", json={"phone": "+44-20-7946-0099"})
    assert response.status_code == 200
    assert response.get_json() == {**ADA, "phone": "+44-20-7946-0099"}
    assert call(app, "GET", "/users/1").get_json() == {**ADA, "phone": "+44-20-7946-0099"}


def test_deleting_a_user_answers_204_and_it_is_gone(app: flask.Flask) -> None:
    response = call(app, "DELETE", "/users/2")
    assert response.status_code == 204
    assert response.data == b""
    assert call(app, "GET", "/users/2").status_code == 404


def test_whoami_shows_any_verified_caller_what_the_server_sees(
    app: flask.Flask, demo_pki: Path
) -> None:
    cert = x509.load_pem_x509_certificate((demo_pki / "eventservice.crt").read_bytes())
    peer = PeerIdentity.from_certificate(cert)
    environ = {
        **EVENTSERVICE,
        PEER_ENVIRON_KEY: peer,
        "REMOTE_PORT": "50123",
        "SSL_CLIENT_V_REMAIN": "300",
        "SSL_PROTOCOL": "TLSv1.3",
        "SSL_CIPHER": "TLS_AES_256_GCM_SHA384",
        "SSL_TLS_SNI": "localhost",
        "SSL_SESSION_RESUMED": "Resumed",
    }
    response = call(app, "GET", "/whoami", environ)
    assert response.status_code == 200
    assert response.get_json() == {
        "subject_dn": "CN=eventservice.internal,OU=Services,O=Example",
        "issuer_dn": "CN=Example Global CA,O=Example",
        "serial": peer.serial,
        "not_before": f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%S}Z",
        "not_after": f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%S}Z",
        "days_left": 300,
        "san_dns": ["eventservice.internal"],
        "san_uri": [],
        "san_email": [],
        "verify": "SUCCESS",
        "remote_addr": "192.0.2.10",
        "remote_port": 50123,
        "protocol": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "sni": "localhost",
        "session_resumed": True,
    }


def test_healthz_is_ok_without_any_certificate(app: flask.Flask) -> None:
    response = call(app, "GET", "/healthz", {})
    # Not under the mTLS worker (Flask's test client): there is no TLS state to judge.
    assert (response.status_code, response.get_json()) == (200, {"status": "ok", "database": "ok"})


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/users/1"), ("GET", "/users"), ("DELETE", "/users/1"), ("GET", "/users/x/y")],
)
def test_the_users_api_refuses_other_services_and_anonymous_callers(
    app: flask.Flask, method: str, path: str
) -> None:
    for environ, body in ((EVENTSERVICE, NOT_RECOGNIZED_BODY), (NO_CERT, NO_CERT_BODY)):
        response = call(app, method, path, environ)
        assert (response.status_code, response.mimetype) == (403, "application/json")
        assert response.data == body


def test_whoami_refuses_a_caller_without_a_verified_certificate(app: flask.Flask) -> None:
    response = call(app, "GET", "/whoami", NO_CERT)
    assert (response.status_code, response.data) == (403, NO_CERT_BODY)
    assert call(app, "DELETE", "/whoami", NO_CERT).data == NO_CERT_BODY


def test_a_refused_caller_gets_403_before_its_oversized_body_is_read(app: flask.Flask) -> None:
    response = call(app, "POST", "/users", EVENTSERVICE, data="x" * 20000)
    assert (response.status_code, response.data) == (403, NOT_RECOGNIZED_BODY)


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_an_unknown_user_is_404_with_a_json_message(app: flask.Flask, method: str) -> None:
    response = call(app, method, "/users/999", json={"name": "X"})
    assert (response.status_code, response.mimetype) == (404, "application/json")
    assert response.data == b'{"message": "No user with id 999."}'


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize("user_id", ["9223372036854775808", "99999999999999999999"])
def test_an_id_beyond_sqlites_64_bit_range_is_a_json_404_not_a_500(
    app: flask.Flask, method: str, user_id: str
) -> None:
    response = call(app, method, f"/users/{user_id}", json={"name": "X"})
    assert (response.status_code, response.mimetype) == (404, "application/json")
    assert response.get_json() == {"message": f"No user with id {user_id}."}


def test_the_largest_64_bit_id_is_looked_up_like_any_other(app: flask.Flask) -> None:
    response = call(app, "GET", "/users/9223372036854775807")
    assert response.get_json() == {"message": "No user with id 9223372036854775807."}


def test_an_unknown_path_is_a_json_404(app: flask.Flask) -> None:
    response = call(app, "GET", "/nowhere")
    assert (response.status_code, response.data) == (404, b'{"message": "Not Found."}')


def test_a_wrong_method_is_a_json_405_with_allow(app: flask.Flask) -> None:
    response = call(app, "PUT", "/users/1", json=NEW_USER)
    assert (response.status_code, response.data) == (405, b'{"message": "Method Not Allowed."}')
    assert set(response.headers["Allow"].split(", ")) == {
        "GET",
        "HEAD",
        "OPTIONS",
        "PATCH",
        "DELETE",
    }


def test_a_body_over_the_limit_is_a_json_413(make_app: Any) -> None:
    app = make_app(USERSERVICE_MAX_BODY="256")
    oversized = {**NEW_USER, "name": "x" * 300}
    response = call(app, "POST", "/users", json=oversized)
    assert (response.status_code, response.data) == (
        413,
        b'{"message": "Request body exceeds 256 bytes."}',
    )
    assert call(app, "POST", "/users", json=NEW_USER).status_code == 201


def test_an_unexpected_error_is_a_json_500_without_traceback_but_logged(
    app: flask.Flask, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    run_sql(database_url, "DROP TABLE users")
    with caplog.at_level(logging.ERROR):
        response = call(app, "GET", "/users/1")
    assert (response.status_code, response.data) == (500, b'{"message": "Internal server error."}')
    [record] = [r for r in caplog.records if r.exc_info]
    message = str(record.exc_info[1])  # type: ignore[index]
    assert "no such table: users" in message or 'relation "users" does not exist' in message


def test_healthz_is_503_when_the_database_does_not_answer(
    app: flask.Flask, database_url: str
) -> None:
    run_sql(database_url, "DROP TABLE users")
    response = call(app, "GET", "/healthz", {})
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "fail",
        "database": "unavailable",
        "message": "The database does not answer.",
    }


# --- bad input --------------------------------------------------------------------------


def test_malformed_json_is_a_400_saying_where(app: flask.Flask) -> None:
    response = call(app, "POST", "/users", data='{"name": ', content_type="application/json")
    assert errors_of(response) == {
        "_schema": ["Malformed JSON: Expecting value: line 1 column 10 (char 9)."]
    }


def test_nan_is_not_json(app: flask.Flask) -> None:
    response = call(app, "POST", "/users", data="NaN", content_type="application/json")
    assert errors_of(response) == {"_schema": ["Malformed JSON: NaN is not JSON."]}


def test_a_body_that_is_not_declared_as_json_is_a_400(app: flask.Flask) -> None:
    response = call(app, "POST", "/users", data=json.dumps(NEW_USER), content_type="text/plain")
    assert errors_of(response) == {"_schema": ["Content-Type must be application/json."]}


def test_a_json_array_instead_of_an_object_is_a_400(app: flask.Flask) -> None:
    assert errors_of(call(app, "POST", "/users", json=[NEW_USER])) == {
        "_schema": ["Invalid input type."]
    }


def test_every_field_problem_is_reported_at_once(app: flask.Flask) -> None:
    response = call(app, "POST", "/users", json={"name": 5, "email": "nope", "role": "admin"})
    assert errors_of(response) == {
        "name": ["Not a valid string."],
        "email": ["Not a valid email address."],
        "phone": ["Missing data for required field."],
        "role": ["Unknown field."],
    }


@pytest.mark.parametrize(
    ("name", "messages"),
    [
        ("", ["Length must be between 1 and 100.", "Name must contain a non-space character."]),
        ("   ", ["Name must contain a non-space character."]),
        ("x" * 101, ["Length must be between 1 and 100."]),
        ("Ada\nLovelace", ["Name must not contain control characters."]),
    ],
)
def test_a_name_must_be_1_to_100_printable_characters(
    app: flask.Flask, name: str, messages: list[str]
) -> None:
    response = call(app, "POST", "/users", json={**NEW_USER, "name": name})
    assert errors_of(response) == {"name": messages}


@pytest.mark.parametrize(
    "phone", ["+44 20 7946 0001", "+12025550103", "+1-202-555-0103", "+4930123456"]
)
def test_an_international_phone_number_is_accepted(app: flask.Flask, phone: str) -> None:
    assert call(app, "POST", "/users", json={**NEW_USER, "phone": phone}).status_code == 201


@pytest.mark.parametrize(
    "phone",
    [
        "020 7946 0001",
        "+0 20 7946 0001",
        "+44 (20) 7946 0001",
        "+44  20 7946",
        "+1 555",
        "+1234567890123456",
        "+44 20 7946 0001 ",
        "tel:+442079460001",
    ],
)
def test_a_phone_number_outside_the_rule_is_refused(app: flask.Flask, phone: str) -> None:
    response = call(app, "POST", "/users", json={**NEW_USER, "phone": phone})
    assert errors_of(response) == {
        "phone": [
            "Not a valid phone number: use + and the country code, 8-15 digits, "
            "optionally grouped by single spaces or hyphens, e.g. +44 20 7946 0001."
        ]
    }


def test_a_patch_validates_the_fields_it_has_and_refuses_unknown_ones(app: flask.Flask) -> None:
    response = call(app, "PATCH", "/users/1", json={"email": "not-mail", "admin": True})
    assert errors_of(response) == {
        "email": ["Not a valid email address."],
        "admin": ["Unknown field."],
    }
    assert call(app, "GET", "/users/1").get_json() == ADA


def test_an_empty_patch_is_refused(app: flask.Flask) -> None:
    errors = errors_of(call(app, "PATCH", "/users/1", json={}))
    assert errors == {"_schema": ["Provide at least one of: name, email, phone."]}


def test_a_null_field_is_refused(app: flask.Flask) -> None:
    errors = errors_of(call(app, "PATCH", "/users/1", json={"name": None}))
    assert errors == {"name": ["Field may not be null."]}


WRITES = pytest.mark.parametrize(("method", "path"), [("POST", "/users"), ("PATCH", "/users/1")])


@WRITES
@pytest.mark.parametrize("body", ["[" * 5000, '{"a":' * 3000, "[" * 2000 + "]" * 2000])
def test_deeply_nested_json_is_a_400_not_a_500(
    app: flask.Flask, method: str, path: str, body: str
) -> None:
    response = call(app, method, path, data=body, content_type="application/json")
    assert errors_of(response) == {"_schema": ["Malformed JSON: nested too deeply."]}
    assert call(app, "GET", "/users/1").get_json() == ADA


@WRITES
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("1" * 5000, "Malformed JSON: Exceeds the limit (4300 digits)"),
        ('{"name": 1e999}', "Not a valid string."),
        (b'{"name": "\xc3\x28"}', "Malformed JSON: 'utf-8' codec can't decode"),
        (b'{"name": "\xed\xa0\x80"}', "Not valid Unicode"),  # json decodes surrogatepass
        ("[]", "Invalid input type."),
        ('"Ada"', "Invalid input type."),
        ("null", "Invalid input type."),
        ("12", "Invalid input type."),
        ('{"name": "A", "name": "B"}', "Malformed JSON: repeated name in an object: 'name'."),
    ],
    ids=[
        "huge-int", "huge-float", "bad-utf8", "utf8-surrogate", "array", "string", "null",
        "number", "repeated-name",
    ],
)  # fmt: skip
def test_odd_json_is_a_400_naming_the_problem(
    app: flask.Flask, method: str, path: str, body: str | bytes, error: str
) -> None:
    response = call(app, method, path, data=body, content_type="application/json")
    messages = [m for field in errors_of(response).values() for m in field]
    assert any(m.startswith(error) for m in messages), messages
    assert call(app, "GET", "/users/1").get_json() == ADA


@WRITES
@pytest.mark.parametrize("field", ["name", "email", "phone"])
def test_a_lone_surrogate_is_refused_in_every_field(
    app: flask.Flask, method: str, path: str, field: str
) -> None:
    value = {"name": "Ada \ud800", "email": "ada@\ud800.org", "phone": "+44 20 7946 \ud800"}
    body = json.dumps({**NEW_USER, field: value[field]})  # ensure_ascii: the \ud800 escape
    response = call(app, method, path, data=body, content_type="application/json")
    assert field in errors_of(response)
    assert call(app, "GET", "/users/1").get_json() == ADA
    assert call(app, "GET", "/users").get_json()["total"] == len(DEMO_USERS)


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        (
            "limit=0",
            {"limit": ["Must be greater than or equal to 1 and less than or equal to 100."]},
        ),
        (
            "limit=101",
            {"limit": ["Must be greater than or equal to 1 and less than or equal to 100."]},
        ),
        ("limit=ten", {"limit": ["Not a valid integer."]}),
        (
            "offset=-1",
            {
                "offset": [
                    "Must be greater than or equal to 0 and less than or equal to 2147483648."
                ]
            },
        ),
        ("page=2", {"page": ["Unknown field."]}),
    ],
)
def test_pagination_parameters_are_bounded(
    app: flask.Flask, query: str, errors: dict[str, list[str]]
) -> None:
    assert errors_of(call(app, "GET", f"/users?{query}")) == errors


# --- storage ----------------------------------------------------------------------------


def test_the_database_is_created_in_wal_mode_with_its_directory(tmp_path: Path) -> None:
    db = tmp_path / "var" / "nested" / "u.db"
    create_app(settings_for(db))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT name, email, phone FROM users ORDER BY id").fetchall() == list(
            DEMO_USERS
        )


def test_demo_users_are_seeded_once_not_again_after_they_are_deleted(make_app: Any) -> None:
    app = make_app()
    for user_id in range(1, len(DEMO_USERS) + 1):
        assert call(app, "DELETE", f"/users/{user_id}").status_code == 204
    restarted = make_app()
    assert call(restarted, "GET", "/users").get_json()["total"] == 0


def test_the_default_database_is_var_userservice_db_under_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = UserServiceSettings.from_env({})
    assert settings.database == SqliteDatabase(tmp_path / "var" / "userservice.db", timeout=5.0)
    assert settings.max_body == 16384
    assert settings.allowed_dn.pattern == r"CN=homepage\.internal,OU=Services,O=Example"
    absolute = UserServiceSettings.from_env({"USERSERVICE_DATABASE_URL": "sqlite:////srv/u.db"})
    assert absolute.database == SqliteDatabase(Path("/srv/u.db"))


def test_every_bad_setting_is_reported_at_once_naming_its_variable() -> None:
    with pytest.raises(ConfigError) as excinfo:
        UserServiceSettings.from_env(
            {
                "USERSERVICE_ALLOWED_DN": "CN=(homepage",
                "USERSERVICE_DATABASE_URL": "postgresql://app@db.internal/users?sslmode=require",
                "USERSERVICE_MAX_BODY": "lots",
            }
        )
    lines = str(excinfo.value).splitlines()
    assert lines[0] == "invalid User Service settings:"
    assert lines[1].startswith("  - USERSERVICE_ALLOWED_DN='CN=(homepage' is not a valid regular")
    assert lines[3] == (
        "  - USERSERVICE_DATABASE_URL (app@db.internal:5432/users): sslmode=require: must be "
        "sslmode=verify-full (TLS with the server's certificate and host name checked); "
        "sslrootcert is missing: give the path of the PEM file; "
        "sslcert is missing: give the path of the PEM file; "
        "sslkey is missing: give the path of the PEM file"
    )
    assert lines[2] == "  - USERSERVICE_MAX_BODY='lots' is not a whole number of bytes"


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///u.db?mode=ro", "mongodb://x"],
)
def test_a_database_url_that_names_no_sqlite_file_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="USERSERVICE_DATABASE_URL"):
        UserServiceSettings.from_env({"USERSERVICE_DATABASE_URL": url})


def test_an_unopenable_database_stops_the_app_naming_the_variable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"^USERSERVICE_DATABASE_URL: cannot open the SQLite"):
        create_app(settings_for(tmp_path / "file" / "u.db"))


def test_the_allowed_dn_setting_decides_who_may_use_the_api(make_app: Any) -> None:
    app = make_app(USERSERVICE_ALLOWED_DN=r"CN=eventservice\.internal,.*")
    assert call(app, "GET", "/users/1", EVENTSERVICE).status_code == 200
    assert call(app, "GET", "/users/1", HOMEPAGE).data == NOT_RECOGNIZED_BODY


def test_an_empty_allowed_dn_stops_the_app_naming_the_variable(db: Path) -> None:
    with pytest.raises(ConfigError, match="USERSERVICE_ALLOWED_DN is empty"):
        settings_for(db, USERSERVICE_ALLOWED_DN="")


def test_every_blueprint_of_the_app_is_policed_or_public(app: flask.Flask) -> None:
    assert set(app.blueprints) == {"users", "whoami", "health"}
    app.add_url_rule("/debug", "debug", lambda: "oops")
    with pytest.raises(PolicyError, match="route '/debug'"):
        enforce_policy_coverage(app)


# --- concurrency: several processes, each with its own connections ---------------------


WRITERS = 4
_start: Any = None  # the barrier, in each pool process


def _wait_for_all(barrier: Any) -> None:
    global _start
    _start = barrier


def _patch_many(url: str, worker: int, count: int) -> list[int]:
    app = create_app(settings_for(url))
    _start.wait(timeout=30)
    field = "name" if worker % 2 else "phone"
    statuses = []
    for n in range(count):
        value = f"Worker {worker} {n}" if field == "name" else f"+44 20 7946 {worker}{n:03d}"
        statuses.append(call(app, "PATCH", "/users/1", json={field: value}).status_code)
    store_of(app).close()
    return statuses


def _create_many(url: str, worker: int, count: int) -> list[int]:
    app = create_app(settings_for(url))
    _start.wait(timeout=30)
    ids = []
    for n in range(count):
        user = {**NEW_USER, "name": f"Worker {worker} user {n}"}
        response = call(app, "POST", "/users", json=user)
        assert response.status_code == 201
        ids.append(response.get_json()["id"])
    store_of(app).close()
    return ids


def _open_store(url: str) -> int:
    _start.wait(timeout=30)
    open_store(settings_for(url).database).close()
    return 0


@pytest.fixture(scope="module")
def processes() -> Iterator[Pool]:
    """``WRITERS`` separate processes, released together for each batch of tasks.

    spawn: each process imports afresh and opens its own connections, as
    separate gunicorn workers do; nothing is inherited through fork. The
    (cyclic) barrier lines the processes up after their setup so that their
    writes really overlap; since a process blocks at it, each of a batch of
    ``WRITERS`` tasks runs in a different process. One pool serves the module
    because spawning is the slow part.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    with context.Pool(WRITERS, initializer=_wait_for_all, initargs=(barrier,)) as pool:
        yield pool


def test_concurrent_patches_from_four_processes_lose_no_update(
    make_app: Any, database_url: str, processes: Pool
) -> None:
    store = store_of(make_app())
    results = processes.starmap(_patch_many, [(database_url, w, 25) for w in range(WRITERS)])
    assert [status for statuses in results for status in statuses] == [200] * 100
    user = store.get_user(1)
    assert user is not None
    assert user.version == 1 + 100  # every read-modify-write saw the previous one
    assert user.name in {f"Worker {w} 24" for w in (1, 3)}
    assert user.phone in {f"+44 20 7946 {w}024" for w in (0, 2)}


def test_concurrent_creates_from_four_processes_all_land(
    make_app: Any, database_url: str, processes: Pool
) -> None:
    app = make_app()
    results = processes.starmap(_create_many, [(database_url, w, 25) for w in range(WRITERS)])
    ids = [user_id for worker_ids in results for user_id in worker_ids]
    assert sorted(ids) == list(range(len(DEMO_USERS) + 1, len(DEMO_USERS) + 101))
    body = call(app, "GET", "/users?limit=1").get_json()
    assert body["total"] == len(DEMO_USERS) + 100


def test_workers_starting_at_once_on_an_empty_database_seed_it_exactly_once(
    database_url: str, processes: Pool
) -> None:
    """On PostgreSQL this is the concurrent migration: pg_advisory_xact_lock serialises it."""
    processes.starmap(_open_store, [(database_url,) for _ in range(WRITERS)])
    store = open_store(settings_for(database_url).database)
    try:
        assert store.list_users(limit=100, offset=0)[1] == len(DEMO_USERS)
    finally:
        store.close()


# --- the WSGI entry point ---------------------------------------------------------------


def test_gunicorn_finds_wsgi_userservice_without_building_the_homepage(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gunicorn.util import import_app

    # The entry point reads the real environment by design; point it at tmp_path.
    monkeypatch.setenv("USERSERVICE_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.delitem(sys.modules, "wsgi", raising=False)
    app = import_app("wsgi:userservice")
    assert isinstance(app, flask.Flask)
    assert app.import_name == "userservice"
    wsgi = sys.modules["wsgi"]
    assert wsgi.userservice is app
    assert "homepage" not in vars(wsgi)
    with pytest.raises(AttributeError, match="module 'wsgi' has no attribute 'nothing'"):
        _ = wsgi.nothing
