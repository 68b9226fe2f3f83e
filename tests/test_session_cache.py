"""The listener keeps no TLS 1.2 sessions server-side (mtls.sessioncache); tickets still resume.

Real handshakes between the worker's listener contexts (mtls.tls.ListenerContexts,
built as mtls.hooks builds them) and client contexts, over ssl.MemoryBIO pairs.
The pointer checks are pure and tested on made-up observations.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from mtls import sessioncache
from mtls.serverstate import load_tls_state
from mtls.sessioncache import (
    DEFAULT_CACHE_SIZE,
    SSL_SESS_CACHE_SERVER,
    Observed,
    mismatch,
    wrong_library,
)
from mtls.settings import ServerSettings
from mtls.tls import ListenerContexts
from tests.servers import client_context, server_env
from tests.test_session_tickets import connect

HANDSHAKES = 300


def listener(pki: Path, **extra: str) -> ListenerContexts:
    state = load_tls_state(ServerSettings.from_env(server_env(pki, "userservice", **extra)))
    return ListenerContexts(state.settings, state.context)


def tls12_without_tickets(pki: Path, name: str | None) -> ssl.SSLContext:
    client = client_context(pki, name, maximum=ssl.TLSVersion.TLSv1_2)
    client.options |= ssl.OP_NO_TICKET
    return client


@pytest.mark.parametrize(
    ("client_auth", "name"), [("required", "homepage"), ("optional", None)], ids=["cert", "none"]
)
def test_tls12_clients_without_tickets_leave_no_session_in_the_listener(
    demo_pki: Path, client_auth: str, name: str | None
) -> None:
    # The finding: one cached session (~12 KiB) per such handshake, up to
    # 20,480 per worker; in optional mode without any certificate too.
    contexts = listener(demo_pki, MTLS_CLIENT_AUTH=client_auth)
    client = tls12_without_tickets(demo_pki, name)
    for _ in range(HANDSHAKES):
        conn = connect(contexts.session, client)
        assert (conn.version(), conn.session_reused) == ("TLSv1.2", False)
    assert conn.session is not None
    assert not conn.session.has_ticket
    # Counted on the context the handshake moved to; cached in the listener's.
    assert contexts.current.session_stats()["accept_good"] == HANDSHAKES
    assert contexts.session.session_stats()["number"] == 0
    # Resuming by session ID is gone with the cache: a full handshake.
    assert not connect(contexts.session, client, session=conn.session).session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tickets_still_resume_after_a_swap(demo_pki: Path, version: ssl.TLSVersion) -> None:
    # Stateless tickets need no cache. Across real workers (which share the
    # listener context made before the fork): tests/test_e2e_runtime.py.
    contexts = listener(demo_pki)
    client = client_context(demo_pki, "homepage", maximum=version)
    first = connect(contexts.session, client)
    assert (first.version(), first.session_reused) == (version.name.replace("_", "."), False)
    assert first.session is not None
    assert first.session.has_ticket
    contexts.current = listener(demo_pki).current  # a rotation in place
    again = connect(contexts.session, client, session=first.session)
    assert again.session_reused
    assert contexts.session.session_stats()["number"] == 0


def test_a_fresh_server_context_passes_the_pointer_checks() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    seen = sessioncache._observe(sessioncache._LibSsl(), sessioncache._ssl_ctx_pointer(ctx) or 0)
    assert (seen.cache_size, seen.cache_mode) == (DEFAULT_CACHE_SIZE, SSL_SESS_CACHE_SERVER)
    assert mismatch(seen, ctx.options) is None
    assert sessioncache.disable_session_cache(ctx)
    assert (
        sessioncache._observe(
            sessioncache._LibSsl(), sessioncache._ssl_ctx_pointer(ctx) or 0
        ).cache_mode
        == 0
    )


GOOD = Observed(
    options=0x82520050,
    cache_size=DEFAULT_CACHE_SIZE,
    cache_mode=SSL_SESS_CACHE_SERVER,
)


@pytest.mark.parametrize(
    ("seen", "why"),
    [
        (replace(GOOD, options=0), "SSL_CTX_get_options gave 0x0"),
        (replace(GOOD, cache_size=1024), "session cache size/mode read 1024/2"),
        (replace(GOOD, cache_mode=0), "session cache size/mode read 20480/0"),
    ],
)
def test_a_pointer_that_does_not_check_out_is_named(seen: Observed, why: str) -> None:
    assert mismatch(GOOD, 0x82520050) is None
    assert (mismatch(seen, 0x82520050) or "").startswith(why)


def test_the_pointer_is_read_only_under_cpython_and_ssls_own_libssl() -> None:
    assert wrong_library("cpython", ssl.OPENSSL_VERSION_NUMBER) is None
    assert wrong_library("pypy", ssl.OPENSSL_VERSION_NUMBER) == (
        "pypy is not CPython: the SSLContext layout is unknown"
    )
    assert (wrong_library("cpython", 1) or "").startswith("libssl found is 0x1, ssl uses 0x")


def test_a_failed_check_warns_once_and_leaves_the_context_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sessioncache, "_warned", False)
    monkeypatch.setattr(sessioncache, "_observe", lambda lib, ptr: replace(GOOD, options=0))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with caplog.at_level(logging.WARNING, logger="mtls.tls"):
        assert not sessioncache.disable_session_cache(ctx)
        assert not sessioncache.disable_session_cache(ctx)
    assert [r.getMessage() for r in caplog.records] == [
        f"{sessioncache.RISK} (could not turn it off: SSL_CTX_get_options gave 0x0, "
        f"ctx.options is {ctx.options:#x})"
    ]
    monkeypatch.undo()
    seen = sessioncache._observe(sessioncache._LibSsl(), sessioncache._ssl_ctx_pointer(ctx) or 0)
    assert (seen.cache_size, seen.cache_mode) == (DEFAULT_CACHE_SIZE, SSL_SESS_CACHE_SERVER)
