"""Log lines cannot be split or reordered through a DN, a path or an exception (mtls.logs).

The end-to-end test runs the real User Service under gunicorn with the
project's config and a client certificate from the trusted CA whose CN holds
U+2028, U+0085 and the C1 control 0x9B: the log file, read as bytes, holds
none of them raw, while /whoami still shows the DN exactly as mod_ssl prints it.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import sys
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from mtls.identity import format_dn
from mtls.logs import LogSafeFormatter, log_safe
from pki import authority, store
from tests.servers import Server, client_context, running, server_env

EVIL_CN = "mallory\u2028[2026-12-02 00:00:00 +0000] [1] [INFO] forged\u0085x\x9b31m"
RAW_SEPARATORS = (b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\xc2\x85", b"\xc2\x9b", b"\xe2\x80\xae")


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("CN=a\u2028b", "CN=a\\u2028b"),
        ("CN=a\u2029b", "CN=a\\u2029b"),
        ("CN=a\x85b\x9bc\x80", "CN=a\\x85b\\x9bc\\x80"),
        ("CN=a\nb\rc\td\x00\x7f", "CN=a\\x0ab\\x0dc\\x09d\\x00\\x7f"),
        ("CN=\u202egnp.exe", "CN=\\u202egnp.exe"),  # bidi override
        ("CN=\u2066x\u2069\u200f\u061c", "CN=\\u2066x\\u2069\\u200f\\u061c"),
        ("CN=a\ud800b", "CN=a\\ud800b"),  # a lone surrogate would break the handler's encode
        ("CN=Zoë,O=Ex\\, Inc", "CN=Zoë,O=Ex\\, Inc"),  # printable text, backslashes: unchanged
    ],
)  # fmt: skip
def test_log_safe_escapes_what_is_not_printable_and_nothing_else(text: str, logged: str) -> None:
    assert log_safe(text) == logged


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_log_safe_output_is_one_printable_line(text: str) -> None:
    safe = log_safe(text)
    assert safe.isprintable()
    assert len(safe.splitlines()) <= 1
    assert log_safe(safe) == safe
    if text.isprintable():
        assert safe == text


def test_formatter_escapes_the_message_and_keeps_a_traceback_readable() -> None:
    formatter = LogSafeFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    try:
        raise ValueError("bad CN=x\u2028y")
    except ValueError:
        record = logging.LogRecord(
            "mtls", logging.WARNING, __file__, 1, "denied %s: %r", ("/p\u2028q", "a"), None
        )
        record.exc_info = sys.exc_info()
    text = formatter.format(record)

    head, *traceback = text.split("\n")
    assert head == "[WARNING] denied /p\\u2028q: 'a'"
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: bad CN=x\\u2028y"
    assert text.isascii()
    assert record.getMessage() == "denied /p\u2028q: 'a'"  # the record itself is untouched


@pytest.fixture
def evil_client(demo_pki: Path, tmp_path: Path) -> tuple[ssl.SSLContext, x509.Certificate]:
    """A client certificate from the demo's trusted CA, CN full of line breakers."""
    issuer = store.load_issued(demo_pki / "global.crt", demo_pki / "global.key", fix="-")
    leaf = authority.build_leaf(
        issuer,
        name=authority.make_name(EVIL_CN, ou="Services"),
        profile="client",
        uris=("spiffe://example.org/mallory",),
    )
    (tmp_path / "evil-chain.crt").write_bytes(store.encode_certs(leaf.chain_file_certs))
    (tmp_path / "evil.key").write_bytes(store.encode_key(leaf.key))
    ctx = ssl.create_default_context(cafile=str(demo_pki / "root.crt"))
    ctx.load_cert_chain(tmp_path / "evil-chain.crt", tmp_path / "evil.key")
    return ctx, leaf.cert


def request(server: Server, ctx: ssl.SSLContext, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_dn_full_of_line_breakers_reaches_the_logs_escaped_and_the_app_raw(
    demo_pki: Path, tmp_path: Path, evil_client: tuple[ssl.SSLContext, x509.Certificate]
) -> None:
    ctx, cert = evil_client
    env = server_env(
        demo_pki, "userservice", USERSERVICE_DATABASE_URL=f"sqlite:///{tmp_path / 'u.db'}"
    )
    ready = client_context(demo_pki, "homepage")
    with running("wsgi:userservice", env, tmp_path / "user.log", ready) as server:
        status, body = request(server, ctx, "/whoami")
        denied, _ = request(server, ctx, "/users/%E2%80%A8%C2%85x")  # a path that decodes raw
        server.wait_for_log('"GET /users/%E2%80%A8%C2%85x HTTP/1.1" 403')
        server.wait_for_log("does not match USERSERVICE_ALLOWED_DN")

    assert (status, denied) == (200, 403)
    dn = format_dn(cert.subject)
    assert json.loads(body)["subject_dn"] == dn  # the app sees mod_ssl's string, raw
    assert "\u2028" in dn
    raw_log = server.log_path.read_bytes()
    for separator in RAW_SEPARATORS:
        assert separator not in raw_log
    text = raw_log.decode("utf-8")
    assert text.splitlines() == text.split("\n")[:-1]  # no line ends but "\n"
    whoami = [line for line in text.splitlines() if '"GET /whoami HTTP/1.1"' in line]
    assert len(whoami) == 1
    assert f'dn="{log_safe(dn)}"' in whoami[0]
    assert "mallory\\u2028[2026-12-02" in whoami[0]
    denial = [line for line in text.splitlines() if "does not match USERSERVICE_ALLOWED_DN" in line]
    assert len(denial) == 1
    assert "denied GET /users/\\u2028\\x85x (blueprint 'users'" in denial[0]
    assert not any(line.startswith("[2026-12-02 00:00:00 +0000]") for line in text.splitlines())
