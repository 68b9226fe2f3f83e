"""The PostgreSQL store's connections: none until the first request, then a bounded pool.

Under gunicorn, create_app runs before any request; a pool opened there
would be opened in the master with ``preload_app``, and its sockets shared
by every forked worker. So the store holds no session until a request comes,
and then at most USERSERVICE_DATABASE_POOL_SIZE, whatever the concurrency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import flask
import pytest

from tests import postgres
from tests.stores import store_of

HOMEPAGE = {
    "HTTPS": "on",
    "SSL_CLIENT_VERIFY": "SUCCESS",
    "SSL_CLIENT_S_DN": "CN=homepage.internal,OU=Services,O=Example",
}


def sessions(pg_server: postgres.PgServer, dbname: str) -> int:
    with pg_server.admin() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'userservice'",
            (dbname,),
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_no_session_before_the_first_request_and_at_most_pool_size_after(
    make_app: Callable[..., flask.Flask], database_url: str, pg_server: postgres.PgServer
) -> None:
    dbname = postgres.dbname_of(database_url)
    app = make_app(USERSERVICE_DATABASE_POOL_SIZE="2")
    assert sessions(pg_server, dbname) == 0  # the start-up migration's connection is closed

    def get(n: int) -> int:
        path = f"/users/{1 + n % 4}"
        return app.test_client().get(path, environ_base=HOMEPAGE).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(get, range(40))) == [200] * 40
    assert 1 <= sessions(pg_server, dbname) <= 2
    store_of(app).close()
    deadline = time.monotonic() + 10  # a closed session leaves pg_stat_activity shortly after
    while sessions(pg_server, dbname) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions(pg_server, dbname) == 0
